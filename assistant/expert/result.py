"""AnomalyResult: the expert's typed output for one image (anomalib field names)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from assistant.expert.alignment import Registration
from assistant.expert.describe import Descriptor
from assistant.wording import mask_position, size_word, suspicion_word


@dataclass
class Box:
    x0: int  # left, pixels of the image the map was computed for
    y0: int  # top
    x1: int  # right (exclusive)
    y1: int  # bottom (exclusive)
    score: float  # max of the anomaly map inside the box
    area_fraction: float  # mask pixels of this component / image pixels
    # aligned path only: "missing" (material of the reference absent here) | "extra" (material the reference has not)
    # | "altered" (changed, neither); "" when the region came from the free path
    change: str = ""
    # aligned path, missing/extra only: how the material changed (expert/shape.py SHAPES: cut, gone, hole, bite,
    # bridge, isolated, protrusion); "" when not judged
    shape: str = ""
    # what the region looks like, measured on the image (expert/describe.py); None when not measured
    descriptor: Descriptor | None = None

    @property
    def center(self) -> tuple[float, float]:
        return (self.y0 + self.y1) / 2.0, (self.x0 + self.x1) / 2.0

    def to_dict(self) -> dict:
        out = {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1,
               "score": float(self.score), "area_fraction": float(self.area_fraction)}
        if self.change:
            out["change"] = self.change
        if self.shape:
            out["shape"] = self.shape
        if self.descriptor is not None:
            out["descriptor"] = self.descriptor.to_dict()
        return out


@dataclass
class AnomalyResult:
    anomaly_map: np.ndarray  # (H, W) float32 anomaly score per pixel
    pred_score: float  # image-level anomaly score (same scale as threshold)
    pred_label: bool  # True = anomalous (pred_score > threshold)
    pred_mask: np.ndarray  # (H, W) bool predicted defect pixels
    boxes: list[Box] = field(default_factory=list)  # connected components of pred_mask, largest first
    threshold: float = 0.0  # calibrated image-score threshold used for pred_label
    pixel_threshold: float = 0.0  # map threshold used for pred_mask
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
    # how the result was made
    path: str = ""  # "mutual" (references), "zero-shot" (in-image rarity), ...
    shots: int = 0  # reference images the expert was fitted on
    calibration: str = ""  # the rule that set the threshold, in words
    score_topk: float = 0.01  # share of top map pixels averaged into pred_score
    box_merge_px: float = 0.0  # regions closer than this (map pixels) are one box
    review_confidence: float = 0.8  # confidence below which the verdict is borderline
    reference_median: float | None = None  # median of the map (references given): how unlike the reference overall
    reference_mismatch_cut: float | None = None  # reference_median above this = reference_mismatch
    # set when the result was re-judged (lot context, sensitivity slider)
    lot_size: int | None = None  # parts in the lot whose score clusters set the threshold
    reference_threshold: float | None = None  # the references' own threshold before the lot moved it
    lot_split: float | None = None  # the split between the lot's two score clusters
    sensitivity: float = 0.0  # slider value the thresholds were moved by
    calibrated_threshold: float | None = None  # thresholds before the slider moved them
    calibrated_pixel_threshold: float | None = None
    # how the references were compared: "aligned" (registered, position by position; expert/golden.py) | "free"
    # (as a bag of patches, also when `alignment: auto` fell back) | "" (no reference)
    alignment: str = ""
    registration: Registration | None = None  # the best reference's registration (aligned, or why auto fell back)
    free_score: float | None = None  # aligned path: the free path's score and threshold, for comparison
    free_threshold: float | None = None
    # no region (verdict normal, or a flagged mask too small for a box): the strongest region had the part been
    # flagged, measured (its descriptor), so a question about the defect can be answered about the strongest
    # deviation; None when there are regions or nothing was measured
    peak: Box | None = None
    # why the verdict is borderline: "threshold" (the score lies within the threshold's uncertainty) | "coverage" (the
    # query as a whole is unlike the references: their variation cannot say whether its differences are defects);
    # "" when the verdict is not borderline
    review_reason: str = ""
    # coverage: the query's typical (median) map level over what the references' own variation reaches (<= 1: the
    # references cover this part; > 1: it differs from them almost everywhere); None when not measured
    coverage: float | None = None
    alignment_reason: str = ""  # why the path in `alignment` was taken, in words ("" when no reference)

    def __post_init__(self):
        if not self.verdict:
            self.verdict = "anomalous" if self.pred_label else "normal"
        if self.threshold_high <= 0.0:
            self.threshold_low = self.threshold_high = float(self.threshold)
        if self.verdict == "borderline" and not self.review_reason:
            self.review_reason = "threshold"

    @property
    def borderline(self) -> bool:
        return self.verdict == "borderline"

    @property
    def area_fraction(self) -> float:
        return float(self.pred_mask.mean()) if self.pred_mask.size else 0.0

    @property
    def position(self) -> str | None:
        """3x3 grid word of the predicted mask centroid (None when the mask is empty)."""
        return mask_position(self.pred_mask)

    @property
    def size(self) -> str | None:
        return size_word(self.area_fraction) if self.pred_mask.any() else None

    @property
    def severity(self) -> str:
        """Words for how far the score sits above the threshold ("normal" below it)."""
        return suspicion_word(self.pred_score, self.threshold) if self.pred_label else "normal"

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
            "review_reason": self.review_reason,
            "coverage": None if self.coverage is None else round(float(self.coverage), 4),
            "alignment": self.alignment,
            "alignment_reason": self.alignment_reason,
            "registration": self.registration.to_dict() if self.registration is not None else None,
            "peak": self.peak.to_dict() if self.peak is not None else None,
            "map_shape": list(self.anomaly_map.shape),
            "extras": self.provenance(),
        }

    def provenance(self) -> dict:
        """How the result was made (path, shots, calibration rule, lot, slider), None fields left out."""
        keys = ("shots", "score_topk", "path", "box_merge_px", "review_confidence", "calibration", "reference_median",
                "reference_mismatch_cut", "lot_size", "reference_threshold", "lot_split", "calibrated_threshold",
                "calibrated_pixel_threshold", "free_score", "free_threshold")
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.sensitivity:
            out["sensitivity"] = self.sensitivity
        return out
