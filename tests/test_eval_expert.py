"""Expert evaluation CLI on a generated MVTec-layout folder with the tiny config; datasets and seeds."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from assistant.cli import main
from assistant.evaluation.data import DatasetError, discover, load_mvtec_category, sample_references
from assistant.evaluation.expert.metrics import METRIC_KEYS


def _img(rng, defect=False):
    a = rng.integers(90, 130, (40, 40, 3)).astype(np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    if defect:
        mask[10:20, 12:22] = 255
        a[mask > 0] = 250
    return Image.fromarray(a), Image.fromarray(mask)


def make_category(root, name="widget", n_train=4, masks=True):
    rng = np.random.default_rng(0)
    cat = root / name
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (cat / sub).mkdir(parents=True)
    for i in range(n_train):
        _img(rng)[0].save(cat / f"train/good/{i:03d}.png")
    for i in range(3):
        _img(rng)[0].save(cat / f"test/good/{i:03d}.png")
        im, m = _img(rng, True)
        im.save(cat / f"test/scratch/{i:03d}.png")
        if masks:
            m.save(cat / f"ground_truth/scratch/{i:03d}_mask.png")
    return cat


def test_discover_category_and_root(tmp_path):
    make_category(tmp_path, "a")
    make_category(tmp_path, "b", masks=False)
    cats = discover([tmp_path])
    assert [c.name for c in cats] == ["a", "b"]
    a, b = cats
    assert a.has_masks and not b.has_masks
    assert (a.n_normal, a.n_anomalous) == (3, 3) and len(a.train_good) == 4
    assert all(it.mask for it in a.items if it.label == 1) and all(it.mask is None for it in a.items if it.label == 0)
    assert discover([tmp_path / "a"])[0].name == "a"


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="expected a folder"):
        discover([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither a category"):
        discover([tmp_path / "empty"])
    cat = load_mvtec_category(make_category(tmp_path, "c", n_train=1))
    with pytest.raises(DatasetError, match="2-shot needs 2 reference normals in train/good, found 1"):
        sample_references(cat.train_good, 2, 0)


def test_reference_sampling_follows_the_documented_rule():
    files = [f"f{i}.png" for i in (5, 3, 9, 1, 7)]
    for seed in (0, 1, 2):
        assert sample_references(files, 2, seed) == random.Random(seed).sample(sorted(files), 2)
    assert sample_references(files, 0, 0) == []


def test_evaluate_cli_writes_the_report_schema(tmp_path, capsys):
    make_category(tmp_path / "data", "widget")
    out = tmp_path / "out"
    rc = main(["evaluate", "--data", str(tmp_path / "data"), "--config", "tiny", "--shots", "1", "--seeds", "0,1",
               "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep) == {"shots", "seeds", "config", "categories", "mean"}
    assert rep["shots"] == 1 and rep["seeds"] == [0, 1]
    cat = rep["categories"]["widget"]
    assert cat["n_normal"] == 3 and cat["n_anomalous"] == 3
    assert set(METRIC_KEYS) <= set(cat) and set(cat["std"]) == set(METRIC_KEYS)
    for k in METRIC_KEYS:
        assert 0.0 <= cat[k] <= 1.0 and 0.0 <= rep["mean"][k] <= 1.0
    assert cat["balanced_accuracy"] == pytest.approx(1 - (cat["overkill"] + cat["miss"]) / 2)
    assert "| widget | 3 | 3 |" in (out / "report.md").read_text()
    assert (out / "roc.png").stat().st_size > 1000
    assert "I-AUROC" in capsys.readouterr().out


def test_evaluate_mutual_zero_shot_needs_no_references(tmp_path, capsys):
    """--shots 0 --mutual: each test image is scored against the others; a category without train/good runs."""
    cat_dir = make_category(tmp_path / "data", "widget", n_train=0)
    rng = np.random.default_rng(1)
    for i, (y, x) in enumerate([(4, 4), (24, 8), (8, 26)]):  # defects at different places, as on real parts
        a = rng.integers(90, 130, (40, 40, 3)).astype(np.uint8)
        m = np.zeros((40, 40), np.uint8)
        m[y:y + 10, x:x + 10] = 255
        a[m > 0] = 250
        Image.fromarray(a).save(cat_dir / f"test/scratch/{i:03d}.png")
        Image.fromarray(m).save(cat_dir / f"ground_truth/scratch/{i:03d}_mask.png")
    out = tmp_path / "out"
    rc = main(["evaluate", "--data", str(tmp_path / "data"), "--config", "tiny", "--shots", "0", "--mutual",
               "--seeds", "0,1", "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["zero_shot_mode"] == "mutual" and rep["shots"] == 0
    cat = rep["categories"]["widget"]
    assert cat["image_auroc"] == 1.0 and cat["pixel_auroc"] > 0.9  # the bright squares are the odd ones out
    assert cat["std"]["image_auroc"] == 0.0  # no references are drawn: every seed gives the same result
    md = (out / "report.md").read_text()
    assert "0-shot (mutual scoring" in md and "two clusters of log scores" in md
    assert (out / "qualitative.png").is_file()
    capsys.readouterr()
    for argv, msg in ((["--shots", "1", "--mutual"], "--mutual is a zero-shot mode: expected --shots 0, got --shots 1"),
                      (["--shots", "0", "--baseline", "knn"], "--baseline knn is a nearest-neighbour detector")):
        rc = main(
            ["evaluate", "--data", str(tmp_path / "data"), "--config", "tiny", *argv, "--out", str(tmp_path / "o2")]
        )
        assert rc == 2 and msg in capsys.readouterr().err  # a clear message, no traceback
    assert not (tmp_path / "o2").exists()  # refused before any work


def test_detect_cli_writes_overlay_mask_and_result(tmp_path, capsys):
    cat = make_category(tmp_path, "widget")
    rc = main(["detect", "--image", str(cat / "test/scratch/000.png"), "--reference", str(cat / "train/good/000.png"),
               "--config", "tiny", "--out", str(tmp_path / "det")])
    assert rc == 0
    res = json.loads((tmp_path / "det/result.json").read_text())
    assert {"pred_score", "pred_label", "threshold", "boxes", "verdict"} <= set(res)
    assert Image.open(tmp_path / "det/overlay.png").size == (40, 40)
    assert Image.open(tmp_path / "det/mask.png").size == (40, 40)
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "threshold:" in printed and "time:" in printed


def _part(rng, defect_at=None, size=(40, 48)):
    a = rng.integers(90, 130, (*size, 3)).astype(np.uint8)
    if defect_at:
        y, x = defect_at
        a[y:y + 10, x:x + 10] = 250
    return Image.fromarray(a)


def test_detect_batch_without_references_scores_the_parts_against_each_other(tmp_path, capsys):
    """A folder of unlabeled parts: mutual scoring flags the two with a defect, writes one folder per image
    (maps at each image's own size) and summary.csv; an unreadable file is skipped with a note."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "lot"
    folder.mkdir()
    for i in range(6):
        _part(rng).save(folder / f"ok{i}.png")
    _part(rng, (4, 4)).save(folder / "bad0.png")
    _part(rng, (24, 30), size=(40, 56)).save(folder / "bad1.png")
    (folder / "notes.png").write_text("not a picture")
    rc = main(["detect", "--image", str(folder), "--config", "tiny", "--out", str(tmp_path / "det")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and "notes.png" in printed
    assert "mutual scoring over 8 images, no references" in printed
    import csv

    rows = {r["folder"]: r for r in csv.DictReader(open(tmp_path / "det/summary.csv"))}
    assert set(rows) == {f"ok{i}" for i in range(6)} | {"bad0", "bad1"}
    assert rows["bad0"]["verdict"] == rows["bad1"]["verdict"] == "anomalous"
    assert max(float(rows[f"ok{i}"]["score"]) for i in range(6)) < min(
        float(rows[b]["score"]) for b in ("bad0", "bad1")
    )
    assert Image.open(tmp_path / "det/bad1/overlay.png").size == (56, 40)
    assert json.loads((tmp_path / "det/bad1/result.json").read_text())["verdict"] == "anomalous"
    # with a reference the same batch is judged image by image against it
    rc = main(["detect", "--image", str(folder / "ok0.png"), str(folder / "bad0.png"), "--reference",
               str(folder / "ok1.png"), "--config", "tiny", "--out", str(tmp_path / "det2")])
    assert rc == 0 and "calibrated, 1 reference(s)" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "det2").iterdir()} == {"ok0", "bad0", "summary.csv"}


def test_evaluate_skips_a_category_without_references(tmp_path, capsys):
    make_category(tmp_path / "data", "widget")
    cat = make_category(tmp_path / "data", "noref", n_train=0)
    assert not list((cat / "train/good").iterdir())
    out = tmp_path / "out"
    rc = main(["evaluate", "--data", str(tmp_path / "data"), "--config", "tiny", "--shots", "1", "--seeds", "0",
               "--no-pixel", "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert list(rep["categories"]) == ["widget"]
    captured = capsys.readouterr()
    assert "skipping noref: 1-shot needs 1 images in train/good, found 0" in captured.out + captured.err


def test_vqa_mode_resumes_to_the_same_answers_and_refuses_other_settings(tmp_path, tiny_lm_dir, capsys):
    """`evaluate --mode vqa` (tiny assistant): answers.jsonl + report; a run stopped half-way (torn last line
    included) resumes to the same answers; an OUT of a run with other settings is refused; a category without
    references is skipped with a note, as in the expert evaluation, and the others still run."""
    make_category(tmp_path / "data", "widget")
    make_category(tmp_path / "data", "noref", n_train=0)
    base = ["evaluate", "--mode", "vqa", "--data", str(tmp_path / "data"), "--config", "tiny", "--seeds", "0",
            "--set", f"lm.name={tiny_lm_dir}", "--set", "lvlm.checkpoint=null", "--set", "expert.checkpoint=null"]
    full, part = tmp_path / "full", tmp_path / "part"
    torch.manual_seed(0)  # the tiny config's random weights: the same in both runs
    assert main(base + ["--shots", "1", "--out", str(full)]) == 0
    lines = (full / "answers.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 2 * 6 and len({r["key"] for r in recs}) == 12
    assert {r["question"] for r in recs} == {"Is there any anomaly in the image?", "Where is it?"}
    printed = capsys.readouterr()
    assert "skipping noref: 1-shot needs 1 images in train/good, found 0" in printed.out + printed.err
    assert list(json.loads((full / "report.json").read_text())["categories"]) == ["widget"]
    rep = json.loads((full / "report.json").read_text())["categories"]["widget"]
    assert 0.0 <= rep["answer_balanced_accuracy"] <= 1.0 and 0.0 <= rep["consistency"] <= 1.0
    # stopped after 2.5 images: 5 whole lines and half of the 6th
    part.mkdir()
    (part / "answers.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])
    (part / "run.json").write_text((full / "run.json").read_text())
    torch.manual_seed(0)
    assert main(base + ["--shots", "1", "--out", str(part)]) == 0
    assert "resuming: 2 image(s) already answered" in capsys.readouterr().out
    got = {json.loads(x)["key"]: json.loads(x) for x in (part / "answers.jsonl").read_text().splitlines()}
    want = {r["key"]: r for r in recs}
    assert set(got) == set(want)
    for k in want:
        diff = {f: (got[k].get(f), want[k].get(f)) for f in want[k] if got[k].get(f) != want[k].get(f)}
        assert not diff, (k, diff)
    assert json.loads((part / "report.json").read_text())["categories"]["widget"] == rep
    with pytest.raises(ValueError, match="different run \\(shots: 1 vs 2\\)"):
        main(base + ["--shots", "2", "--out", str(part)])


def test_single_image_zero_shot_evaluation_records_a_threshold_per_image(tmp_path):
    """--shots 0 without --mutual on a tower without text: each test image is judged alone (in-image rarity,
    its own threshold from anomalies synthesized on it); the report names that mode and its rule."""
    from assistant.config import load_config
    from assistant.evaluation.expert.report import build_report, markdown
    from assistant.evaluation.expert.runner import evaluate_category
    from assistant.expert import AnomalyExpert, level_scale
    from assistant.vision.efficientnet import EfficientNetTower

    cfg = load_config("offline-small", ["vision.image_size=64", "vision.device=cpu", "expert.calibration_synth=2",
                                        "expert.smoothing_sigma=1.0"])
    tower = EfficientNetTower(cfg.vision, pretrained=False).eval()
    expert = AnomalyExpert(cfg.expert, tower.level_dims, tower.global_dim)
    expert.level_scale = level_scale(tower)
    expert.self_scales = [1.0, 1.0, 1.0]
    cat = discover([make_category(tmp_path / "data", "widget", n_train=0)])[0]
    res = evaluate_category(expert, tower, cat, 0, [0, 1])
    run = res.runs[0]
    assert [r.seed for r in res.runs] == [0, 1] and res.runs[1].scores is run.scores  # nothing drawn: scored once
    assert len(run.thresholds) == len(cat.items) and all(np.isfinite(run.thresholds))
    assert "synthesized on this image" in run.calibration[0]["rule"]
    assert run.calibration[0]["threshold_range"][0] <= run.calibration[0]["threshold_median"]
    assert run.metrics["image_auroc"] == 1.0  # the bright squares are the rarest patches of their images
    rep = build_report([res], 0, [0], cfg.to_dict(), zero_shot_mode="self")
    assert rep["zero_shot_mode"] == "self"
    assert "each image alone: in-image rarity" in markdown(rep) and "synthesized on it" in markdown(rep)


def test_a_folder_over_the_feature_budget_is_encoded_per_seed_with_the_same_figures(tmp_path, capsys):
    """When the test features would exceed the budget they are not kept across seeds but encoded again per batch:
    the same scores and metrics (up to float rounding), in bounded memory."""
    from assistant.config import load_config
    from assistant.evaluation.expert.runner import TestFeatures, evaluate_category
    from assistant.expert import AnomalyExpert, level_scale
    from assistant.vision.efficientnet import EfficientNetTower

    cfg = load_config("offline-small", ["vision.image_size=64", "vision.device=cpu", "expert.calibration_synth=2",
                                        "expert.smoothing_sigma=1.0"])
    tower = EfficientNetTower(cfg.vision, pretrained=False).eval()
    expert = AnomalyExpert(cfg.expert, tower.level_dims, tower.global_dim)
    expert.level_scale = level_scale(tower)
    cat = discover([make_category(tmp_path / "data", "widget")])[0]
    assert TestFeatures(tower, cat.items, 4, budget_mb=64).kept
    assert not TestFeatures(tower, cat.items, 4, budget_mb=0.01).kept
    kept = evaluate_category(expert, tower, cat, 1, [0, 1], batch_size=4)
    lazy = evaluate_category(expert, tower, cat, 1, [0, 1], batch_size=4, feature_budget_mb=0.01)
    printed = capsys.readouterr()
    assert "exceed 0.01 MB: encoding them again for every seed" in printed.out + printed.err
    for a, b in zip(kept.runs, lazy.runs):
        assert np.allclose(a.scores, b.scores, rtol=1e-4) and list(a.preds) == list(b.preds)
        assert a.metrics == pytest.approx(b.metrics, abs=1e-4)


def test_a_seed_run_records_the_free_path_scores_and_the_aligned_share(tmp_path):
    """An aligned result carries the free path's score of the same image: the run keeps it (the score itself where
    the free path judged the image), with the share of aligned images and the free path's AUROC."""
    from types import SimpleNamespace

    from assistant.evaluation.expert.report import build_report, markdown
    from assistant.evaluation.expert.runner import CategoryResult, seed_result

    cat = discover([make_category(tmp_path / "data", "widget")])[0]  # 3 normal, then 3 anomalous images
    scores, free = [0.1, 0.2, 0.6, 0.7, 0.8, 0.9], [0.1, 0.95, 0.6, 0.7, 0.3, 0.9]
    aligned = [False, True, False, False, True, False]
    results = [SimpleNamespace(pred_score=s, pred_label=s > 0.5, verdict="anomalous" if s > 0.5 else "normal",
                               alignment="aligned" if a else "free", free_score=f if a else None, threshold=0.5,
                               free_threshold=0.5 if a else None)
               for s, f, a in zip(scores, free, aligned)]
    run = seed_result(0, [], cat, results, None, [0.5], [], 0.0)
    assert list(run.free_scores) == free and run.aligned_share == pytest.approx(2 / 6)
    assert run.metrics["aligned_share"] == pytest.approx(2 / 6)
    assert run.metrics["image_auroc"] == 1.0 and run.metrics["image_auroc_free"] == pytest.approx(5 / 9)
    # the two paths on different scales: ranked by each score over its own threshold (the decision statistic)
    results[1].threshold = results[4].threshold = 0.1  # the aligned images: 2.0 (a good part) and 8.0 (defective)
    ranked = seed_result(0, [], cat, results, None, [0.5], [], 0.0)
    assert list(ranked.scores) == scores and ranked.metrics["image_auroc"] == pytest.approx(7 / 9)
    res = CategoryResult(cat.name, cat.n_normal, cat.n_anomalous, [run])
    md = markdown(build_report([res], 1, [0], {}))
    assert "I-AUROC free" in md and "| Aligned |" in md
    run.metrics["aligned_share"] = 0.0  # every image took the free path: the same AUROC is not shown twice
    assert "I-AUROC free" not in markdown(build_report([res], 1, [0], {}))


def test_evaluate_a_folder_without_ground_truth(tmp_path, capsys):
    """Image-level labels only (no ground_truth/ folder): the image metrics are reported, no pixel metric."""
    import shutil

    cat = make_category(tmp_path / "data", "widget", masks=False)
    shutil.rmtree(cat / "ground_truth")
    out = tmp_path / "out"
    rc = main(["evaluate", "--data", str(cat), "--config", "tiny", "--shots", "1", "--seeds", "0",
               "--out", str(out)])
    assert rc == 0
    c = json.loads((out / "report.json").read_text())["categories"]["widget"]
    assert "image_auroc" in c and "review_rate" in c and not any(k.startswith("pixel_") for k in c)
    assert "P-AUROC" not in (out / "report.md").read_text()
    capsys.readouterr()


def test_calibration_bench_prints_one_table_and_writes_its_rows(tmp_path, capsys):
    """bench/calibration.py on a folder without masks: a header naming config, shots, seeds and lot, one table,
    and the same rows as JSON (a missing figure as null)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "calibration.py"
    spec = importlib.util.spec_from_file_location("calibration_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cat = make_category(tmp_path / "data", "widget", masks=False)
    rows = tmp_path / "rows.json"
    assert bench.main(["--data", str(cat), "--config", "tiny", "--shots", "1", "--seeds", "0,1",
                       "--out", str(rows)]) == 0
    printed = capsys.readouterr().out
    assert "config tiny" in printed and "shots 1; seeds 0,1; lot no" in printed
    assert printed.count("| k | category |") == 1
    for header in ("AUROC free", "aligned share", "overkill outside review", "miss outside review"):
        assert header in printed
    got = json.loads(rows.read_text())
    assert got["settings"]["seeds"] == [0, 1] and got["settings"]["lot"] is False
    assert [r["category"] for r in got["rows"]] == ["widget", "**mean**"]
    assert set(got["rows"][0]) == {"k", "category"} | {key for key, _ in bench.COLUMNS}
