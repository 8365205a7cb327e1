"""Mask geometry of the synthesizers: the part's foreground, blob shapes and points on it, feathered composition,
mask cleanup, and a defect's statistics (bbox, area, components, position/size/severity words, visibility)."""
from __future__ import annotations

import math

import cv2
import numpy as np

from assistant.wording import position_word, size_word

cv2.setNumThreads(1)  # determinism and fair sharing of the CPU


def foreground_mask(image: np.ndarray, threshold: float = 28.0) -> tuple[np.ndarray, bool]:
    """(foreground bool (H, W), is_object). Foreground = pixels far (Otsu on the colour distance, at least
    `threshold`) from the border's median colour. It is an object when that foreground covers 3..85% of
    the image and touches under 10% of the border; regions that touch the border (a bench edge, a strip)
    are dropped when a free-standing region of 3%+ remains. Textures: the whole image."""
    h, w = image.shape[:2]
    b = max(2, min(h, w) // 32)
    border = np.concatenate([image[:b].reshape(-1, 3), image[-b:].reshape(-1, 3),
                             image[:, :b].reshape(-1, 3), image[:, -b:].reshape(-1, 3)]).astype(np.float32)
    bg = np.median(border, axis=0)
    blur = cv2.GaussianBlur(image, (5, 5), 0).astype(np.float32)
    dist = np.abs(blur - bg).max(axis=2)  # (H, W) colour distance to the background
    d8 = np.clip(dist, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(d8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = (dist > max(threshold, float(otsu))).astype(np.uint8)
    ks = max(3, round(5 * min(h, w) / 256) | 1)
    k = np.ones((ks, ks), np.uint8)
    fg = cv2.morphologyEx(cv2.morphologyEx(fg, cv2.MORPH_OPEN, k), cv2.MORPH_CLOSE, k)
    ring = np.ones((h, w), bool)
    ring[1:-1, 1:-1] = False
    if float(fg[ring].mean()) > 0.35:  # the "foreground" runs along the border: a texture
        return np.ones((h, w), bool), False
    n, lab, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n > 2:
        x0, y0 = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
        x1, y1 = x0 + stats[1:, cv2.CC_STAT_WIDTH], y0 + stats[1:, cv2.CC_STAT_HEIGHT]
        touches = (x0 == 0) | (y0 == 0) | (x1 == w) | (y1 == h)
        free = ~touches & (stats[1:, cv2.CC_STAT_AREA] >= 0.03 * h * w)
        if free.any():
            fg = np.isin(lab, np.flatnonzero(~touches) + 1).astype(np.uint8)
            areas = stats[1:, cv2.CC_STAT_AREA][~touches]
        else:
            areas = stats[1:, cv2.CC_STAT_AREA]
    else:
        areas = stats[1:, cv2.CC_STAT_AREA]
    frac = float(fg.mean())
    compact = areas.size > 0 and areas.max() >= 0.6 * areas.sum()  # one main part, not a scatter of blobs
    # the part must stand out from the background far more than the background varies along the border
    spread = float(np.percentile(np.abs(border - bg).max(axis=1), 75))
    distinct = bool(fg.any()) and float(np.median(dist[fg.astype(bool)])) > max(threshold, 2.5 * spread)
    is_object = 0.03 < frac < 0.85 and float(fg[ring].mean()) < 0.10 and bool(compact) and distinct
    return (fg.astype(bool) if is_object else np.ones((h, w), bool)), is_object


def blob_mask(h: int, w: int, cy: float, cx: float, ry: float, rx: float, rng: np.random.Generator,
              irregular: float = 0.25) -> np.ndarray:
    """Irregular ellipse (random low harmonics on the radius), (h, w) bool."""
    ang = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = (dx * math.cos(ang) + dy * math.sin(ang)) / max(rx, 1.0)
    v = (-dx * math.sin(ang) + dy * math.cos(ang)) / max(ry, 1.0)
    theta = np.arctan2(v, u)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += irregular / k * rng.uniform(-1, 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return (u * u + v * v) < r * r


def pick_point(region: np.ndarray, rng: np.random.Generator, erode: int = 0) -> tuple[int, int]:
    """A random (y, x) inside `region` (eroded when it stays non-empty)."""
    m = region
    if erode > 0:
        e = cv2.erode(region.astype(np.uint8), np.ones((2 * erode + 1, 2 * erode + 1), np.uint8),
                      borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)  # keep off the image edge too
        if e.any():
            m = e
    idx = np.flatnonzero(m)
    if idx.size == 0:
        h, w = region.shape
        return h // 2, w // 2
    j = int(idx[rng.integers(idx.size)])
    return j // region.shape[1], j % region.shape[1]


def compose(orig: np.ndarray, altered: np.ndarray, mask: np.ndarray, feather: int) -> np.ndarray:
    """orig outside, altered inside the mask, a box-limited Gaussian ramp of `feather` px in between."""
    a = mask.astype(np.float32)
    if feather > 0:
        k = 2 * feather + 1
        a = np.maximum(cv2.GaussianBlur(a, (k, k), feather / 1.5, borderType=cv2.BORDER_CONSTANT), a)
    a = a[..., None]
    out = orig.astype(np.float32) * (1 - a) + altered.astype(np.float32) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def changed(orig: np.ndarray, altered: np.ndarray, thr: float) -> np.ndarray:
    d = np.abs(orig.astype(np.int16) - altered.astype(np.int16)).max(axis=2).astype(np.float32)
    return cv2.GaussianBlur(d, (3, 3), 0) > thr


def clean(mask: np.ndarray, close: int = 3, open_: int = 0) -> np.ndarray:
    m = mask.astype(np.uint8)
    if close:
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, np.ones((close, close), np.uint8))
    if open_:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((open_, open_), np.uint8))
    return m.astype(bool)


def keep_largest(mask: np.ndarray, k: int, min_pixels: int = 4) -> np.ndarray:
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(-areas, kind="stable")[:k]
    keep = [i + 1 for i in order if areas[i] >= min_pixels]
    return np.isin(lab, keep)


def mask_stats(mask: np.ndarray) -> dict:
    """bbox [x0, y0, x1, y1] (exclusive ends), area_fraction, n_components, position and size words."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return {"bbox": None, "area_fraction": 0.0, "n_components": 0, "position": None, "size": None}
    n = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1
    area = float(ys.size / (h * w))
    return {
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
        "area_fraction": round(area, 6),
        "n_components": int(n),
        "position": position_word(ys.mean() / h, xs.mean() / w),
        "size": size_word(area),
    }


def severity_word(area_fraction: float, contrast: float) -> str:
    """minor / moderate / severe from how large and how visible the defect is."""
    s = 0.6 * min(1.0, math.sqrt(area_fraction / 0.08)) + 0.4 * min(1.0, contrast / 90.0)
    return "minor" if s < 0.4 else "moderate" if s < 0.65 else "severe"


def contrast_in(orig: np.ndarray, out: np.ndarray, mask: np.ndarray) -> float:
    """Visibility: mean max-channel |change| inside the mask after a light blur, so that a new
    realisation of the same fine texture (invisible to a person) does not count as a defect."""
    if not mask.any():
        return 0.0
    a = cv2.GaussianBlur(orig, (5, 5), 1.5).astype(np.int16)
    b = cv2.GaussianBlur(out, (5, 5), 1.5).astype(np.int16)
    return float(np.abs(a - b).max(axis=2)[mask].mean())
