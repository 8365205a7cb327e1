"""Verdict thresholds from normal variation: null model, threshold estimate, review band, lot context."""
import dataclasses
import math
import random

import numpy as np
import pytest

from assistant.config import ConfigError, load_config
from assistant.expert import LOT_MIN, AnomalyExpert, AnomalyResult, normal_scale
from assistant.expert.calibration import (
    NULL_LEVELS,
    NullModel,
    camera_view,
    estimate_threshold,
    fit_null_model,
    judge,
    masked_map,
    review_band,
)
from tests.test_expert import texture, tower  # noqa: F401  (tower: module fixture, tiny random EfficientNet)


@pytest.fixture()
def expert_cfg():
    cfg = load_config("offline-small", ["expert.smoothing_sigma=1.0", "expert.calibration_synth=2",
                                        "expert.camera_views=3"]).expert
    cfg.checkpoint = None
    return cfg


def model_with(offset_k1: float, offset_k4: float, spread: float = 0.1) -> NullModel:
    """A NullModel whose offsets are the same at every level (so any target gives that offset)."""
    return NullModel(offsets={"k1": [offset_k1] * len(NULL_LEVELS), "k4": [offset_k4] * len(NULL_LEVELS)},
                     spread={"k1": spread, "k4": spread}, categories=3)


def test_threshold_is_the_null_median_times_the_fitted_offset():
    groups = [np.array([2.0]), np.array([2.2]), np.array([1.8]), np.array([2.0])]
    est = estimate_threshold(groups, 4, model_with(0.3, 0.1), target_overkill=0.1, review_confidence=0.8)
    assert est.null_median == pytest.approx(2.0)
    assert est.threshold == pytest.approx(2.0 * math.exp(0.1))  # the k4 offset, not k1's
    assert est.low < est.threshold < est.high
    assert est.sigma == pytest.approx(math.hypot(est.bootstrap_sigma, 0.1))


def test_offsets_between_fitted_counts_are_interpolated_in_log_k_and_the_target_picks_the_quantile():
    m = model_with(0.4, 0.0)
    assert m.offset(2, 0.9) == pytest.approx(0.2)  # log 2 is half way from log 1 to log 4
    assert m.offset(16, 0.9) == pytest.approx(0.0) and m.offset(1, 0.9) == pytest.approx(0.4)
    rising = NullModel(offsets={"k1": list(np.linspace(0.0, 1.0, len(NULL_LEVELS)))}, spread={"k1": 0.0})
    assert rising.offset(1, 0.99) > rising.offset(1, 0.9) > rising.offset(1, 0.5)  # fewer good parts flagged: higher
    again = NullModel.from_dict(m.to_dict())
    assert again.offset(2, 0.9) == pytest.approx(0.2) and again.categories == 3


def test_more_references_give_a_better_estimate_not_a_larger_maximum():
    """The threshold follows the median of the null scores: with 16 references drawn from the same normal variation
    it is about where it is with 4, and its bootstrap uncertainty is smaller (the old rule took a maximum, which
    only grows with the count)."""
    rng = np.random.default_rng(0)
    model = NullModel(offsets={"k1": [0.2] * len(NULL_LEVELS)}, spread={"k1": 0.0})
    few = [estimate_threshold([np.exp(rng.normal(1.0, 0.2, 1)) for _ in range(4)], 4, model, 0.1, 0.8, seed=s)
           for s in range(20)]
    many = [estimate_threshold([np.exp(rng.normal(1.0, 0.2, 1)) for _ in range(16)], 16, model, 0.1, 0.8, seed=s)
            for s in range(20)]
    assert np.mean([e.bootstrap_sigma for e in many]) < 0.7 * np.mean([e.bootstrap_sigma for e in few])
    assert abs(np.mean([math.log(e.threshold) for e in many]) - 1.2) < 0.05
    assert np.std([math.log(e.threshold) for e in many]) < np.std([math.log(e.threshold) for e in few])


def test_unfitted_model_uses_the_spread_of_the_null_scores():
    groups = [np.array([x]) for x in (1.0, 1.1, 1.2, 1.3, 1.4)]
    est = estimate_threshold(groups, 5, NullModel(), 0.1, 0.8)
    assert est.threshold > float(np.exp(np.median(np.log([1.0, 1.1, 1.2, 1.3, 1.4]))))
    assert est.category_sigma > 0


