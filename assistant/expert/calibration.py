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
from PIL import Image, ImageOps
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
    out = np.clip(out.astype(np.float32) * rng.uniform(0.95, 1.05) + rng.uniform(-6, 6) + noise, 0, 255).astype(
        np.uint8
    )
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
    def from_dict(cls, d: dict | None) -> NullModel:
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
        raise ValueError(
            f"expert.target_overkill: expected a fraction of good parts in (0, 0.5), got {target_overkill}"
        )
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
    return ThresholdEstimate(
        threshold=t,
        sigma=sigma,
        low=low,
        high=high,
        null_median=float(math.exp(m)),
        offset=float(off),
        bootstrap_sigma=boot_sigma,
        category_sigma=float(cat_sigma),
        n_null=int(pooled.size),
        target_overkill=float(target_overkill),
        review_confidence=float(review_confidence),
    )


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


def coverage_ratio(reference_median: float | None, cut: float | None) -> float | None:
    """How far a query as a whole lies from the references: its map median (~1 where the references' own variation
    explains it) over the reference-mismatch cut fitted on synthetic parts (1% of same-kind parts lie above it);
    > 1: the query differs from the references almost everywhere. None without a median or a fitted cut."""
    if reference_median is None or not cut:
        return None
    return float(reference_median) / float(cut)


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


CALIBRATION_BETA = 0.7  # threshold position between held-out normals (0) and synthesized anomalies (1), log scale


def dihedral_views(img: Image.Image) -> list[Image.Image]:
    """The 8 rotations/flips of an image (identity first)."""
    views = []
    for flip in (False, True):
        base = ImageOps.mirror(img) if flip else img
        for rot in (0, 90, 180, 270):
            views.append(base.rotate(rot, expand=True) if rot else base)
    return views


def mild_jitter(img: Image.Image, rng: random.Random) -> Image.Image:
    """A lightly different shot of the same part: rotation within 8 degrees, 3% shift, 4% scale, brightness, noise."""
    w, h = img.size
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-8, 8), rng.uniform(0.96, 1.04))
    m[:, 2] += (rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.03) * h)
    out = cv2.warpAffine(np.asarray(img), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 2.0, out.shape)
    return Image.fromarray(np.clip(out.astype(np.float32) * rng.uniform(0.95, 1.05) + noise, 0, 255).astype(np.uint8))


def synthesize_anomaly(img: Image.Image, rng: random.Random) -> tuple[Image.Image, np.ndarray]:
    """A simple defect on a normal image for calibration: cut-paste patch, scratch or stain. -> (image, mask)."""
    w, h = img.size
    arr = np.asarray(img).copy()
    mask = np.zeros((h, w), np.uint8)
    kind = rng.choice(["cutpaste", "scratch", "stain"])
    # place defects where the image has structure (the part, not a flat background) when possible
    gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY).astype(np.float32)
    fg = np.abs(gray - np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]))) > 20
    ys, xs = np.nonzero(fg) if fg.mean() > 0.05 else np.nonzero(np.ones_like(fg))
    j = rng.randrange(len(ys))
    cy, cx = int(ys[j]), int(xs[j])
    side = int(min(w, h) * rng.uniform(0.06, 0.16))
    if kind == "cutpaste":
        sy, sx = rng.randrange(0, h - side), rng.randrange(0, w - side)
        patch = arr[sy:sy + side, sx:sx + side].copy()
        patch = np.rot90(patch, rng.randrange(4)).copy()
        patch = np.clip(patch.astype(np.float32) * rng.uniform(0.6, 1.4) + rng.uniform(-30, 30), 0, 255).astype(
            np.uint8
        )
        y0, x0 = max(0, min(h - side, cy - side // 2)), max(0, min(w - side, cx - side // 2))
        m = np.zeros((side, side), np.uint8)
        cv2.ellipse(m, (side // 2, side // 2), (side // 2 - 1, max(2, int(side / 2 * rng.uniform(0.5, 1)) - 1)),
                    rng.uniform(0, 180), 0, 360, 1, -1)
        region = arr[y0:y0 + side, x0:x0 + side]
        region[m > 0] = patch[m > 0]
        mask[y0:y0 + side, x0:x0 + side] = m
    elif kind == "scratch":
        pts = [(cx, cy)]
        for _ in range(rng.randint(2, 4)):
            px, py = pts[-1]
            a = rng.uniform(0, 2 * math.pi)
            pts.append((int(px + math.cos(a) * side), int(py + math.sin(a) * side)))
        thick = max(2, int(min(w, h) * rng.uniform(0.008, 0.02)))
        color = tuple(int(c) for c in (rng.choice([rng.uniform(0, 60), rng.uniform(190, 255)]),) * 3)
        cv2.polylines(arr, [np.array(pts, np.int32)], False, color, thick)
        cv2.polylines(mask, [np.array(pts, np.int32)], False, 1, thick)
    else:
        axes = (max(2, side // 2), max(2, int(side / 2 * rng.uniform(0.4, 1))))
        cv2.ellipse(mask, (cx, cy), axes, rng.uniform(0, 180), 0, 360, 1, -1)
        shift = np.array([rng.uniform(-70, 70) for _ in range(3)], np.float32)
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(1.0, side / 10))[..., None]
        arr = np.clip(arr.astype(np.float32) * (1 - 0.4 * soft) + soft * (shift + 40 * (rng.random() < 0.5)), 0,
                      255).astype(np.uint8)
    return Image.fromarray(arr), mask > 0


def margin_key(n_shots: int, margins: dict[str, float]) -> str | None:
    """The calibration margin for `n_shots` references: k1 for one (its held-out scores are leave-view-out), else
    the one fitted for the most references not above it ("k2", "k4", "k8", "k16"; checkpoints without k8 use k4 for
    every k >= 4, without k4 k2 for every k >= 2)."""
    if n_shots == 1:
        return "k1" if "k1" in margins else None
    fitted = sorted(int(k[1:]) for k in margins if k[:1] == "k" and k[1:].isdigit() and 2 <= int(k[1:]) <= n_shots)
    return f"k{fitted[-1]}" if fitted else None


def batch_split(scores: np.ndarray) -> float:
    """Threshold between the two k-means clusters of log image scores (midpoint of the gap between them)."""
    from sklearn.cluster import KMeans

    x = np.log(np.clip(np.asarray(scores, np.float64), 1e-6, None)).reshape(-1, 1)
    if len(x) < 2 or np.ptp(x) == 0:
        return float(np.max(scores)) if len(x) else 0.0
    lab = KMeans(2, n_init=4, random_state=0).fit_predict(x)
    hi = lab[int(np.argmax(x))]
    return float(np.exp((x[lab != hi].max() + x[lab == hi].min()) / 2))
