"""Anomaly expert on tiny random towers: shapes, calibration, kNN maths, checkpoints, zero-shot heads."""
import numpy as np
import pytest
import torch
from PIL import Image

from assistant.config import load_config
from assistant.expert import (
    AnomalyExpert,
    AnomalyResult,
    ExpertCheckpointError,
    PrototypeHead,
    ReferenceState,
    TextHead,
    dihedral_views,
    greedy_coreset,
    nn_distance,
    synthesize_anomaly,
)
from assistant.expert.references import coreset
from assistant.vision.efficientnet import EfficientNetTower


def texture(seed: int, size: int = 64, blob: bool = False) -> Image.Image:
    """Stripes + noise (a 'normal part'); blob=True paints a bright square defect in the centre."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = 110 + 40 * np.sin(x / 2.0) + rng.normal(0, 6, (size, size))
    if blob:
        base[size // 2 - 8:size // 2 + 8, size // 2 - 8:size // 2 + 8] = 250
    return Image.fromarray(np.clip(np.stack([base] * 3, -1), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def tower():
    cfg = load_config("offline-small", ["vision.image_size=64", "vision.device=cpu"])
    return EfficientNetTower(cfg.vision, pretrained=False).eval()


@pytest.fixture()
def expert_cfg():
    cfg = load_config("offline-small", ["expert.smoothing_sigma=1.0", "expert.calibration_synth=2"]).expert
    cfg.checkpoint = None
    return cfg


def test_nn_distance_matches_brute_force():
    q, b = torch.randn(37, 5), torch.randn(50, 5)
    full = torch.cdist(q, b)
    assert torch.allclose(nn_distance(q, b, k=1, budget=400), full.min(1).values, atol=1e-4)
    assert torch.allclose(nn_distance(q, b, k=3), full.topk(3, largest=False).values.mean(1), atol=1e-4)


def test_greedy_coreset_is_unique_and_keeps_outliers():
    x = torch.cat([torch.randn(200, 4) * 0.01, torch.tensor([[10.0, 0, 0, 0], [0, -10.0, 0, 0]])])
    idx = greedy_coreset(x, 5)
    assert len(set(idx.tolist())) == 5
    assert {200, 201} <= set(idx.tolist())  # the far points are picked by k-center
    assert len(greedy_coreset(x, 1000)) == len(x)


def test_bank_is_capped_at_bank_images_worth_of_patches(expert_cfg):
    cfg = expert_cfg
    cfg.bank_images, cfg.max_bank = 4, 10_000
    bank = torch.randn(50 * 16, 8)  # 50 images' worth of 16 patches
    assert coreset(cfg, bank, 16, 0).shape == (64, 8)  # 4 images x 16 patches: query cost independent of k
    assert coreset(cfg, bank[:64], 16, 0).shape == (64, 8)  # within the cap: kept whole


def test_dihedral_views_are_the_eight_symmetries():
    img = texture(0, 16)
    views = dihedral_views(img)
    assert len(views) == 8
    arrs = {
        np.asarray(v).tobytes() for v in dihedral_views(Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)))
    }
    assert len(arrs) == 8


def test_synthesized_anomaly_changes_pixels_inside_its_mask():
    import random

    img = texture(1)
    for s in range(6):
        out, mask = synthesize_anomaly(img, random.Random(s))
        assert mask.any() and mask.shape == (64, 64)
        assert out.size == img.size


def test_few_shot_detects_a_defect_and_calibrates(tower, expert_cfg):
    expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
    state = expert.fit_references(tower, [texture(0)], seed=0)
    assert isinstance(state, ReferenceState) and state.n_shots == 1 and state.few_shot
    assert state.threshold > 0 and state.pixel_threshold > 0
    assert len(state.banks) == 3 and state.banks[0].shape[0] == 8 * 4 * 4  # 3 levels; 8 views x (8x8 grid pooled by 2)
    out = tower.encode([texture(5), texture(6, blob=True)])
    normal, defect = expert.predict(out, state, (64, 48))
    assert isinstance(normal, AnomalyResult) and normal.anomaly_map.shape == (64, 48)
    assert defect.pred_score > normal.pred_score
    peak = np.unravel_index(defect.anomaly_map.argmax(), defect.anomaly_map.shape)
    assert 16 <= peak[0] < 48 and 8 <= peak[1] < 40  # the hot spot is on the square (centre of the image)
    assert defect.threshold == state.threshold
    if defect.pred_label:
        assert defect.pred_mask.any() and defect.boxes
    assert not normal.pred_mask.any() or normal.pred_label
    # regions closer than one patch-grid cell are one: the 8x8 grid pooled by 2 is 4x4, so a cell is 64/4 px tall
    assert defect.box_merge_px == pytest.approx(expert_cfg.box_merge_cells * 16.0)


def test_two_references_use_leave_one_out(tower, expert_cfg):
    expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
    state = expert.fit_references(tower, [texture(0), texture(1)], seed=0)
    assert state.n_shots == 2 and state.banks[0].shape[0] == 2 * 8 * 16
    assert "leave-one-out" in state.calibration["method"]


@pytest.mark.parametrize("source", ["head", "self"])
def test_zero_shot_without_trained_heads_is_a_clear_error(tower, expert_cfg, source):
    expert_cfg.zero_shot_source = source
    expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
    with pytest.raises(RuntimeError, match="reference normal image"):
        expert.fit_references(tower, [])


def _with_self_scales(expert, tower):
    """Set the per-level in-image scales as training does: median over normal images."""
    d, _, _ = expert.self_level_distances(tower.encode([texture(s) for s in range(4)]))
    expert.self_scales = [float(x[torch.isfinite(x)].median()) for x in d]
    return expert


def test_single_image_zero_shot_finds_the_defect_and_sets_a_threshold_per_image(tower, expert_cfg):
    """No reference, one image at a time (zero_shot_source auto -> self on EfficientNet): the square is rarer
    than anything else in its image, so its image scores higher and its map peaks there; each image gets its
    own threshold from anomalies synthesized on it, recorded with the result."""
    expert_cfg.calibration_synth = 4
    expert = _with_self_scales(AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim), tower)
    assert expert.self_calibrated()
    state = expert.fit_references(tower, [])
    assert state.n_shots == 0 and not state.few_shot and "synthesized" in state.calibration["method"]
    imgs = [texture(20), texture(21, blob=True)]
    normal, defect = expert.predict(tower.encode(imgs), state, (64, 64), images=imgs, tower=tower)
    assert defect.pred_score > normal.pred_score
    peak = np.unravel_index(defect.anomaly_map.argmax(), defect.anomaly_map.shape)
    assert 16 <= peak[0] < 48 and 16 <= peak[1] < 48
    for r in (normal, defect):
        assert np.isfinite(r.threshold) and r.threshold > 0 and r.pred_label == (r.pred_score > r.threshold)
        assert r.path == "zero-shot" and "synthesized on this image" in r.calibration
    assert defect.pred_label and defect.pred_mask.any()  # the bright square stands out above light synthetic defects
    # the same image always gets the same threshold (fixed seed), whatever it is batched with
    again = expert.predict(tower.encode(imgs[1:]), state, (64, 64), images=imgs[1:], tower=tower)[0]
    assert again.threshold == pytest.approx(defect.threshold) and again.pred_score == pytest.approx(
        defect.pred_score, rel=1e-4
    )
    with pytest.raises(ValueError, match="images=<2 query image"):
        expert.predict(tower.encode(imgs), state, (64, 64))


def test_zero_shot_source_is_validated():
    from assistant.config import ConfigError

    with pytest.raises(ConfigError, match="expected 'auto', 'self' or 'head', got 'selff'"):
        load_config("offline-small", ["expert.zero_shot_source=selff"])


def test_self_fusion_takes_the_geometric_or_arithmetic_mean_of_the_levels(tower, expert_cfg):
    """self_fusion geo (default) = exp(mean(log level map)), never above the arithmetic mean (mean); a bad value
    is a config error naming the choices."""
    from assistant.config import ConfigError

    expert = _with_self_scales(AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim), tower)
    out = tower.encode([texture(5), texture(6, blob=True)])
    dists, grids, grid = expert.self_level_distances(out)
    levels = torch.stack([expert.to_grid(torch.nan_to_num(d / s, posinf=1.0), g, grid)
                          for d, g, s in zip(dists, grids, expert.self_scales)], 1)
    assert expert_cfg.self_fusion == "geo"
    geo = expert.self_map(out)
    assert torch.allclose(geo, levels.clamp_min(1e-3).log().mean(1).exp(), atol=1e-5)
    expert.cfg.self_fusion = "mean"
    mean = expert.self_map(out)
    assert torch.allclose(mean, levels.mean(1), atol=1e-5) and (geo <= mean + 1e-5).all() and (geo < mean - 1e-3).any()
    with pytest.raises(ConfigError, match="expected 'geo' or 'mean', got 'median'"):
        load_config("offline-small", ["expert.self_fusion=median"])


def test_level_fusion_fuses_the_query_levels_and_leaves_the_calibration_scale(tower, expert_cfg):
    """With references the query map is the geometric (level_fusion geo, default) or arithmetic mean of the
    per-level kNN maps; the held-out scores that set the threshold (margin x the highest) do not depend on it."""
    from assistant.config import ConfigError

    expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
    expert.calibration_margin = {"k1": 1.5, "k2": 1.25}
    state = expert.fit_references(tower, [texture(0)], seed=0)
    out = tower.encode([texture(1), texture(2, blob=True)])
    levels = expert.few_shot_maps(out, state)  # (B, L, h', w')
    assert expert_cfg.level_fusion == "geo"
    assert torch.allclose(expert.raw_maps(out, state), levels.clamp_min(1e-3).log().mean(1).exp(), atol=1e-5)
    expert.cfg.level_fusion = "mean"
    assert torch.allclose(expert.raw_maps(out, state), levels.mean(1), atol=1e-5)
    again = expert.fit_references(tower, [texture(0)], seed=0)
    assert again.calibration["normal_scores"] == state.calibration["normal_scores"]
    with pytest.raises(ConfigError, match="'expert.level_fusion': expected 'geo' or 'mean', got 'max'"):
        load_config("offline-small", ["expert.level_fusion=max"])


def test_self_distances_flag_the_odd_patch():
    from assistant.expert import self_distances

    tokens = torch.randn(1, 1, 8).repeat(1, 36, 1) + 0.01 * torch.randn(1, 36, 8)
    tokens[0, 14] = torch.randn(8) * 3  # one odd patch on a 6x6 grid
    stats = self_distances(tokens, (6, 6))
    assert stats.shape == (1, 36, 3)
    assert int(stats[0, :, 0].argmax()) == 14


def test_self_nn_distance_leaves_out_the_neighbourhood():
    from assistant.expert import self_nn_distance

    feats = torch.zeros(1, 36, 4)
    feats[0, :, 0] = torch.arange(36, dtype=torch.float32) % 6  # column index: columns repeat down the grid
    feats[0, 14, 1] = 5.0  # one odd patch (row 2, column 2) on a 6x6 grid
    d = self_nn_distance(feats, (6, 6), exclude=0.2)  # radius round(0.2 * 6) = 1 grid step
    assert d.shape == (1, 36)
    assert float(d[0, 14]) == pytest.approx(5.0)  # its column look-alikes are plain: the odd patch stays far
    assert float(d[0, 0]) == 0.0  # a plain patch finds its twin two rows down (one row is left out)
    near = self_nn_distance(feats, (6, 6), exclude=1.0)  # radius 6: every other patch is left out
    assert torch.isinf(near).all()


def test_self_reference_only_lowers_the_map_and_flags_the_defect(tower, expert_cfg):
    out = tower.encode([texture(5), texture(6, blob=True)])
    maps = {}
    for flag in (False, True):
        expert_cfg.self_reference = flag
        expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
        state = expert.fit_references(tower, [texture(0)], seed=0)
        maps[flag] = expert.few_shot_maps(out, state) * torch.tensor(state.scales).view(1, -1, 1, 1)
        normal, defect = expert.predict(out, state, (64, 64))
        assert defect.pred_score > normal.pred_score
    assert (maps[True] <= maps[False] + 1e-5).all()  # min over a larger set of candidates


def test_save_and_load_round_trip(tower, expert_cfg, tmp_path):
    expert_cfg.zero_shot_source = "head"  # the head's stored threshold decides at k = 0
    expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
    expert.self_scales = [1.5, 2.5, 3.5]
    expert.reference_mismatch = 2.25
    assert isinstance(expert.head, PrototypeHead)
    with torch.no_grad():
        for p in expert.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    expert.trained = True
    expert.zero_shot_threshold = 0.42
    expert.save_pretrained(tmp_path, meta={"steps": 1})
    loaded = AnomalyExpert.from_pretrained(tmp_path, expert_cfg, tower)
    assert loaded.trained and loaded.zero_shot_threshold == pytest.approx(0.42) and loaded.meta == {"steps": 1}
    assert loaded.self_scales == pytest.approx([1.5, 2.5, 3.5]) and loaded.reference_mismatch == pytest.approx(2.25)
    out = tower.encode([texture(3)])
    assert torch.allclose(expert.zero_shot_map(out), loaded.zero_shot_map(out))
    state = loaded.fit_references(tower, [])
    res = loaded.predict(out, state, (64, 64))[0]
    assert res.threshold == pytest.approx(0.42) and res.path == "zero-shot"


def test_loading_with_another_level_fusion_than_the_margins_were_fitted_for_warns(tower, expert_cfg, tmp_path):
    """Margins and the mismatch cut are fitted for one level_fusion; loading them under the other one warns (a
    checkpoint without the key was fitted with the arithmetic mean)."""
    import json
    import warnings

    expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
    expert.calibration_margin = {"k1": 1.5}
    expert.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AnomalyExpert.from_pretrained(tmp_path, expert_cfg, tower)  # same fusion: silent
    meta = json.loads((tmp_path / "expert_config.json").read_text())
    del meta["expert"]["level_fusion"]
    (tmp_path / "expert_config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="fitted with expert.level_fusion=mean, but this config uses geo"):
        AnomalyExpert.from_pretrained(tmp_path, expert_cfg, tower)


def test_checkpoint_for_other_tower_is_rejected(tower, expert_cfg, tmp_path):
    other = AnomalyExpert(expert_cfg, [7, 9], 11)
    other.save_pretrained(tmp_path)
    with pytest.raises(ExpertCheckpointError, match="level dims"):
        AnomalyExpert.from_pretrained(tmp_path, expert_cfg, tower)
    with pytest.raises(ExpertCheckpointError, match="expected expert.safetensors"):
        AnomalyExpert.from_pretrained(tmp_path / "missing", expert_cfg, tower)


def test_text_head_on_tiny_openclip():
    from assistant.vision import build_vision_tower

    cfg = load_config("tiny")
    tower = build_vision_tower(cfg.vision)
    expert = AnomalyExpert.from_pretrained(None, cfg.expert, tower)
    assert isinstance(expert.head, TextHead)
    assert expert.head.text_features.shape == (2, tower.encode_text(["a"]).shape[-1])
    out = tower.encode([texture(0, 32), texture(1, 32)])
    logits, grid = expert.head([t.float() for t in out.patch_tokens], out.global_token, out.grid)
    assert logits.shape == (2, out.grid[0] * out.grid[1]) and grid == out.grid
    expert.trained = True
    res = expert.predict(out, expert.fit_references(tower, []), (32, 32))
    assert len(res) == 2 and res[0].anomaly_map.shape == (32, 32)
    assert 0.0 <= res[0].anomaly_map.min() and res[0].anomaly_map.max() <= 1.0


def test_verdict_mask_never_leaves_a_flagged_part_without_a_region():
    from assistant.expert import verdict_mask

    amap = np.zeros((10, 10), np.float32)
    amap[2, 7] = 1.0  # the hottest pixel
    assert not verdict_mask(amap, False, 0.5).any()  # normal verdict: empty mask
    assert verdict_mask(amap, True, 0.5).sum() == 1  # above the pixel threshold
    fallback = verdict_mask(amap, True, 2.0, topk=0.01)  # nothing above it: the top 1% (one pixel) instead
    assert fallback.sum() == 1 and fallback[2, 7]


def test_mutual_scoring_ranks_the_defective_parts_first_without_references(tower, expert_cfg):
    """Batch zero-shot: 6 good parts and 2 with a defect, no references; the defects score highest, their map
    peaks on the square, and the two-cluster split flags exactly them."""
    expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
    imgs = [texture(s) for s in range(6)] + [texture(10, blob=True), texture(11, blob=True)]
    res = expert.mutual_predict(tower.encode(imgs), (64, 64))
    scores = np.array([r.pred_score for r in res])
    assert scores[6:].min() > scores[:6].max()
    for r in res[6:]:
        peak = np.unravel_index(r.anomaly_map.argmax(), r.anomaly_map.shape)
        assert 16 <= peak[0] < 48 and 16 <= peak[1] < 48
        assert r.path == "mutual" and "two-cluster" in r.calibration
    assert [r.pred_label for r in res] == [False] * 6 + [True] * 2
    assert len({r.threshold for r in res}) == 1
    with pytest.raises(ValueError, match="at least 2 unlabeled images of the same kind, got 1"):
        expert.mutual_maps(tower.encode(imgs[:1]))


def test_mutual_scoring_caps_the_images_compared(tower, expert_cfg):
    """With more images than mutual_max_others, each is compared with a fixed sample; the ranking holds."""
    expert_cfg.mutual_max_others = 3
    expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
    imgs = [texture(s) for s in range(6)] + [texture(10, blob=True)]
    maps = expert.mutual_maps(tower.encode(imgs))
    assert maps.shape[0] == 7 and torch.isfinite(maps).all()
    assert maps[6].amax() > maps[:6].amax(dim=(1, 2)).max()


def test_batch_split_separates_two_clusters():
    from assistant.expert import batch_split

    scores = np.array([1.0, 1.1, 0.95, 1.05, 3.0, 3.3])
    t = batch_split(scores)
    assert 1.1 < t < 3.0
    assert batch_split(np.array([2.0, 2.0])) == 2.0  # no spread: nothing above the threshold


def blocks(seed: int, size: int = 64) -> Image.Image:
    """Large random colour blocks: a part of another kind than `texture`'s grey stripes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.NEAREST)


