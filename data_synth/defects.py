"""The defect synthesizers, one function per method, and their registry `DEFECTS`.

Each draw function takes (image (H, W, 3) uint8, foreground (H, W) bool, is_object, rng, other, cfg) and returns
(altered image, mask (H, W) bool, feather in pixels, params dict), or None when this draw is unusable; `other` is
NSA's (donor image, donor foreground) and cfg a SynthConfig. `synthesize` (synth.py) composes the altered image
into the original along the feathered mask and checks area and visibility.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from data_synth.masks import blob_mask, changed, clean, keep_largest, pick_point
from data_synth.noise import foreign_texture, fractal_noise, smooth_noise

cv2.setNumThreads(1)  # determinism and fair sharing of the CPU


def _scale(image: np.ndarray) -> float:
    return min(image.shape[:2]) / 256.0


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


def _blob_on_part(img, fg, rng, radius: tuple, aspect: tuple, irregular: float) -> np.ndarray:
    """(H, W) bool blob on the foreground: radius r drawn in `radius` x the short side, centre at least r / 2 inside
    the part, second radius r x a draw in `aspect`."""
    h, w = img.shape[:2]
    r = min(h, w) * rng.uniform(*radius)
    cy, cx = pick_point(fg, rng, erode=int(r / 2))
    return blob_mask(h, w, cy, cx, r, r * rng.uniform(*aspect), rng, irregular=irregular) & fg


def _stain(img, fg, is_obj, rng, other, cfg):
    h, w = img.shape[:2]
    mask = _blob_on_part(img, fg, rng, (0.05, 0.15), (0.6, 1.5), irregular=0.5)
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
    mask = _blob_on_part(img, fg, rng, (0.05, 0.16), (0.5, 2.0), irregular=0.3)
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


@dataclass(frozen=True)
class Defect:
    draw: Callable  # (image, foreground, is_object, rng, other, cfg) -> (altered, mask, feather, params) or None
    defect_type: str  # what the texts call the defect
    contrast_factor: float = 1.0  # x min_contrast needed to count as visible (a bent texture must change more)
    blending: bool = False  # alpha-composed patch or texture (the others paint, cut or deform)


# method name -> Defect; the order is the order of METHODS
DEFECTS = {
    "nsa": Defect(_nsa, "foreign patch", contrast_factor=1.4, blending=True),
    "cutpaste": Defect(_cutpaste, "misplaced patch", blending=True),
    "scar": Defect(_scar, "scar", blending=True),
    "perlin": Defect(_perlin, "contamination", blending=True),
    "scratch": Defect(_scratch, "scratch"),
    "crack": Defect(_crack, "crack"),
    "hole": Defect(_hole, "hole"),
    "dent": Defect(_dent, "dent"),
    "stain": Defect(_stain, "stain", blending=True),
    "missing": Defect(_missing, "missing piece"),
    "color": Defect(_color, "color defect", blending=True),
    "warp": Defect(_warp, "deformation", contrast_factor=1.8),
}
METHODS = list(DEFECTS)
DEFECT_TYPES = {m: d.defect_type for m, d in DEFECTS.items()}  # method -> defect type written in the texts
BLENDING_METHODS = tuple(m for m, d in DEFECTS.items() if d.blending)  # alpha-composed patch/texture methods
