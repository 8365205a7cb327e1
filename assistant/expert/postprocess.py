"""From a patch-grid map to what the user sees: upsampled, smoothed map, image score, mask, boxes, and the same
result judged at another threshold (sensitivity slider, lot)."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from assistant.expert.calibration import judge, review_band
from assistant.expert.describe import box_region, describe, describe_box
from assistant.expert.result import AnomalyResult, Box

SMOOTH_SIDE = 1024  # maps for larger images are smoothed at this side, then resized (AnomalyExpert.upsample)
SENSITIVITY_RANGE = (-1.0, 1.0)  # slider range; +1 halves the calibrated thresholds, -1 doubles them


def upsample(maps: torch.Tensor, size: tuple[int, int], smoothing_sigma: float) -> np.ndarray:
    """(B, h, w) -> (B, H, W) float32, bilinear + Gaussian smoothing (sigma scales with the longer side).

    Above SMOOTH_SIDE pixels the map is smoothed at SMOOTH_SIDE (same aspect ratio) and then resized
    bilinearly: a camera frame of 12 MP took 2.1 s in the blur alone, and the smoothed map has no detail
    finer than the patch grid, so the result differs only by interpolation."""
    h, w = int(size[0]), int(size[1])
    f = min(1.0, SMOOTH_SIDE / max(h, w))
    work = (max(1, round(h * f)), max(1, round(w * f)))
    up = F.interpolate(maps.unsqueeze(1).float(), size=work, mode="bilinear", align_corners=False)[:, 0]
    up = up.cpu().numpy().astype(np.float32)
    sigma = smoothing_sigma * max(work) / 256.0
    if sigma > 0:
        up = np.stack([cv2.GaussianBlur(m, (0, 0), sigma) for m in up])
    if work != (h, w):
        up = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in up])
    return up


def image_score(amap: np.ndarray, topk: float) -> float:
    """Mean of the top `topk` fraction of map pixels (max when the fraction is 0)."""
    flat = amap.reshape(-1)
    k = max(1, int(round(topk * flat.size)))
    return float(np.partition(flat, flat.size - k)[-k:].mean())


def verdict_mask(anomaly_map: np.ndarray, label: bool, pixel_threshold: float, topk: float = 0.01) -> np.ndarray:
    """(H, W) bool pred_mask for a verdict: empty when normal (the picture never contradicts the verdict);
    when anomalous, the pixels above the pixel threshold, or, if none is, the top `topk` fraction of the map:
    the pixels the image score was pooled from, so a flagged part always shows (and states) where."""
    if not label:
        return np.zeros(anomaly_map.shape, bool)
    mask = anomaly_map > pixel_threshold
    if not mask.any() and anomaly_map.size:
        flat = anomaly_map.reshape(-1)
        k = max(1, int(round(topk * flat.size)))
        mask = anomaly_map >= np.partition(flat, flat.size - k)[flat.size - k]
    return mask


def mask_boxes(mask: np.ndarray, amap: np.ndarray, min_area: float = 0.0, merge_px: float = 0.0) -> list[Box]:
    """Regions of a (H, W) bool mask as Boxes, largest first. Connected components (8-connectivity) closer than
    `merge_px` pixels count as one region (its box spans them, its area is their sum): a gap narrower than a cell
    of the anomaly map's patch grid is below what the map resolves, so one defect split by it is still one.
    Regions below `min_area` (fraction of the image) are dropped."""
    if not mask.any():
        return []
    m = mask.astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    fg = lab > 0
    peak = np.full(n, -np.inf, np.float32)
    np.maximum.at(peak, lab[fg], amap[fg])  # (n,) map maximum per component, one pass over the mask pixels
    group = np.arange(n)  # component -> region id
    if merge_px >= 1 and n > 2:
        k = int(round(merge_px / 2))  # both sides grow by half the gap: components within merge_px touch
        grown = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
        _, glab = cv2.connectedComponents(grown, connectivity=8)
        group[lab[fg]] = glab[fg]  # a component lies inside one grown component
    total = float(mask.size)
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = left + stats[:, cv2.CC_STAT_WIDTH], top + stats[:, cv2.CC_STAT_HEIGHT]
    out = []
    for g in np.unique(group[1:]):
        members = 1 + np.flatnonzero(group[1:] == g)
        area = float(stats[members, cv2.CC_STAT_AREA].sum())
        if area / total < min_area:
            continue
        out.append(Box(int(left[members].min()), int(top[members].min()), int(right[members].max()),
                       int(bottom[members].max()), float(peak[members].max()), area / total))
    return sorted(out, key=lambda b: -b.area_fraction)


def relabel(result: AnomalyResult, threshold: float, pixel_threshold: float, review_confidence: float = 0.8,
            min_box_area: float = 0.0, **changes) -> AnomalyResult:
    """The same map and score judged at another threshold (sensitivity slider, lot context): binary label, three-way
    verdict with the result's threshold uncertainty, mask and boxes follow; `changes` sets further fields
    (lot_size, sensitivity, ...)."""
    label = bool(result.pred_score > threshold)
    mask = verdict_mask(result.anomaly_map, label, pixel_threshold, result.score_topk)
    boxes = mask_boxes(mask, result.anomaly_map, min_box_area, result.box_merge_px) if label else []
    carry_changes(result.boxes + ([result.peak] if result.peak is not None else []), boxes)
    peak = None if boxes else (max(result.boxes, key=lambda b: b.score) if result.boxes else result.peak)
    verdict, confidence = judge(result.pred_score, threshold, result.threshold_sigma, review_confidence)
    low, high = review_band(threshold, result.threshold_sigma, review_confidence)
    reason = "threshold" if verdict == "borderline" else ""
    if result.review_reason == "coverage" and "lot_size" not in changes:  # the lot's scores speak for its good parts
        verdict, reason = "borderline", "coverage"
    return dataclasses.replace(result, pred_label=label, pred_mask=mask, boxes=boxes, threshold=float(threshold),
                               pixel_threshold=float(pixel_threshold), verdict=verdict, confidence=confidence,
                               review_reason=reason,
                               threshold_low=low, threshold_high=high, review_confidence=review_confidence,
                               peak=peak, **changes)


def peak_region(result: AnomalyResult) -> tuple[Box, np.ndarray] | None:
    """The strongest region (its Box and (H, W) bool pixels) of the mask the result would have if it were
    flagged: what a normal verdict's strongest deviation is. None for an empty map."""
    if not result.anomaly_map.size:
        return None
    mask = verdict_mask(result.anomaly_map, True, result.pixel_threshold, result.score_topk)
    boxes = mask_boxes(mask, result.anomaly_map, 0.0, result.box_merge_px)
    if not boxes:
        return None
    box = max(boxes, key=lambda b: b.score)
    return box, box_region(mask, box)