def test_bad_targets_are_refused_with_what_was_expected():
    with pytest.raises(ValueError, match=r"expected a fraction of good parts in \(0, 0.5\), got 0.7"):
        estimate_threshold([np.array([1.0])], 1, NullModel(), 0.7, 0.8)
    with pytest.raises(ValueError, match="expected at least one null score"):
        estimate_threshold([], 1, NullModel(), 0.1, 0.8)
    with pytest.raises(ConfigError, match="'expert.target_overkill'"):
        load_config("offline-small", ["expert.target_overkill=0"])
    with pytest.raises(ConfigError, match="'expert.review_confidence'"):
        load_config("offline-small", ["expert.review_confidence=1.5"])
    with pytest.raises(ConfigError, match="'expert.calibration': expected 'null' or 'margin'"):
        load_config("offline-small", ["expert.calibration=max"])


def test_judge_has_three_verdicts_and_the_band_matches_them():
    low, high = review_band(2.0, 0.1, 0.8)
    assert low < 2.0 < high and math.log(high / 2.0) == pytest.approx(1.2816 * 0.1, rel=1e-3)
    assert judge(2.0 * 1.01, 2.0, 0.1, 0.8)[0] == "borderline"
    assert judge(high * 1.01, 2.0, 0.1, 0.8)[0] == "anomalous"
    assert judge(low * 0.99, 2.0, 0.1, 0.8)[0] == "normal"
    v, conf = judge(4.0, 2.0, 0.1, 0.8)
    assert v == "anomalous" and conf > 0.999
    assert judge(2.5, 2.0, 0.0, 0.8) == ("anomalous", 1.0)  # no uncertainty known: binary


def test_fit_null_model_pools_categories_and_measures_their_spread():
    rng = np.random.default_rng(0)
    per = {f"c{i}": {1: [rng.normal(0.2 * i, 0.05, 200)], 4: [rng.normal(0.0, 0.05, 200)]} for i in range(3)}
    m = fit_null_model(per, target_overkill=0.1)
    assert set(m.offsets) == {"k1", "k4"} and m.categories == 3
    assert m.spread["k1"] == pytest.approx(np.std([0.0, 0.2, 0.4]), abs=0.03)  # the categories differ at k1
    assert m.spread["k4"] < 0.03
    pooled = np.concatenate([per[c][1][0] for c in per])
    assert m.offset(1, 0.9) == pytest.approx(np.quantile(pooled, 0.9), abs=0.01)


def test_camera_view_keeps_the_size_and_marks_the_reflected_border():
    img = texture(0, size=96)
    view, valid = camera_view(img, random.Random(0))
    assert view.size == img.size and valid.shape == (96, 96) and valid.dtype == bool
    assert 0.5 < valid.mean() < 1.0  # the border filled by reflection (and an eroded margin) is not scored
    amap = np.zeros((96, 96), np.float32)
    amap[~valid] = 10.0  # a response on the unscored border only
    assert masked_map(amap, valid).max() == 0.0
    small = masked_map(amap[::2, ::2].copy(), valid)  # a map at another size: the mask is resized to it
    assert small.shape == (48, 48) and small.max() < 10.0


