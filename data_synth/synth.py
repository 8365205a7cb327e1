"""Anomaly synthesizers: a normal RGB image in, a defective image + exact binary mask + metadata out.

Public API (used by training/ and by the expert's threshold calibration):

    synthesize(image, method, rng, other=None, is_object=None, cfg=None) -> SynthResult
    METHODS  # names accepted by synthesize

Every method works on an (H, W, 3) uint8 RGB array and is driven only by `rng` (same rng state ->
same bytes). The defect is composed with a feathered alpha that is exactly zero farther than
`feather` pixels (Chebyshev) from the returned mask, so pixels outside the dilated mask are untouched.
For object images (plain background) defects land on the foreground; for textures anywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from assistant.wording import position_word, size_word

cv2.setNumThreads(1)  # determinism and fair sharing of the CPU


@dataclass
class SynthConfig:
    min_area: float = 0.001  # smallest accepted mask area (fraction of the image)
    max_area: float = 0.25  # largest accepted mask area (fraction of the image)
    min_contrast: float = 14.0  # mean max-channel |change| inside the mask (0..255) for a visible defect
    max_tries: int = 8  # attempts per sample before falling back to a stain
    patch_min: float = 0.10  # NSA / CutPaste patch side, fraction of the short image side (min)
    patch_max: float = 0.30  # NSA / CutPaste patch side (max)
    max_components: int = 3  # Perlin masks keep at most this many largest blobs
    fg_threshold: float = 28.0  # colour distance from the border median that counts as foreground


@dataclass
class SynthResult:
    image: np.ndarray  # (H, W, 3) uint8 RGB with the defect
    mask: np.ndarray  # (H, W) bool, True on defect pixels
    meta: dict = field(default_factory=dict)  # method, defect_type, bbox, area_fraction, position, size, ...


DEFECT_TYPES = {
    "nsa": "foreign patch",
    "cutpaste": "misplaced patch",
    "scar": "scar",
    "perlin": "contamination",
    "scratch": "scratch",
    "crack": "crack",
    "hole": "hole",
    "dent": "dent",
    "stain": "stain",
    "missing": "missing piece",
    "color": "color defect",
    "warp": "deformation",
}  # method -> defect type written in the texts
METHODS = list(DEFECT_TYPES)
CONTRAST_FACTOR = {"warp": 1.8, "nsa": 1.4}  # a bent texture must change more than min_contrast to read as a defect
BLENDING_METHODS = ("nsa", "cutpaste", "scar", "perlin", "stain", "color")  # alpha-composed patch/texture methods


class SynthError(ValueError):
    """Bad input to a synthesizer (message names what was expected and what came)."""


# ----------------------------------------------------------------------------------------------- helpers
def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise SynthError(f"{name}: expected a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SynthError(f"{name}: expected (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if min(image.shape[:2]) < 16:
        raise SynthError(f"{name}: expected at least 16x16 pixels, got {image.shape[1]}x{image.shape[0]}")
    return image


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


def perlin(h: int, w: int, res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise, (h, w) float32 roughly in [-1, 1]; res = lattice cells (rows, cols)."""
    ry, rx = res
    ang = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1)).astype(np.float32)
    gy, gx = np.sin(ang), np.cos(ang)
    ys = np.arange(h, dtype=np.float32) * np.float32(ry / h)
    xs = np.arange(w, dtype=np.float32) * np.float32(rx / w)
    yi, xi = ys.astype(int), xs.astype(int)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g_y = gy.take(yi + dy, axis=0).take(xi + dx, axis=1)  # (h, w) gradient of this lattice corner
        g_x = gx.take(yi + dy, axis=0).take(xi + dx, axis=1)
        return g_y * (yf - dy) + g_x * (xf - dx)

    def fade(t):
        return t * t * t * (t * (t * 6 - 15) + 10)

    u, v = fade(yf), fade(xf)
    top = corner(0, 0) * (1 - v) + corner(0, 1) * v
    bot = corner(1, 0) * (1 - v) + corner(1, 1) * v
    return ((top * (1 - u) + bot * u) * math.sqrt(2)).astype(np.float32)