def test_reference_mismatch_flags_a_reference_of_another_part(tower, expert_cfg):
    """The median of the normalised map is reported with every few-shot result; it is far higher for a part of
    another kind than for another sample of the reference's kind, and the flag follows the fitted cut (no cut: no
    check). Zero-shot results have no reference to compare with."""
    expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
    state = expert.fit_references(tower, [texture(0)], seed=0)
    out = tower.encode([texture(1), blocks(2)])
    same, other = expert.predict(out, state, (64, 64))
    assert expert.reference_mismatch is None and not same.reference_mismatch and not other.reference_mismatch
    assert same.reference_mismatch_cut is None
    assert other.reference_median > 1.5 * same.reference_median
    expert.reference_mismatch = (same.reference_median + other.reference_median) / 2
    same, other = expert.predict(out, state, (64, 64))
    assert not same.reference_mismatch and other.reference_mismatch
    assert other.to_dict()["reference_mismatch"] is True and same.to_dict()["reference_mismatch"] is False
    assert other.reference_mismatch_cut == pytest.approx(expert.reference_mismatch, abs=1e-4)


def test_margin_key_takes_the_most_references_fitted_not_above_the_count():
    from assistant.expert import margin_key

    m = {"k1": 1.0, "k2": 1.0, "k4": 1.0, "k8": 1.0, "k16": 1.0}
    assert [margin_key(n, m) for n in (1, 2, 3, 4, 7, 8, 15, 16, 40)] == [
        "k1", "k2", "k2", "k4", "k4", "k8", "k8", "k16", "k16"]
    assert margin_key(20, {"k1": 1.0, "k2": 1.0, "k4": 1.0}) == "k4"  # a checkpoint from before k8
    # k1 is fitted on leave-view-out scores, k >= 2 on leave-one-out: neither stands in for the other
    assert margin_key(2, {"k1": 1.0}) is None and margin_key(1, {"k2": 1.0}) is None and margin_key(3, {}) is None


