"""AnomalyResult: the expert's typed output for one image (anomalib field names)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import cv2
import numpy as np

from assistant.anomaly.calibration import judge, review_band
from assistant.constants import position_word, size_word


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


def mask_boxes(mask: np.ndarray, amap: np.ndarray, min_area: float = 0.0, merge_px: float = 0.0) -> list["Box"]:
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


@dataclass
class Box:
    x0: int  # left, pixels of the image the map was computed for
    y0: int  # top
    x1: int  # right (exclusive)
    y1: int  # bottom (exclusive)
    score: float  # max of the anomaly map inside the box
    area_fraction: float  # mask pixels of this component / image pixels

    @property
    def center(self) -> tuple[float, float]:
        return (self.y0 + self.y1) / 2.0, (self.x0 + self.x1) / 2.0

    def to_dict(self) -> dict:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1,
                "score": float(self.score), "area_fraction": float(self.area_fraction)}


@dataclass
class AnomalyResult:
    anomaly_map: np.ndarray  # (H, W) float32 anomaly score per pixel
    pred_score: float  # image-level anomaly score (same scale as threshold)
    pred_label: bool  # True = anomalous (pred_score > threshold)
    pred_mask: np.ndarray  # (H, W) bool predicted defect pixels
    boxes: list[Box] = field(default_factory=list)  # connected components of pred_mask, largest first
    threshold: float = 0.0  # calibrated image-score threshold used for pred_label
    pixel_threshold: float = 0.0  # map threshold used for pred_mask
    extras: dict = field(default_factory=dict)  # per-path scores, timings, shots used, ...
    # True when most of the image is unlike the references (their median patch is farther than the cut fitted on
    # synthetic parts): a reference of another part, view or lighting; the verdict is then less reliable
    reference_mismatch: bool = False
    # three-way verdict: "normal" | "borderline" | "anomalous"; borderline = the score lies within the uncertainty of
    # the threshold (a person should check it). pred_label stays the binary decision at the threshold.
    verdict: str = ""
    confidence: float = 1.0  # probability that pred_label would not flip under the threshold's uncertainty
    threshold_sigma: float = 0.0  # log-scale uncertainty of the threshold (0: none known)
    threshold_low: float = 0.0  # scores between threshold_low and threshold_high are borderline
    threshold_high: float = 0.0

    def __post_init__(self):
        if not self.verdict:
            self.verdict = "anomalous" if self.pred_label else "normal"
        if self.threshold_high <= 0.0:
            self.threshold_low = self.threshold_high = float(self.threshold)

    @property
    def borderline(self) -> bool:
        return self.verdict == "borderline"

    @property
    def area_fraction(self) -> float:
        return float(self.pred_mask.mean()) if self.pred_mask.size else 0.0

    @property
    def position(self) -> str | None:
        """3x3 grid word of the predicted mask centroid (None when the mask is empty)."""
        if not self.pred_mask.any():
            return None
        ys, xs = np.nonzero(self.pred_mask)
        h, w = self.pred_mask.shape
        return position_word(ys.mean() / h, xs.mean() / w)

    @property
    def size(self) -> str | None:
        return size_word(self.area_fraction) if self.pred_mask.any() else None

    @property
    def severity(self) -> str:
        """Words for how far the score sits above/below the threshold."""
        t = max(abs(self.threshold), 1e-8)
        r = self.pred_score / t
        if not self.pred_label:
            return "normal"
        return "slightly suspicious" if r < 1.15 else "moderately suspicious" if r < 1.5 else "highly suspicious"

    def to_dict(self) -> dict:
        return {
            "pred_score": float(self.pred_score),
            "pred_label": bool(self.pred_label),
            "verdict": self.verdict,
            "confidence": round(float(self.confidence), 4),
            "threshold": float(self.threshold),
            "review_band": [float(self.threshold_low), float(self.threshold_high)],
            "pixel_threshold": float(self.pixel_threshold),
            "area_fraction": self.area_fraction,
            "position": self.position,
            "size": self.size,
            "severity": self.severity,
            "boxes": [b.to_dict() for b in self.boxes],
            "reference_mismatch": bool(self.reference_mismatch),
            "map_shape": list(self.anomaly_map.shape),
            "extras": {k: v for k, v in self.extras.items() if isinstance(v, (int, float, str, bool, list, dict))},
        }


def relabel(result: AnomalyResult, threshold: float, pixel_threshold: float, review_confidence: float = 0.8,
            min_box_area: float = 0.0, **extras) -> AnomalyResult:
    """The same map and score judged at another threshold (sensitivity slider, lot context): binary label, three-way
    verdict with the result's threshold uncertainty, mask and boxes follow; `extras` are added to result.extras."""
    label = bool(result.pred_score > threshold)
    mask = verdict_mask(result.anomaly_map, label, pixel_threshold, result.extras.get("score_topk", 0.01))
    boxes = mask_boxes(mask, result.anomaly_map, min_box_area, result.extras.get("box_merge_px", 0.0)) if label else []
    verdict, confidence = judge(result.pred_score, threshold, result.threshold_sigma, review_confidence)
    low, high = review_band(threshold, result.threshold_sigma, review_confidence)
    return dataclasses.replace(result, pred_label=label, pred_mask=mask, boxes=boxes, threshold=float(threshold),
                               pixel_threshold=float(pixel_threshold), verdict=verdict, confidence=confidence,
                               threshold_low=low, threshold_high=high, extras=dict(result.extras, **extras))