def describe_results(results: list[AnomalyResult], images: list | None, classifier=None,
                     out=None) -> list[AnomalyResult]:
    """Measure the regions (expert/describe.py) of results whose boxes are not measured yet (the aligned path
    measures its own against the reference) and name their type with `classifier` (expert/defect_type.py; `out`:
    the queries' VisionOutput, whose region tokens it may read); a result with no region gets its strongest
    deviation measured as `peak`. Nothing without the query images."""
    if images is None or len(images) != len(results):
        return results
    for i, (res, img) in enumerate(zip(results, images)):
        if res.boxes and all(b.descriptor is None for b in res.boxes):
            describe(res, img, classifier=classifier, out=out, index=i)
        elif not res.boxes and res.peak is None and (found := peak_region(res)) is not None:
            res.peak, region = found
            describe_box(res.peak, img, region, classifier=classifier, out=out, index=i)
    return results


def carry_changes(old: list[Box], new: list[Box]) -> None:
    """Give each new box the `change` and `shape` (aligned path) and the `descriptor` of the old box it overlaps
    most; "" / None where none does (a region that appears only at the new threshold was not compared or measured)."""
    for b in new:
        best, area = None, 0
        for o in old:
            w = min(b.x1, o.x1) - max(b.x0, o.x0)
            h = min(b.y1, o.y1) - max(b.y0, o.y0)
            if w > 0 and h > 0 and w * h > area:
                best, area = o, w * h
        if best is not None:
            b.change, b.shape, b.descriptor = best.change, best.shape, best.descriptor


def best_f1_threshold(values: np.ndarray, gt: np.ndarray) -> float:
    """Map threshold with the best F1 against synthesized masks (60 quantiles between the median and the top)."""
    cand = np.quantile(values, np.linspace(0.5, 0.999, 60))
    return float(cand[int(np.argmax([f1(values > c, gt) for c in cand]))])


def f1(pred: np.ndarray, gt: np.ndarray) -> float:
    tp = float(np.logical_and(pred, gt).sum())
    return 2 * tp / max(float(pred.sum() + gt.sum()), 1.0)


def apply_sensitivity(result: AnomalyResult, sensitivity: float, min_box_area: float = 0.0) -> AnomalyResult:
    """Re-label a result with thresholds moved relative to the calibrated ones (no re-encode).

    sensitivity s in [-1, 1]: both thresholds are multiplied by 2**-s (s = +1 halves them: more defects
    flagged; s = -1 doubles them: stricter). Thresholds that are not positive are shifted instead, by s
    times the map's standard deviation. s = 0 returns `result` itself. The mask is empty when the verdict
    is normal, so the picture never disagrees with the verdict (`verdict_mask`).
    """
    s = float(np.clip(sensitivity, *SENSITIVITY_RANGE))
    if s == 0.0:
        return result

    def move(t: float) -> float:
        return t * 2.0 ** -s if t > 0 else t - s * float(result.anomaly_map.std())

    return relabel(
        result,
        move(result.threshold),
        move(result.pixel_threshold),
        result.review_confidence,
        min_box_area,
        sensitivity=s,
        calibrated_threshold=float(result.threshold),
        calibrated_pixel_threshold=float(result.pixel_threshold),
    )
