"""Verdict thresholds from the statistics of normal variation, with an honest review band.

The references are scored as if they were new parts (`null scores`): with k >= 2 references, each reference and a
few camera views of it (small shift, rotation, scale, brightness, blur, noise) against the bank of the *other*
references; with one reference, camera views of it against the bank of its other rotations/flips. Their median
log score `m` locates the normal scores of this part. How far above `m` new good parts of a kind score is
measured offline on synthetic categories, on their *normal* samples only (`NullModel`: pooled quantiles of
log(new normal score) - m per reference count); the image threshold is

    T = exp(m + offset_k(1 - target_overkill))

so about `target_overkill` of good parts score above it. No defect is synthesized for it, and more references
estimate `m` better instead of raising a maximum.

The threshold is uncertain: `m` by the sampling of references/views (bootstrap), the offset by how much it
differs between kinds of part (its spread across the synthetic categories). Both add up in `sigma` (log scale).
A score within the central `review_confidence` interval of the threshold's uncertainty is `borderline`: a person
should check it; `confidence` is the probability that the verdict does not flip under that uncertainty.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from PIL import Image
from scipy.stats import norm

VERDICTS = ("normal", "borderline", "anomalous")
NULL_LEVELS = tuple(round(x, 3) for x in np.linspace(0.5, 0.99, 50))  # quantile levels a NullModel stores
CAMERA_MARGIN = 9  # pixels eroded from the warped area of a camera view: its border is not scored


def camera_view(img: Image.Image, rng: random.Random) -> tuple[Image.Image, np.ndarray]:
    """Another shot of the same part, as a camera in the same fixture would take it: rotation within 5 degrees,
    3% shift, -3..+5% scale, brightness/offset, sensor noise, sometimes a slight blur. -> (view, (H, W) bool mask
    of the pixels that come from the image; the border filled by reflection is not scored)."""
    w, h = img.size
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-5, 5), rng.uniform(0.97, 1.05))
    m[:, 2] += (rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.03) * h)
    out = cv2.warpAffine(np.asarray(img.convert("RGB")), m, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    valid = cv2.warpAffine(np.ones((h, w), np.uint8), m, (w, h), flags=cv2.INTER_NEAREST,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    valid = cv2.erode(valid, np.ones((CAMERA_MARGIN, CAMERA_MARGIN), np.uint8)) > 0
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 2.0, out.shape)
    out = np.clip(out.astype(np.float32) * rng.uniform(0.95, 1.05) + rng.uniform(-6, 6) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.0))
    return Image.fromarray(out), valid


def masked_map(amap: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A map whose pixels outside `valid` (resized to the map) are set to the median of the valid ones."""
    if valid.shape != amap.shape:
        valid = cv2.resize(valid.astype(np.uint8), amap.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    if not valid.any():
        return amap
    out = amap.copy()
    out[~valid] = np.median(amap[valid])
    return out


def _phi(x: float) -> float:
    return float(norm.cdf(x))


def _z(p: float) -> float:
    return float(norm.ppf(p))


@dataclass
class NullModel:
    """How far above the references' null median new good parts score, per reference count (fitted offline on
    the normal samples of synthetic categories by `python -m training expert`; stored in the expert config).

    offsets["k1"][i]: the NULL_LEVELS[i] quantile of log(score of a new normal part) - m, pooled over categories
    (each category's m from its own references). spread["k1"]: the standard deviation across categories of their
    own (1 - target) quantile offset, the part of the threshold's uncertainty that no reference can remove."""

    offsets: dict[str, list[float]] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    levels: list[float] = field(default_factory=lambda: list(NULL_LEVELS))
    categories: int = 0  # synthetic categories it was fitted on

    @property
    def fitted(self) -> bool:
        return bool(self.offsets)

    def _keys(self, k: int) -> tuple[str, str, float]:
        """The two fitted reference counts around k and the weight of the upper one (interpolated in log k)."""
        ks = sorted(int(x[1:]) for x in self.offsets)
        if k <= ks[0]:
            return f"k{ks[0]}", f"k{ks[0]}", 0.0
        if k >= ks[-1]:
            return f"k{ks[-1]}", f"k{ks[-1]}", 0.0
        hi = next(x for x in ks if x >= k)
        lo = max(x for x in ks if x <= k)
        if hi == lo:
            return f"k{lo}", f"k{lo}", 0.0
        return f"k{lo}", f"k{hi}", (math.log(k) - math.log(lo)) / (math.log(hi) - math.log(lo))

    def offset(self, k: int, level: float) -> float:
        lo, hi, w = self._keys(k)
        at = [float(np.interp(level, self.levels, self.offsets[key])) for key in (lo, hi)]
        return (1 - w) * at[0] + w * at[1]

    def category_sigma(self, k: int) -> float:
        lo, hi, w = self._keys(k)
        return (1 - w) * self.spread.get(lo, 0.0) + w * self.spread.get(hi, 0.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "NullModel":
        if not d:
            return cls()
        return cls(offsets={k: [float(x) for x in v] for k, v in d.get("offsets", {}).items()},
                   spread={k: float(v) for k, v in d.get("spread", {}).items()},
                   levels=[float(x) for x in d.get("levels", NULL_LEVELS)], categories=int(d.get("categories", 0)))


# Without a fitted NullModel (untrained experts, tests): new parts are assumed to vary like the null samples
# themselves (offset = z * their log spread, spread floored) and the offset is taken as uncertain by this much.
UNFITTED_MIN_SPREAD = 0.05
UNFITTED_CATEGORY_SIGMA = 0.15


@dataclass
class ThresholdEstimate:
    threshold: float  # image-score threshold: about target_overkill of good parts score above it
    sigma: float  # its uncertainty, log scale (bootstrap and across-kind parts together)
    low: float  # below: normal with at least review_confidence
    high: float  # above: anomalous with at least review_confidence; between low and high: borderline
    null_median: float  # median null score of the references (new-part stand-ins)
    offset: float  # log(threshold / null_median)
    bootstrap_sigma: float  # uncertainty of log(null_median) from the references/views drawn
    category_sigma: float  # uncertainty of the offset across kinds of part
    n_null: int  # null scores used
    target_overkill: float
    review_confidence: float

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def estimate_threshold(groups: list[np.ndarray], k: int, model: NullModel, target_overkill: float,
                       review_confidence: float, n_boot: int = 200, seed: int = 0) -> ThresholdEstimate:
    """Threshold and review band from null image scores. `groups`: one array per independent unit that can be
    resampled (a reference with its views when k >= 2; one camera view when k = 1)."""
    if not 0.0 < target_overkill < 0.5:
        raise ValueError(f"expert.target_overkill: expected a fraction of good parts in (0, 0.5), got {target_overkill}")
    if not 0.5 <= review_confidence < 1.0:
        raise ValueError(f"expert.review_confidence: expected a probability in [0.5, 1), got {review_confidence}")
    logs = [np.log(np.clip(np.asarray(g, np.float64), 1e-6, None)) for g in groups if len(g)]
    if not logs:
        raise ValueError("estimate_threshold: expected at least one null score, got none")
    pooled = np.concatenate(logs)
    m = float(np.median(pooled))
    rng = np.random.default_rng(seed)
    boots = [np.median(np.concatenate([logs[i] for i in rng.integers(0, len(logs), len(logs))])) for _ in range(n_boot)]
    boot_sigma = float(np.std(boots)) if len(logs) > 1 else 0.0
    level = 1.0 - target_overkill
    if model.fitted:
        off, cat_sigma = model.offset(k, level), model.category_sigma(k)
    else:
        spread = max(float(np.std(pooled)), UNFITTED_MIN_SPREAD)
        off, cat_sigma = _z(level) * spread, UNFITTED_CATEGORY_SIGMA
    sigma = math.sqrt(boot_sigma ** 2 + cat_sigma ** 2)
    t = float(math.exp(m + off))
    low, high = review_band(t, sigma, review_confidence)
    return ThresholdEstimate(threshold=t, sigma=sigma, low=low, high=high, null_median=float(math.exp(m)), offset=float(off),
                             bootstrap_sigma=boot_sigma, category_sigma=float(cat_sigma), n_null=int(pooled.size),
                             target_overkill=float(target_overkill), review_confidence=float(review_confidence))


def review_band(threshold: float, sigma: float, review_confidence: float) -> tuple[float, float]:
    """(low, high): the scores whose verdict is less sure than `review_confidence` (borderline) lie between them."""
    if sigma <= 0 or threshold <= 0:
        return float(threshold), float(threshold)
    half = _z(0.5 + review_confidence / 2.0) * sigma
    return float(threshold * math.exp(-half)), float(threshold * math.exp(half))


def judge(score: float, threshold: float, sigma: float, review_confidence: float) -> tuple[str, float]:
    """(verdict, confidence) of one image score: confidence = the probability that the binary verdict at the
    threshold would not flip if the threshold were drawn from its uncertainty (log-normal, sigma); below
    `review_confidence` the verdict is "borderline"."""
    if sigma <= 0 or threshold <= 0 or score <= 0:
        label = score > threshold
        return ("anomalous" if label else "normal"), 1.0
    d = (math.log(score) - math.log(threshold)) / sigma
    conf = _phi(abs(d))
    if conf < review_confidence:
        return "borderline", conf
    return ("anomalous" if d > 0 else "normal"), conf


def fit_null_model(per_category: dict[str, dict[int, list[np.ndarray]]], target_overkill: float) -> NullModel:
    """NullModel from synthetic categories: per_category[name][k] = list of arrays of log(new normal score) - m, one
    per reference draw. Offsets are pooled quantiles over all categories; spread is the standard deviation of each
    category's own (1 - target_overkill) quantile."""
    offsets, spread = {}, {}
    ks = sorted({k for d in per_category.values() for k in d})
    for k in ks:
        per = [np.concatenate(d[k]) for d in per_category.values() if k in d and len(d[k])]
        if not per:
            continue
        pooled = np.concatenate(per)
        offsets[f"k{k}"] = [float(np.quantile(pooled, q)) for q in NULL_LEVELS]
        own = [float(np.quantile(x, 1.0 - target_overkill)) for x in per]
        spread[f"k{k}"] = float(np.std(own)) if len(own) > 1 else 0.0
    return NullModel(offsets=offsets, spread=spread, categories=len(per_category))
