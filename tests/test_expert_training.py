"""`python -m training expert` on a tiny generated synth folder with the tiny CLIP config."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from assistant.config import load_config
from assistant.evaluation.expert.metrics import best_balanced_threshold
from assistant.expert import AnomalyExpert, TextHead
from assistant.vision import build_vision_tower
from training.__main__ import main as train_main
from training.expert import focal_dice_loss


def make_synth(root, n=12, categories=("widget",)):
    """n samples, alternately normal and defective; with a second category its parts are bright stripes."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "references").mkdir()

    def part(cat: str) -> np.ndarray:
        if cat == categories[0]:
            return rng.integers(90, 130, (32, 32, 3)).astype(np.uint8)
        stripes = np.where((np.arange(32) // 4) % 2 == 0, 230, 20)[None, :, None]
        return np.clip(np.broadcast_to(stripes, (32, 32, 3)) + rng.integers(-8, 8, (32, 32, 3)), 0, 255).astype(
            np.uint8
        )

    refs = {}
    for cat in categories:
        refs[cat] = []
        for j in range(2):
            Image.fromarray(part(cat)).save(root / f"references/{cat}-{j}.png")
            refs[cat].append(f"references/{cat}-{j}.png")
    lines = []
    for i in range(n):
        cat = categories[(i // 2) % len(categories)]
        img = part(cat)
        rec = {"id": f"{i:03d}", "image": f"images/{i:03d}.png", "mask": None, "label": i % 2, "category": cat,
               "references": refs[cat]}
        if i % 2:
            m = np.zeros((32, 32), np.uint8)
            m[8:20, 10:22] = 255
            img[m > 0] = 250
            Image.fromarray(m).save(root / f"masks/{i:03d}.png")
            rec["mask"] = f"masks/{i:03d}.png"
        Image.fromarray(img).save(root / rec["image"])
        lines.append(json.dumps(rec))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def test_focal_dice_loss_prefers_the_right_map():
    target = torch.zeros(2, 16)
    target[0, :4] = 1.0
    good = torch.full((2, 16), -4.0)
    good[0, :4] = 4.0
    assert focal_dice_loss(good, target) < focal_dice_loss(-good, target)


def test_best_threshold_separates():
    thr, ba = best_balanced_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert thr == pytest.approx(0.5) and ba == 1.0
    # ties: the lowest threshold of the best balanced accuracy; `score > thr` reproduces it
    thr, ba = best_balanced_threshold(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert thr == pytest.approx(0.15) and ba == pytest.approx(0.75)


def test_train_expert_cli_saves_loadable_heads(tmp_path):
    make_synth(tmp_path / "synth")
    out = tmp_path / "ckpt"
    rc = train_main(
        [
            "expert",
            "--config",
            "tiny",
            "--data",
            str(tmp_path / "synth"),
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache.safetensors"),
            "--set",
            "train.steps=3",
            "--set",
            "train.batch_size=4",
        ]
    )
    assert rc == 0
    meta = json.loads((out / "expert_config.json").read_text())
    assert meta["head"] == "TextHead" and meta["meta"]["steps"] == 3 and meta["meta"]["n_samples"] == 12
    assert set(meta["calibration_margin"]) == {"k1", "k2"}
    assert len(meta["self_scales"]) == len(meta["level_dims"]) and min(meta["self_scales"]) > 0
    cfg = load_config("tiny")
    tower = build_vision_tower(cfg.vision)
    expert = AnomalyExpert.from_pretrained(out, cfg.expert, tower)
    assert isinstance(expert.head, TextHead) and expert.trained
    assert expert.calibration_margin == pytest.approx(meta["calibration_margin"])
    res = expert.predict(tower.encode([Image.new("RGB", (32, 32), (100, 110, 120))]), expert.fit_references(tower, []),
                         (32, 32))[0]
    assert res.threshold == pytest.approx(meta["zero_shot_threshold"])
    assert meta["reference_mismatch"] is None and expert.reference_mismatch is None  # one category: nothing to fit


def test_fit_margins_makes_up_more_references_from_later_normal_samples(tmp_path, monkeypatch):
    """The build has 2 references per category; margins for 4 references take normal samples from beyond the
    scored ones (the first max_per_cat), and none is fitted where there are not enough."""
    import assistant.imaging as imaging
    from training.expert import encode_cached, fit_margins, read_manifest

    make_synth(tmp_path / "synth", n=16)
    cfg = load_config("tiny")
    tower = build_vision_tower(cfg.vision)
    recs = read_manifest(tmp_path / "synth")
    tokens, glob, grid = encode_cached(tower, recs, tmp_path / "cache.safetensors")
    expert = AnomalyExpert(cfg.expert, tower.level_dims, tower.global_dim,
                           text_encoder=getattr(tower, "encode_text", None))
    loaded, orig = [], imaging.load_image
    monkeypatch.setattr(imaging, "load_image", lambda x, *a, **k: loaded.append(str(x)) or orig(x, *a, **k))
    margins = fit_margins(expert, tower, recs, tokens, glob, grid, max_per_cat=8, log=lambda *_: None,
                          shots=(1, 2, 4, 8))
    assert set(margins) == {"k1", "k2", "k4"}  # 2 references + 4 later normals: enough for 4, not for 8
    spares = [x for x in loaded if "/images/" in x]
    assert spares == [recs[8]["image"], recs[10]["image"]]  # normal, and never among the 8 scored samples
    assert set(fit_margins(expert, tower, recs, tokens, glob, grid, max_per_cat=16, log=lambda *_: None,
                           shots=(1, 2, 4))) == {"k1", "k2"}  # every sample scored: no spares


def test_calibrate_only_adds_margins_and_keeps_the_weights(tmp_path):
    """--calibrate-only CKPT: no head training; the new margin joins the trained ones, the weights are the
    checkpoint's, and the refit is recorded."""
    from safetensors.torch import load_file

    make_synth(tmp_path / "synth", n=48)  # 40 scored per category + 4 later normals: 2 + 4 references for k4
    common = ["--config", "tiny", "--data", str(tmp_path / "synth"), "--cache", str(tmp_path / "cache.safetensors")]
    out, refit = tmp_path / "ckpt", tmp_path / "refit"
    assert train_main(["expert", *common, "--out", str(out), "--margin-shots", "1,2", "--set", "train.steps=2",
                       "--set", "train.batch_size=4"]) == 0
    trained = json.loads((out / "expert_config.json").read_text())
    assert set(trained["calibration_margin"]) == {"k1", "k2"}
    assert train_main(["expert", *common, "--calibrate-only", str(out), "--margin-shots", "4",
                       "--out", str(refit)]) == 0
    meta = json.loads((refit / "expert_config.json").read_text())
    assert set(meta["calibration_margin"]) == {"k1", "k2", "k4"}
    assert {k: meta["calibration_margin"][k] for k in ("k1", "k2")} == trained["calibration_margin"]
    a, b = load_file(out / "expert.safetensors"), load_file(refit / "expert.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    (rec,) = meta["meta"]["calibration_refits"]
    assert rec["shots"] == [4] and set(rec["calibration_margin"]) == {"k4"} and rec["data"][0]["folder"] == "synth"
    assert meta["meta"]["steps"] == 2  # the training record is kept
    assert set(meta["null_model"]["offsets"]) <= {"k1", "k2", "k4", "k8"} and "k1" in meta["null_model"]["offsets"]
    assert rec["null_model_spread"] == meta["null_model"]["spread"]  # fitted on the synthetic normals, recorded
    with pytest.raises(ValueError, match="--margin-shots: expected reference counts"):
        train_main(["expert", *common, "--calibrate-only", str(out), "--margin-shots", "4,x"])
    from assistant.expert import ExpertCheckpointError

    with pytest.raises(ExpertCheckpointError, match="expected expert.safetensors"):
        train_main(["expert", *common, "--calibrate-only", str(tmp_path / "none"), "--out", str(refit)])


def test_train_expert_fits_the_reference_mismatch_cut_across_categories(tmp_path):
    """With two synthetic categories training fits the cut (1% of same-kind parts above it), reports how many
    parts of the other kind lie above it, and the loaded expert uses it."""
    make_synth(tmp_path / "synth", n=16, categories=("widget", "gizmo"))
    out = tmp_path / "ckpt"
    assert train_main(["expert", "--config", "tiny", "--data", str(tmp_path / "synth"), "--out", str(out),
                       "--cache", str(tmp_path / "cache.safetensors"), "--set", "train.steps=2",
                       "--set", "train.batch_size=4"]) == 0
    meta = json.loads((out / "expert_config.json").read_text())
    fit = meta["meta"]["reference_mismatch_fit"]
    assert meta["reference_mismatch"] > 0 and fit["categories"] == 2
    assert fit["same_kind_flagged"] <= 0.125 and fit["other_kind_flagged"] > fit["same_kind_flagged"]
    cfg = load_config("tiny")
    expert = AnomalyExpert.from_pretrained(out, cfg.expert, build_vision_tower(cfg.vision))
    assert expert.reference_mismatch == pytest.approx(meta["reference_mismatch"])


def test_train_expert_without_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.jsonl"):
        train_main(["expert", "--config", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
