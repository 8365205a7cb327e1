"""Sensitivity re-labelling and the evidence pictures (pure numpy/OpenCV, no models)."""
import numpy as np
import pytest
from PIL import Image

from assistant.expert import AnomalyResult, apply_sensitivity, mask_boxes
from assistant.overlay import BOX_COLOUR, normalise_map, render_mask, render_overlay


def _result(score=1.5, threshold=1.0, pixel_threshold=0.8, size=(40, 60)) -> AnomalyResult:
    h, w = size
    amap = np.full((h, w), 0.2, np.float32)
    amap[5:15, 40:55] = 1.2  # strong blob top right
    amap[25:35, 5:12] = 0.6  # weak blob bottom left (below the pixel threshold)
    label = score > threshold
    mask = (amap > pixel_threshold) & label
    return AnomalyResult(amap, score, label, mask, mask_boxes(mask, amap), threshold, pixel_threshold)


def test_mask_boxes_components_largest_first():
    mask = np.zeros((20, 20), bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[10:16, 10:18] = True  # 48 px
    amap = mask.astype(np.float32) * 2
    boxes = mask_boxes(mask, amap)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes] == [(10, 10, 18, 16), (1, 1, 3, 3)]
    assert boxes[0].area_fraction == pytest.approx(48 / 400)
    assert mask_boxes(mask, amap, min_area=0.05) == boxes[:1]


def test_mask_boxes_merges_components_closer_than_merge_px():
    """One defect split by a gap narrower than a map cell is one region: its box spans both parts, its area is
    their sum, its score their max; parts farther apart stay separate."""
    mask = np.zeros((40, 40), bool)
    mask[5:10, 5:10] = True  # 25 px
    mask[5:10, 13:20] = True  # 35 px, 3 px to the right of the first
    mask[30:35, 30:35] = True  # 25 px, far away
    amap = mask.astype(np.float32)
    amap[7, 15] = 3.0
    assert len(mask_boxes(mask, amap)) == 3  # no merging by default
    merged = mask_boxes(mask, amap, merge_px=4)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in merged] == [(5, 5, 20, 10), (30, 30, 35, 35)]
    assert merged[0].area_fraction == pytest.approx(60 / 1600) and merged[0].score == pytest.approx(3.0)
    assert len(mask_boxes(mask, amap, merge_px=2)) == 3  # a 3 px gap is wider than 2 px
    assert len(mask_boxes(mask, amap, merge_px=60)) == 1
    assert mask_boxes(mask, amap, min_area=0.03, merge_px=4) == merged[:1]


def test_sensitivity_zero_is_identity_and_scales_thresholds():
    r = _result()
    assert apply_sensitivity(r, 0.0) is r
    strict = apply_sensitivity(r, -1.0)  # thresholds doubled: score 1.5 < 2.0 -> normal, empty mask
    assert strict.threshold == pytest.approx(2.0) and strict.pixel_threshold == pytest.approx(1.6)
    assert not strict.pred_label and not strict.pred_mask.any() and strict.boxes == []
    assert strict.calibrated_threshold == pytest.approx(1.0)
    assert strict.anomaly_map is r.anomaly_map and strict.pred_score == r.pred_score  # map/score untouched


def test_sensitivity_more_sensitive_flags_weak_regions():
    r = _result(score=0.9)  # below the calibrated threshold: normal
    assert not r.pred_label and not r.pred_mask.any()
    loose = apply_sensitivity(r, 1.0)  # thresholds halved: 0.5 image, 0.4 pixel
    assert loose.pred_label
    assert loose.pred_mask[30, 8] and loose.pred_mask[10, 45] and not loose.pred_mask[0, 0]
    assert len(loose.boxes) == 2
    nonpos = _result(score=0.1, threshold=0.0, pixel_threshold=0.0)  # non-positive thresholds shift instead
    assert apply_sensitivity(nonpos, 1.0).threshold < 0.0 < apply_sensitivity(nonpos, -1.0).threshold


def test_render_overlay_draws_boxes_at_image_size():
    r = _result()
    img = Image.fromarray(np.full((80, 120, 3), 128, np.uint8))  # twice the map size
    out = render_overlay(img, r)
    assert out.shape == (80, 120, 3) and out.dtype == np.uint8
    b = r.boxes[0]
    edge = out[b.y0 * 2 + 1, b.x0 * 2 + 5]  # on the top edge of the scaled box
    assert tuple(edge) == BOX_COLOUR
    assert out[70, 10].tolist() != [128, 128, 128]  # heat-map blended in
    cap = render_overlay(np.asarray(img), r, caption=True)
    assert (cap != out).any()
    m = render_mask(r)
    assert m.shape == (40, 60) and set(np.unique(m)) == {0, 255} and m[10, 45] == 255
    assert render_mask(r, size=(120, 80)).shape == (80, 120)


def test_normalise_map_anchors_threshold_at_middle():
    r = _result()
    r.anomaly_map[0, 1] = r.pixel_threshold
    v = normalise_map(r)  # min 0.2 -> 0, threshold 0.8 -> 0.5, 1.2 -> (1.2 - 0.2) / 1.2
    assert v[0, 0] == 0.0 and v[0, 1] == pytest.approx(0.5) and v[10, 45] == pytest.approx(1.0 / 1.2)
    with pytest.raises(ValueError, match="expected an image of shape"):
        render_overlay(np.zeros((4, 4, 2), np.uint8), r)