def test_normal_scale_is_never_zero_on_images_that_match_themselves_exactly():
    import torch

    d = torch.cat([torch.zeros(90), torch.ones(10)])  # binarised board: most held-out patches match exactly
    assert normal_scale(d) == pytest.approx(0.1)
    assert normal_scale(torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(2.0)
    assert normal_scale(torch.zeros(5)) == pytest.approx(1e-6)


def test_one_reference_uses_camera_views_and_the_result_carries_the_three_way_verdict(tower, expert_cfg):  # noqa: F811
    expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
    expert.null_model = model_with(0.2, 0.1, spread=0.15)
    state = expert.fit_references(tower, [texture(0)], seed=0)
    est = state.estimate
    assert est is not None and est.n_null == 8 + 3  # 8 rotations/flips + 3 camera views
    assert "camera views" in state.calibration["method"] and "null" in state.calibration["method"]
    assert state.threshold == pytest.approx(est.null_median * math.exp(0.2), rel=1e-4)
    res = expert.predict(tower.encode([texture(1), texture(2, blob=True)]), state, (64, 64))
    for r in res:
        assert r.verdict in ("normal", "borderline", "anomalous") and 0.5 <= r.confidence <= 1.0
        assert r.threshold_low < r.threshold < r.threshold_high and r.threshold_sigma == pytest.approx(est.sigma)
        d = r.to_dict()
        assert d["verdict"] == r.verdict and d["review_band"] == [r.threshold_low, r.threshold_high]
    # a score placed inside the band is borderline, with pred_label still the binary decision
    inside = expert._result(res[0].anomaly_map, state.threshold * 1.01, state, "few-shot", (8, 8))
    assert inside.verdict == "borderline" and inside.pred_label and inside.borderline
    outside = expert._result(res[0].anomaly_map, state.threshold * 3.0, state, "few-shot", (8, 8))
    assert outside.verdict == "anomalous" and outside.confidence > 0.99


def test_margin_rule_stays_available(tower, expert_cfg):  # noqa: F811
    expert = AnomalyExpert(dataclasses.replace(expert_cfg, calibration="margin"), tower.level_dims, tower.global_dim)
    expert.calibration_margin = {"k1": 1.5}
    state = expert.fit_references(tower, [texture(0)], seed=0)
    assert state.estimate is None and state.threshold == pytest.approx(1.5 * max(state.calibration["normal_scores"]),
                                                                         rel=1e-3)


def result_with(score: float, threshold: float = 10.0) -> AnomalyResult:
    amap = np.full((16, 16), score, np.float32)
    return AnomalyResult(anomaly_map=amap, pred_score=score, pred_label=score > threshold,
                         pred_mask=np.zeros((16, 16), bool), threshold=threshold, pixel_threshold=threshold,
                         threshold_sigma=0.05)


def test_a_lot_lowers_a_threshold_the_references_set_too_high(tower, expert_cfg):  # noqa: F811
    """Six good parts around 1.0 and three defective ones around 3.0, with a references' threshold (4) above them
    all: alone it passes every part; with the lot the threshold falls between the two clusters."""
    expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
    scores = [0.9, 1.0, 1.05, 1.1, 0.95, 1.0, 2.8, 3.0, 3.2]
    alone = [result_with(s, threshold=4.0) for s in scores]
    assert not any(r.pred_label for r in alone)
    lot = expert.lot_decide(alone)
    assert [r.pred_label for r in lot] == [s > 2 for s in scores]
    assert all(r.lot_size == 9 and r.reference_threshold == 4.0 for r in lot)
    assert lot[0].threshold < 4.0 and lot[-1].pred_mask.any() and not lot[0].pred_mask.any()
    small = [result_with(s) for s in scores[:LOT_MIN - 1]]
    assert expert.lot_decide(small) == small  # too few parts: the references decide


def test_a_lot_of_parts_judged_on_two_paths_is_split_on_the_decision_statistic(tower, expert_cfg):  # noqa: F811
    """Free-path parts score on a scale 4x the aligned ones': the lot's split is taken on score over its own
    threshold, so an aligned defect at 0.8 (as far up its scale as the free defects) is flagged, an aligned good
    part at 0.25 is not (one threshold for raw scores passed it), and each part keeps a threshold on its own scale."""
    expert = AnomalyExpert(expert_cfg, tower.level_dims, tower.global_dim)
    free = [result_with(s, threshold=4.0) for s in (0.9, 1.0, 1.05, 1.1, 0.95, 2.8, 3.2)]
    aligned = [result_with(s, threshold=1.0) for s in (0.25, 0.8)]
    lot = expert.lot_decide(free + aligned)
    assert [r.pred_label for r in lot] == [False] * 5 + [True, True] + [False, True]
    assert lot[-1].threshold == pytest.approx(lot[0].threshold / 4.0)  # the same factor on each path's scale
    assert lot[0].lot_split == pytest.approx(4.0 * lot[-1].lot_split)


def test_sensitivity_keeps_the_review_band_relative_to_the_moved_threshold():
    from assistant.expert import apply_sensitivity

    r = result_with(10.5)
    r.review_confidence = 0.8
    moved = apply_sensitivity(r, 1.0)  # threshold halved: 10.5 is far above 5
    assert moved.threshold == pytest.approx(5.0) and moved.verdict == "anomalous"
    assert moved.threshold_low < 5.0 < moved.threshold_high
    assert apply_sensitivity(r, 0.0) is r