def test_calibration_margin_follows_the_number_of_references(tower, expert_cfg):
    """The earlier rule (expert.calibration: margin): k1 for one reference, k2 for two or three, k4 for four to
    seven, k8 (when trained) for eight or more: the threshold is the margin times the highest held-out normal score,
    and the rule says which margin."""
    import dataclasses

    expert = AnomalyExpert(dataclasses.replace(expert_cfg, calibration="margin"), tower.level_dims, tower.global_dim)
    expert.calibration_margin = {"k1": 1.5, "k2": 1.25, "k4": 2.0, "k8": 1.1}
    for refs, margin in ((1, 1.5), (2, 1.25), (3, 1.25), (4, 2.0), (5, 2.0), (8, 1.1)):
        state = expert.fit_references(tower, [texture(s) for s in range(refs)], seed=0)
        assert state.threshold == pytest.approx(margin * max(state.calibration["normal_scores"]), rel=1e-3)
        assert state.calibration["rule"].startswith(f"{margin:.3f} x")
    del expert.calibration_margin["k8"], expert.calibration_margin["k4"]  # before k4: k2 serves every k >= 2
    state = expert.fit_references(tower, [texture(s) for s in range(4)], seed=0)
    assert state.calibration["rule"].startswith("1.250 x")


def test_large_maps_are_smoothed_at_a_working_size_and_match_full_size_smoothing(expert_cfg, monkeypatch):
    """Above SMOOTH_SIDE the map is blurred at that side and resized: same shape, within 1% of the range of blurring
    at full size (which took seconds on a camera frame); at or below it nothing changes."""
    import cv2
    import torch.nn.functional as F

    from assistant.expert import SMOOTH_SIDE

    expert = AnomalyExpert(expert_cfg, [8], 8)
    raw = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)) * 3

    def direct(size):
        up = F.interpolate(raw.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
        return cv2.GaussianBlur(up, (0, 0), expert_cfg.smoothing_sigma * max(size) / 256.0)

    big = (SMOOTH_SIDE + 476, 2 * SMOOTH_SIDE)
    full = direct(big)
    blurred = []
    blur = cv2.GaussianBlur
    monkeypatch.setattr(cv2, "GaussianBlur", lambda m, *a, **k: blurred.append(m.shape) or blur(m, *a, **k))
    fast = expert.upsample(raw, big)[0]
    assert blurred == [(SMOOTH_SIDE * big[0] // big[1], SMOOTH_SIDE)]  # blurred at the working size
    assert fast.shape == big and fast.dtype == np.float32
    assert np.abs(fast - full).max() < 0.01 * (full.max() - full.min())
    small = (SMOOTH_SIDE // 4, SMOOTH_SIDE // 2)
    assert np.allclose(expert.upsample(raw, small)[0], direct(small), atol=1e-6)