def fractal_noise(h: int, w: int, rng: np.random.Generator, base: int = 2, octaves: int = 4) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        r = base * 2 ** o
        out += amp * perlin(h, w, (r, r), rng)
        total += amp
        amp *= 0.5
    return out / total


def smooth_noise(h: int, w: int, rng: np.random.Generator, cells: int = 4, octaves: int = 2) -> np.ndarray:
    """Cheap smooth value noise (bicubic-upsampled random lattices), (h, w) float32 roughly in [-1, 1]."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = cells * 2 ** o
        grid = rng.uniform(-1, 1, (c + 1, c + 1)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    return out / total


def foreign_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random colourful texture (noise, stripes, checks or speckles), (h, w, 3) uint8: the stand-in for
    DRAEM's describable-texture images, with no outside data."""
    c1 = rng.integers(0, 256, 3).astype(np.float32)
    c2 = rng.integers(0, 256, 3).astype(np.float32)
    if np.abs(c1 - c2).max() < 80:
        c2 = 255 - c1
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        t = fractal_noise(h, w, rng, base=int(rng.integers(2, 9)), octaves=4) * 1.5 + 0.5
    elif kind == 1:
        ang = rng.uniform(0, np.pi)
        f = rng.uniform(0.05, 0.4)
        warp = fractal_noise(h, w, rng, base=2, octaves=2) * rng.uniform(0, 8)
        t = 0.5 + 0.5 * np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * f + warp)
    elif kind == 2:
        s = int(rng.integers(4, 24))
        t = (((yy // s) + (xx // s)) % 2).astype(np.float32)
    else:
        t = (rng.random((h, w)) < rng.uniform(0.1, 0.5)).astype(np.float32)
        t = cv2.GaussianBlur(t, (3, 3), 0)
    t = np.clip(t, 0, 1)[..., None]
    return np.clip(c1 * (1 - t) + c2 * t, 0, 255).astype(np.uint8)


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


def _scale(image: np.ndarray) -> float:
    return min(image.shape[:2]) / 256.0


# ----------------------------------------------------------------------------------------------- methods
# Each returns (altered image, mask, feather, params) or None when this draw is unusable.
def _nsa(img, fg, is_obj, rng, other, cfg):
    h, w = img.shape[:2]
    s = min(h, w)
    src, sfg = other if other is not None else (img, fg)  # donor image and its foreground (from synthesize)
    ph = int(s * rng.uniform(cfg.patch_min, cfg.patch_max))
    pw = int(s * rng.uniform(cfg.patch_min, cfg.patch_max))
    ph, pw = max(ph, 8), max(pw, 8)
    inner = np.zeros((h, w), bool)
    inner[ph // 2 + 2:h - ph // 2 - 2, pw // 2 + 2:w - pw // 2 - 2] = True
    sy, sx = pick_point(sfg & inner if (sfg & inner).any() else inner, rng)
    dy, dx = pick_point(fg & inner if (fg & inner).any() else inner, rng)
    # paste the source patch (random flip) at the destination on a canvas, then Poisson-blend it
    # the donor region is cut with a random rotation and scale (NSA's patch transform), so the blended
    # patch breaks the local orientation / frequency of the surface instead of continuing it
    ang, zoom = rng.uniform(20, 160) * rng.choice([-1, 1]), rng.uniform(0.7, 1.4)
    m = cv2.getRotationMatrix2D((float(sx), float(sy)), ang, zoom)
    m[:, 2] += (pw / 2 - sx, ph / 2 - sy)
    patch = cv2.warpAffine(src, m, (pw, ph), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    canvas = img.copy()
    y0, x0 = dy - ph // 2, dx - pw // 2
    canvas[y0:y0 + ph, x0:x0 + pw] = patch
    blob = blob_mask(h, w, dy, dx, ph / 2 - 1, pw / 2 - 1, rng, irregular=0.2) & fg
    if blob.sum() < 16:
        return None
    m8 = blob.astype(np.uint8) * 255
    bx, by, bw, bh = cv2.boundingRect(m8)
    if bx < 1 or by < 1 or bx + bw > w - 1 or by + bh > h - 1:
        return None
    center = (bx + bw // 2, by + bh // 2)
    mode = cv2.NORMAL_CLONE if rng.random() < 0.7 else cv2.MIXED_CLONE
    cloned = cv2.seamlessClone(canvas, img, m8, center, mode)
    mask = clean(changed(img, cloned, 12.0) & blob, close=5, open_=3) & blob
    return cloned, mask, 2, {"source_center": [int(sy), int(sx)], "angle": round(float(ang), 1),
                             "zoom": round(float(zoom), 2), "clone": "normal" if mode == cv2.NORMAL_CLONE else "mixed"}


def _jitter(img: np.ndarray, rng, strength: float) -> np.ndarray:
    gain = 1 + rng.uniform(-strength, strength, 3)
    bias = rng.uniform(-40, 40) * strength
    return np.clip(img.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


def _cutpaste(img, fg, is_obj, rng, other, cfg, scar: bool = False):
    h, w = img.shape[:2]
    s = min(h, w)
    if scar:
        ph = max(2, int(s * rng.uniform(0.012, 0.04)))
        pw = int(s * rng.uniform(0.12, 0.35))
    else:
        area = (s * rng.uniform(cfg.patch_min, cfg.patch_max)) ** 2
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        ph = max(6, int(math.sqrt(area / aspect)))
        pw = max(6, int(math.sqrt(area * aspect)))
        ph, pw = min(ph, h // 2), min(pw, w // 2)
    sy, sx = pick_point(fg, rng)
    dy, dx = pick_point(fg, rng, erode=int(min(ph, pw) / 2))
    src = _jitter(img, rng, 0.5 if scar else 0.25)
    ang = rng.uniform(-180, 180) if scar else rng.uniform(-45, 45)
    m = cv2.getRotationMatrix2D((float(sx), float(sy)), ang, 1.0)
    m[:, 2] += (dx - sx, dy - sy)
    rect = np.zeros((h, w), np.uint8)
    cv2.rectangle(rect, (int(sx - pw / 2), int(sy - ph / 2)), (int(sx + pw / 2), int(sy + ph / 2)), 1, -1)
    warped = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpAffine(rect, m, (w, h), flags=cv2.INTER_NEAREST).astype(bool) & fg
    mask &= changed(img, warped, 8.0) | mask  # keep the full pasted shape (hard edge)
    return warped, mask, 1, {"angle": round(float(ang), 2), "patch_hw": [ph, pw]}


def _scar(img, fg, is_obj, rng, other, cfg):
    return _cutpaste(img, fg, is_obj, rng, other, cfg, scar=True)


def _perlin(img, fg, is_obj, rng, other, cfg):
    h, w = img.shape[:2]
    r = int(2 ** rng.integers(1, 4))
    noise = fractal_noise(h, w, rng, base=r, octaves=3)
    vals = noise[fg]
    if vals.size < 32:
        return None
    target = min(rng.uniform(0.08, 0.35) * vals.size, rng.uniform(0.01, 0.10) * h * w)  # part of the part
    q = 1 - target / vals.size
    mask = (noise > np.quantile(vals, q)) & fg
    mask = keep_largest(clean(mask, close=3, open_=3), cfg.max_components, min_pixels=int(0.0008 * h * w))
    tex = foreign_texture(h, w, rng)
    beta = rng.uniform(0.0, 0.5)
    alt = np.clip(img.astype(np.float32) * beta + tex.astype(np.float32) * (1 - beta), 0, 255).astype(np.uint8)
    return alt, mask, 2, {"beta": round(float(beta), 3), "octave_base": r}


def _walk(start, n, step, turn, rng, heading=None, jag=0.0):
    """Random walk (x, y) points: heading drifts by N(0, turn) per step; `jag` adds a sideways zig-zag."""
    y, x = start
    a = rng.uniform(0, 2 * np.pi) if heading is None else heading
    a0 = a
    pts = [(x, y)]
    for _ in range(n):
        a += rng.normal(0, turn)
        a = a0 + float(np.clip(a - a0, -0.6, 0.6))  # no loops: stay within ~35 degrees of the start heading
        y += step * math.sin(a)
        x += step * math.cos(a)
        off = rng.normal(0, jag * step)
        pts.append((x - off * math.sin(a), y + off * math.cos(a)))
    return np.array(pts, np.float32), a


def _line_defect(img, fg, rng, mode):
    h, w = img.shape[:2]
    sc = _scale(img)
    lines = []
    if mode == "scratch":
        length = min(h, w) * rng.uniform(0.15, 0.5)
        n = 24
        pts, _ = _walk(pick_point(fg, rng, erode=max(3, int(0.06 * min(h, w)))), n, length / n, 0.05, rng)
        lines.append((pts, max(1, round(rng.uniform(1, 3) * sc))))
    else:  # crack: jagged main line + branches
        length = min(h, w) * rng.uniform(0.2, 0.45)
        n = 30
        pts, a = _walk(pick_point(fg, rng, erode=max(3, int(0.06 * min(h, w)))), n, length / n, 0.2, rng, jag=0.6)
        lines.append((pts, max(2, round(rng.uniform(2, 3.5) * sc))))
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(n // 4, n))
            b, _ = _walk((pts[j, 1], pts[j, 0]), n // 3, length / n, 0.2, rng,
                         heading=a + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0), jag=0.6)
            lines.append((b, max(1, round(rng.uniform(1, 2) * sc))))
    m = np.zeros((h, w), np.uint8)
    for pts, t in lines:
        cv2.polylines(m, [np.round(pts).astype(np.int32)], False, 1, thickness=t, lineType=cv2.LINE_8)
    mask = m.astype(bool) & fg
    f = img.astype(np.float32)
    if mode == "scratch":
        if rng.random() < 0.6:  # bright metallic glint
            alt = f * 0.25 + rng.uniform(190, 255)
        else:
            alt = f * rng.uniform(0.15, 0.45)
    else:
        alt = f * rng.uniform(0.05, 0.25) + rng.uniform(0, 20)
    return np.clip(alt, 0, 255).astype(np.uint8), mask, 1, {"segments": len(lines)}


def _scratch(img, fg, is_obj, rng, other, cfg):
    return _line_defect(img, fg, rng, "scratch")


def _crack(img, fg, is_obj, rng, other, cfg):
    return _line_defect(img, fg, rng, "crack")


def _shading(h, w, cy, cx, ry, rx, light, depth_sign):
    """Lambert factor of a spherical cap (bump or pit) lit from direction `light` (angle)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (xx - cx) / rx, (yy - cy) / ry
    r2 = np.clip(u * u + v * v, 0, 1)
    z = np.sqrt(1 - r2) + 1e-3
    nx, ny = depth_sign * u / z, depth_sign * v / z
    lx, ly = math.cos(light), math.sin(light)
    return (nx * lx + ny * ly) / np.sqrt(nx * nx + ny * ny + 1)


def _sunken_ellipse(img, fg, rng, radius: tuple, aspect: tuple, irregular: float):
    """Radius, mask (H, W) bool on the foreground and Lambert shading of a pit placed on the part."""
    h, w = img.shape[:2]
    r = min(h, w) * rng.uniform(*radius)
    ry, rx = r, r * rng.uniform(*aspect)
    cy, cx = pick_point(fg, rng, erode=int(r))
    mask = blob_mask(h, w, cy, cx, ry, rx, rng, irregular=irregular) & fg
    shade = _shading(h, w, cy, cx, ry, rx, rng.uniform(0, 2 * np.pi), -1.0)
    return r, mask, shade


def _hole(img, fg, is_obj, rng, other, cfg):
    r, mask, shade = _sunken_ellipse(img, fg, rng, (0.025, 0.08), (0.7, 1.3), irregular=0.15)
    dark = rng.uniform(10, 45)
    alt = dark + 35 * np.clip(shade, -1, 1)[..., None] + np.zeros_like(img, np.float32)
    # a thin bright rim on the lit side
    ring = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    alt[ring & (shade < 0)] = np.clip(img[ring & (shade < 0)].astype(np.float32) * 1.3 + 30, 0, 255)
    return np.clip(alt, 0, 255).astype(np.uint8), mask, 1, {"radius": round(float(r), 1)}


def _dent(img, fg, is_obj, rng, other, cfg):
    r, mask, shade = _sunken_ellipse(img, fg, rng, (0.05, 0.12), (0.6, 1.4), irregular=0.1)
    k = rng.uniform(0.5, 0.9)
    factor = (rng.uniform(0.65, 0.8) + k * shade)[..., None]
    alt = np.clip(img.astype(np.float32) * factor + 25 * np.clip(shade, 0, 1)[..., None], 0, 255).astype(np.uint8)
    return alt, mask, 2, {"radius": round(float(r), 1)}


STAIN_COLORS = {"brown": (110, 70, 35), "dark oily": (30, 28, 20), "rust-coloured": (160, 75, 30),
                "whitish": (235, 232, 220), "greenish": (70, 120, 60), "bluish": (60, 80, 160)}


def _stain(img, fg, is_obj, rng, other, cfg):
    h, w = img.shape[:2]
    s = min(h, w)
    r = s * rng.uniform(0.05, 0.15)
    cy, cx = pick_point(fg, rng, erode=int(r / 2))
    mask = blob_mask(h, w, cy, cx, r, r * rng.uniform(0.6, 1.5), rng, irregular=0.5) & fg
    name = list(STAIN_COLORS)[int(rng.integers(len(STAIN_COLORS)))]
    col = np.array(STAIN_COLORS[name], np.float32)
    op = (0.6 + 0.25 * smooth_noise(h, w, rng, cells=4, octaves=2))[..., None]
    op = np.clip(op, 0.4, 0.9)
    alt = np.clip(img.astype(np.float32) * (1 - op) + col * op, 0, 255).astype(np.uint8)
    return alt, mask, 3, {"color": name}


def _missing(img, fg, is_obj, rng, other, cfg):
    h, w = img.shape[:2]
    s = min(h, w)
    r = s * rng.uniform(0.05, 0.14)
    if is_obj:
        edge = fg & ~cv2.erode(fg.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        cy, cx = pick_point(edge if edge.any() else fg, rng)
        bgmask = ~cv2.dilate(fg.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        bg = np.median(img[bgmask], axis=0) if bgmask.sum() > 16 else np.array([20, 20, 20], np.float32)
        sd = float(img[bgmask].std()) if bgmask.sum() > 16 else 2.0
        fill = bg.astype(np.float32) + rng.normal(0, min(sd, 6.0), (h, w, 1)).astype(np.float32)
    else:
        cy, cx = pick_point(fg, rng, erode=int(r / 2))
        fill = rng.uniform(5, 35) + rng.normal(0, 3, (h, w, 1)).astype(np.float32)  # backing seen through a hole
    mask = blob_mask(h, w, cy, cx, r, r * rng.uniform(0.6, 1.5), rng, irregular=0.4) & fg
    alt = np.clip(np.broadcast_to(fill, img.shape), 0, 255).astype(np.uint8)
    return alt, mask, 1, {}


def _color(img, fg, is_obj, rng, other, cfg):
    h, w = img.shape[:2]
    s = min(h, w)
    r = s * rng.uniform(0.05, 0.16)
    cy, cx = pick_point(fg, rng, erode=int(r / 2))
    mask = blob_mask(h, w, cy, cx, r, r * rng.uniform(0.5, 2.0), rng, irregular=0.3) & fg
    gain = rng.uniform(0.45, 1.6, 3)
    gain[int(rng.integers(3))] = rng.choice([0.35, 1.9])  # at least one channel clearly off
    alt = np.clip(img.astype(np.float32) * gain + rng.uniform(-25, 25, 3), 0, 255).astype(np.uint8)
    return alt, mask, 3, {"gain": [round(float(g), 2) for g in gain]}


def _warp(img, fg, is_obj, rng, other, cfg):
    h, w = img.shape[:2]
    s = min(h, w)
    rad = s * rng.uniform(0.08, 0.18)
    if is_obj and rng.random() < 0.75:
        edge = fg & ~cv2.erode(fg.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        cy, cx = pick_point(edge if edge.any() else fg, rng)
    else:
        cy, cx = pick_point(fg, rng, erode=int(rad / 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wgt = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rad * rad))
    if is_obj and rng.random() < 0.5:  # bend: shift the neighbourhood (on textures a shift looks natural)
        a = rng.uniform(0, 2 * np.pi)
        mag = rad * rng.uniform(0.35, 0.7)
        mx, my = xx - mag * math.cos(a) * wgt, yy - mag * math.sin(a) * wgt
        kind = "shift"
    else:  # twist
        th = rng.choice([-1, 1]) * rng.uniform(0.5, 1.1) * (1.0 if is_obj else 1.5) * wgt
        c, sn = np.cos(th), np.sin(th)
        mx = cx + (xx - cx) * c - (yy - cy) * sn
        my = cy + (xx - cx) * sn + (yy - cy) * c
        kind = "twist"
    alt = cv2.remap(img, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    region = np.hypot(mx - xx, my - yy) > 1.0  # moved by more than a pixel
    if is_obj:
        region &= cv2.dilate(fg.astype(np.uint8), np.ones((int(rad) | 1, int(rad) | 1), np.uint8)).astype(bool)
    mask = keep_largest(clean(changed(img, alt, 18.0) & region, close=5, open_=3), 1)
    return alt, mask, 2, {"kind": kind, "radius": round(float(rad), 1)}


_FUNCS = {"nsa": _nsa, "cutpaste": _cutpaste, "scar": _scar, "perlin": _perlin, "scratch": _scratch,
          "crack": _crack, "hole": _hole, "dent": _dent, "stain": _stain, "missing": _missing,
          "color": _color, "warp": _warp}


def contrast_in(orig: np.ndarray, out: np.ndarray, mask: np.ndarray) -> float:
    """Visibility: mean max-channel |change| inside the mask after a light blur, so that a new
    realisation of the same fine texture (invisible to a person) does not count as a defect."""
    if not mask.any():
        return 0.0
    a = cv2.GaussianBlur(orig, (5, 5), 1.5).astype(np.int16)
    b = cv2.GaussianBlur(out, (5, 5), 1.5).astype(np.int16)
    return float(np.abs(a - b).max(axis=2)[mask].mean())


def synthesize(image: np.ndarray, method: str, rng: np.random.Generator, other: np.ndarray | None = None,
               is_object: bool | None = None, cfg: SynthConfig | None = None) -> SynthResult:
    """Synthesize one anomaly of `method` on a normal RGB uint8 image.

    other: another normal image of the same source (NSA's patch donor; the image itself when None).
    is_object: True = parts on a plain background (defects on the foreground), False = texture
    (anywhere), None = decide from the image (uniform border and a 3..85% foreground).
    The mask is never empty; when no draw meets the area/visibility limits in cfg.max_tries, a stain is
    drawn instead and meta["fallback"] names the original method.
    """
    cfg = cfg or SynthConfig()
    if method not in _FUNCS:
        raise SynthError(f"unknown synthesis method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(rng, np.random.Generator):
        raise SynthError(f"rng: expected numpy.random.Generator, got {type(rng).__name__}")
    image = check_image(image)
    if other is not None:
        other = check_image(other, "other")
    fg, auto_obj = foreground_mask(image, cfg.fg_threshold)
    obj = auto_obj if is_object is None else bool(is_object)
    if not obj or not auto_obj:  # texture, or a caller-declared object without a plain border: whole image
        fg = np.ones(image.shape[:2], bool)
    h, w = image.shape[:2]
    fallback = None
    best = None
    donor = None
    if method == "nsa" and other is not None:
        o = other if other.shape == image.shape else cv2.resize(other, (w, h), interpolation=cv2.INTER_AREA)
        donor = (o, foreground_mask(o, cfg.fg_threshold)[0] if obj else np.ones((h, w), bool))
    for attempt in range(cfg.max_tries + 1):
        m = method if attempt < cfg.max_tries else "stain"
        if m != method:
            fallback = method
        got = _FUNCS[m](image, fg, obj, rng, donor if m == "nsa" else other, cfg)
        if got is None:
            continue
        alt, mask, feather, params = got
        mask = mask.astype(bool)
        area = mask.mean()
        if not mask.any():
            continue
        out = compose(image, alt, mask, feather)
        con = contrast_in(image, out, mask)
        need = cfg.min_contrast * CONTRAST_FACTOR.get(m, 1.0)
        ok = cfg.min_area <= area <= cfg.max_area and con >= need
        if ok:
            best = (m, out, mask, params, con)
            break
        if best is None or (cfg.min_area <= area <= cfg.max_area and con > best[4]):
            best = (m, out, mask, params, con)
    if best is None:  # nothing drawable (e.g. a degenerate foreground): a stain anywhere
        fg = np.ones((h, w), bool)
        alt, mask, feather, params = _stain(image, fg, False, rng, other, cfg)
        out = compose(image, alt, mask, feather)
        best, fallback = ("stain", out, mask, params, contrast_in(image, out, mask)), method
    m, out, mask, params, con = best
    stats = mask_stats(mask)
    meta = {"method": m, "requested": method, "defect_type": DEFECT_TYPES[m], **stats,
            "severity": severity_word(stats["area_fraction"], con), "contrast": round(con, 2),
            "is_object": bool(obj), "fallback": fallback, "params": params}
    return SynthResult(image=out, mask=mask, meta=meta)


def synthesize_multi(image: np.ndarray, methods: list[str], n: int, rng: np.random.Generator,
                     other: np.ndarray | None = None, is_object: bool | None = None,
                     cfg: SynthConfig | None = None) -> SynthResult:
    """`n` separate defects on one image (methods drawn from `methods`): each one after the first is kept only
    when its mask stays clear of the earlier ones (a gap of 2% of the image side), so the mask has at least
    as many connected regions as defects were kept; up to cfg.max_tries draws per extra defect.
    meta is the first defect's, with the union mask's statistics, `n_defects`, and defect_type "defect" when the
    kept defects are of different types."""
    cfg = cfg or SynthConfig()
    if n < 1:
        raise SynthError(f"synthesize_multi: expected n >= 1 defects, got {n}")
    first = synthesize(image, methods[int(rng.integers(len(methods)))], rng, other=other, is_object=is_object, cfg=cfg)
    out, union, types = first.image, first.mask.copy(), [first.meta["defect_type"]]
    gap = max(1, int(0.02 * max(image.shape[:2])))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap + 1, 2 * gap + 1))
    for _ in range(n - 1):
        for _try in range(cfg.max_tries):
            res = synthesize(out, methods[int(rng.integers(len(methods)))], rng, other=other, is_object=is_object,
                             cfg=cfg)
            if not (res.mask & (cv2.dilate(union.astype(np.uint8), kernel) > 0)).any():
                out, union = res.image, union | res.mask
                types.append(res.meta["defect_type"])
                break
    stats = mask_stats(union)
    meta = {**first.meta, **stats, "n_defects": len(types),
            "defect_type": types[0] if len(set(types)) == 1 else "defect",
            "severity": severity_word(stats["area_fraction"], first.meta["contrast"])}
    return SynthResult(image=out, mask=union, meta=meta)


def synthesize_many(normals: list[np.ndarray], n: int, rng: np.random.Generator, methods: list[str] | None = None,
                    is_object: bool | None = None, cfg: SynthConfig | None = None) -> list[SynthResult]:
    """`n` anomalies on a user's normal images (e.g. the references, for threshold calibration): image
    j % len(normals), method drawn uniformly from `methods`, NSA donor = another normal when there is one."""
    methods = list(methods or METHODS)
    if not normals:
        raise SynthError("normals: expected at least one normal image, got none")
    if n <= 0:
        raise SynthError(f"n: expected a positive number of anomalies, got {n}")
    bad = [m for m in methods if m not in _FUNCS]
    if bad:
        raise SynthError(f"unknown synthesis method(s) {bad}; expected some of {', '.join(METHODS)}")
    out = []
    for j in range(n):
        i = j % len(normals)
        other = normals[(i + 1) % len(normals)] if len(normals) > 1 else None
        m = methods[int(rng.integers(len(methods)))]
        out.append(synthesize(normals[i], m, rng, other=other, is_object=is_object, cfg=cfg))
    return out
