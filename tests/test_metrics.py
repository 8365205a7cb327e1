"""Metrics against scikit-learn and hand-computed cases (AUPRO especially)."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from assistant.evaluation.expert.metrics import aupro, f1_max, image_metrics, pixel_metrics


def test_image_metrics_match_sklearn_and_hand_counts():
    rng = np.random.default_rng(0)
    y = np.array([0] * 6 + [1] * 4)
    s = rng.random(10) + y * 0.3
    preds = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])  # 2 of 6 normals rejected, 1 of 4 anomalies missed
    m = image_metrics(y, s, preds)
    assert m["image_auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m["image_ap"] == pytest.approx(average_precision_score(y, s))
    assert m["overkill"] == pytest.approx(2 / 6)
    assert m["miss"] == pytest.approx(1 / 4)
    assert m["balanced_accuracy"] == pytest.approx(1 - (2 / 6 + 1 / 4) / 2)


def test_f1_max_hand_case():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.6, 0.4, 0.9])
    # thresholds: >=0.9 -> P=1,R=.5,F1=.667; >=0.6 -> P=.5,R=.5; >=0.4 -> P=2/3,R=1,F1=.8; >=0.1 -> P=.5,R=1,F1=.667
    assert f1_max(y, s) == pytest.approx(0.8)


def test_image_metrics_single_class_skips_ranking_metrics():
    m = image_metrics([1, 1, 1], [0.2, 0.5, 0.9], [1, 0, 1])
    assert "image_auroc" not in m and "balanced_accuracy" not in m
    assert m["miss"] == pytest.approx(1 / 3)


def test_aupro_perfect_map_is_one():
    mask = np.zeros((1, 8, 8), bool)
    mask[0, 2:4, 2:4] = True
    assert aupro(mask, mask.astype(float)) == pytest.approx(1.0)


def test_aupro_two_regions_weighted_per_region_not_per_pixel():
    # region A: 4 px scored 0.9 (found first); region B: 1 px scored 0.5; 95 normal px: 10 at 0.7, 85 at 0.0
    mask = np.zeros((1, 10, 10), bool)
    maps = np.zeros((1, 10, 10))
    mask[0, 0:2, 0:2] = True
    maps[0, 0:2, 0:2] = 0.9
    mask[0, 8, 8] = True
    maps[0, 8, 8] = 0.5
    maps[0, 5, 0:10] = 0.7
    # curve: (0, .5) up to FPR 10/95 (only A found), then PRO 1 until the limit 0.3
    fpr1 = 10 / 95
    expected = (0.5 * fpr1 + 1.0 * (0.3 - fpr1)) / 0.3
    assert aupro(mask, maps, fpr_limit=0.3) == pytest.approx(expected, rel=1e-9)
    # a per-pixel TPR would give 0.8 before FPR 10/95; make sure that is not what we compute
    assert aupro(mask, maps) != pytest.approx((0.8 * fpr1 + (0.3 - fpr1)) / 0.3)


def test_aupro_interpolates_at_the_fpr_limit():
    # one region fully found only when FPR reaches 0.5 -> PRO is 0 before, so the area up to 0.3 is 0;
    # with the limit at 0.6 the curve rises to 1 at FPR 0.5: area = 0.1 / 0.6
    mask = np.zeros((1, 2, 6), bool)
    maps = np.zeros((1, 2, 6))
    mask[0, 0, 0:2] = True
    maps[0, 0, 0:2] = 0.5
    maps[0, 1, 0:5] = 0.6  # 5 of 10 normal pixels above the region's score
    assert aupro(mask, maps, fpr_limit=0.3) == pytest.approx(0.0)
    assert aupro(mask, maps, fpr_limit=0.6) == pytest.approx(0.1 / 0.6)


def test_aupro_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same shape"):
        aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5)))


def test_pixel_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    masks = np.zeros((3, 16, 16), bool)
    masks[1, 4:8, 4:9] = True
    masks[2, 10:14, 2:5] = True
    maps = rng.random((3, 16, 16)) + masks * 0.6
    m = pixel_metrics(masks, maps)
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(masks.reshape(-1), maps.reshape(-1)), rel=1e-6)
    assert 0.0 <= m["pixel_aupro"] <= 1.0 and 0.0 <= m["pixel_f1_max"] <= 1.0
    assert pixel_metrics(np.zeros((2, 4, 4), bool), rng.random((2, 4, 4))) == {}


def test_review_rate_and_balanced_accuracy_outside_the_review_band():
    """Borderline images are counted as sent for review; the balanced accuracy of the others is reported beside the
    binary figures (which still count every image at the threshold)."""
    labels = [0, 0, 0, 1, 1, 1]
    preds = [0, 0, 1, 1, 1, 0]
    verdicts = ["normal", "normal", "borderline", "anomalous", "anomalous", "borderline"]
    m = image_metrics(labels, [0.1, 0.2, 0.6, 0.9, 0.8, 0.4], preds, verdicts)
    assert m["review_rate"] == pytest.approx(2 / 6)
    assert m["balanced_accuracy"] == pytest.approx(1 - (1 / 3 + 1 / 3) / 2)
    assert m["balanced_accuracy_outside_review"] == pytest.approx(1.0)
    assert "review_rate" not in image_metrics(labels, [0.1] * 6, preds)


def test_overkill_and_miss_outside_the_review_band_count_decided_images_only():
    """Outside review: the share of decided good parts flagged and of decided defective parts passed; a class with
    no decided image leaves its figure (and the balanced accuracy) out."""
    labels = [0, 0, 0, 0, 1, 1, 1]
    preds = [0, 1, 1, 0, 1, 0, 1]
    verdicts = ["normal", "anomalous", "borderline", "borderline", "anomalous", "normal", "borderline"]
    m = image_metrics(labels, [0.1, 0.7, 0.6, 0.4, 0.9, 0.2, 0.55], preds, verdicts)
    assert m["overkill_outside_review"] == pytest.approx(1 / 2)  # decided goods: 0 and 1, one flagged
    assert m["miss_outside_review"] == pytest.approx(1 / 2)  # decided defectives: 4 and 5, one passed
    assert m["balanced_accuracy_outside_review"] == pytest.approx(1 - (1 / 2 + 1 / 2) / 2)
    assert m["overkill"] == pytest.approx(2 / 4) and m["miss"] == pytest.approx(1 / 3)  # every image at the threshold
    held_goods = image_metrics([0, 0, 1], [0.1, 0.2, 0.9], [0, 0, 1], ["borderline", "borderline", "anomalous"])
    assert held_goods["miss_outside_review"] == 0.0
    assert "overkill_outside_review" not in held_goods and "balanced_accuracy_outside_review" not in held_goods


def test_free_path_auroc_is_computed_from_the_free_scores():
    labels = [0, 0, 1, 1]
    m = image_metrics(labels, [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], free_scores=[0.5, 0.2, 0.4, 0.9])
    assert m["image_auroc"] == 1.0
    assert m["image_auroc_free"] == pytest.approx(roc_auc_score(labels, [0.5, 0.2, 0.4, 0.9]))
    assert "image_auroc_free" not in image_metrics(labels, [0.1, 0.2, 0.8, 0.9])
