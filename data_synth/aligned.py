"""Aligned pairs for golden-template inspection: a golden part, and a query that is the golden slightly misregistered
and relit, with (for anomalous pairs) one defect of known polarity and an exact mask.

    golden = render_golden("board", 128, seed)        # or golden_from_image(pil_image, kind="board")
    pair = make_pair(golden, np.random.default_rng(0), AlignedConfig())   # -> AlignedPair

A golden (data_synth.goldens) comes in layers: `base`, `ink` and `material`. A "missing" defect paints the base over
material, an "extra" one paints the ink over base, so a defect looks like the part, not like a stain. The query is
the warped golden; the defect is drawn in query coordinates, then the photometric change is applied to the whole
query. The mask is the defect's shape where it changed the warped image (before the photometric change, which
touches every pixel): a shape that changes nothing is placed again. Everything is driven by the Generator passed in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from assistant.wording import DEFECT_CHANGES
from data_synth.goldens import KIND_NOUNS, KIND_TYPES, KINDS, Golden, golden_from_image, render_golden
from data_synth.masks import blob_mask

__all__ = ["KINDS", "KIND_NOUNS", "KIND_TYPES", "SHAPES", "AlignedConfig", "AlignedPair", "Golden",
           "golden_from_image", "make_pair", "render_golden"]

cv2.setNumThreads(1)  # determinism and fair sharing of the CPU


@dataclass
class AlignedConfig:
    anomaly_ratio: float = 0.5  # P(anomalous) when make_pair is not told
    max_shift: float = 3.0  # largest misregistration per axis, pixels
    max_rotation: float = 1.0  # largest rotation, degrees
    gain: float = 0.08  # photometric gain drawn in 1 +- gain
    offset: float = 8.0  # photometric offset drawn in +- offset (0..255)
    noise: float = 3.0  # largest sensor-noise sigma (0..255)
    blur: float = 0.8  # largest Gaussian blur sigma (pixels); applied to half the queries
    change_threshold: float = 24.0  # max-channel |change| (0..255) for a pixel to count as changed by a defect
    min_area: float = 0.0002  # smallest defect, fraction of the image (at least 4 pixels)
    max_tries: int = 24  # placements of a defect type before another type is tried


@dataclass
class AlignedPair:
    golden: Image.Image  # RGB golden sample
    query: Image.Image  # RGB query: golden misregistered, relit, with the defect when label == 1
    mask: np.ndarray  # (H, W) uint8 0/255 in query coordinates; all zeros for a normal pair
    label: int  # 0 normal, 1 anomalous
    change: str  # "missing" | "extra" | "" (normal)
    defect_type: str  # open, mousebite, pin_hole, short, spur, spurious_copper, missing_print, ... | ""
    shift: tuple[float, float]  # (dx, dy) translation of the golden -> query warp, pixels
    rotation: float  # degrees, counter-clockwise about the image centre
    warp: np.ndarray = field(repr=False)  # (2, 3) float32 affine: golden pixel -> query pixel
    ink: tuple[int, int, int] = (0, 0, 0)  # the material's colour in the golden (before the photometric change)


@dataclass
class _Scene:
    """The warped golden's material in query coordinates, with what the defect shapes look up."""

    material: np.ndarray  # (H, W) bool
    region: np.ndarray  # (H, W) bool: where defects may land
    inside: np.ndarray  # (H, W) float32 distance to the nearest non-material pixel (0 off material)
    outside: np.ndarray  # (H, W) float32 distance to the nearest material pixel (0 on material)
    labels: np.ndarray  # (H, W) int32 connected pieces of material (0 = none): traces, pads, bars
    grad: tuple[np.ndarray, np.ndarray]  # (gx, gy) of the smoothed material: points into the material
    u: float  # drawing unit (pixels)

    @property
    def edge(self) -> np.ndarray:
        return self.material & (self.inside < 1.5) & self.region


def _scene(material: np.ndarray, region: np.ndarray) -> _Scene:
    m8 = material.astype(np.uint8)
    soft = cv2.GaussianBlur(m8.astype(np.float32), (0, 0), 1.5)
    grad = (cv2.Sobel(soft, cv2.CV_32F, 1, 0), cv2.Sobel(soft, cv2.CV_32F, 0, 1))
    return _Scene(material, region, cv2.distanceTransform(m8, cv2.DIST_L2, 3),
                  cv2.distanceTransform(1 - m8, cv2.DIST_L2, 3), cv2.connectedComponents(m8, connectivity=8)[1],
                  grad, material.shape[0] / 64.0)


def _choose(where: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A random (x, y) inside `where`, None when it is empty."""
    idx = np.flatnonzero(where)
    if idx.size == 0:
        return None
    j = int(idx[rng.integers(idx.size)])
    return j % where.shape[1], j // where.shape[1]


def _line(shape: tuple, p: tuple, q: tuple, width: float) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    cv2.line(out, (round(p[0]), round(p[1])), (round(q[0]), round(q[1])), 1, max(1, round(width)))
    return out.astype(bool)


def _disk(shape: tuple, c: tuple, r: float) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    cv2.circle(out, (round(c[0]), round(c[1])), max(1, round(r)), 1, -1)
    return out.astype(bool)


def _outward(sc: _Scene, p: tuple) -> tuple[float, float] | None:
    """Unit normal at an edge point pointing out of the material (None where the material is flat)."""
    gx, gy = float(sc.grad[0][p[1], p[0]]), float(sc.grad[1][p[1], p[0]])
    n = math.hypot(gx, gy)
    return (-gx / n, -gy / n) if n > 1e-6 else None


def _reach(sc: _Scene, p: tuple, d: tuple, limit: float) -> float:
    """How far the material runs from p along direction d (pixels, up to limit)."""
    h, w = sc.material.shape
    t = 0.0
    while t < limit:
        x, y = round(p[0] + (t + 0.5) * d[0]), round(p[1] + (t + 0.5) * d[1])
        if not (0 <= x < w and 0 <= y < h and sc.material[y, x]):
            break
        t += 0.5
    return t


def _open(sc: _Scene, rng: np.random.Generator) -> np.ndarray | None:
    """A cut across a thin trace: a band along the direction in which the trace is narrowest."""
    p = _choose(sc.material & sc.region & (sc.inside >= 1), rng)
    if p is None:
        return None
    dirs = [(math.cos(a), math.sin(a)) for a in np.arange(8) * math.pi / 8]
    runs = [(_reach(sc, p, d, 8 * sc.u), _reach(sc, p, (-d[0], -d[1]), 8 * sc.u), d) for d in dirs]
    a, b, d = min(runs, key=lambda r: r[0] + r[1])
    if a + b > 3.5 * sc.u:  # a pad or a wide pour, not a trace
        return None
    ends = ((p[0] + (a + 1) * d[0], p[1] + (a + 1) * d[1]), (p[0] - (b + 1) * d[0], p[1] - (b + 1) * d[1]))
    return _line(sc.material.shape, *ends, max(2.0, rng.uniform(1.0, 2.0) * sc.u))


def _bite(sc: _Scene, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray | None:
    """A disk centred just off the material's edge: a bite out of a trace (mousebite) or a plate (missing_part)."""
    p = _choose(sc.edge, rng)
    n = None if p is None else _outward(sc, p)
    if n is None:
        return None
    r = max(1.5, rng.uniform(lo, hi) * sc.u)
    return _disk(sc.material.shape, (p[0] + 0.3 * r * n[0], p[1] + 0.3 * r * n[1]), r)


def _pin_hole(sc: _Scene, rng: np.random.Generator) -> np.ndarray | None:
    """A small hole wholly inside copper (a pad or a wide trace)."""
    r = max(1.0, rng.uniform(0.6, 1.1) * sc.u)
    p = _choose(sc.material & sc.region & (sc.inside >= r + 1.5), rng)
    return None if p is None else _disk(sc.material.shape, p, r)


def _short(sc: _Scene, rng: np.random.Generator) -> np.ndarray | None:
    """A bridge from an edge point of one piece of copper to the nearest point of another, over a narrow gap."""
    p = _choose(sc.edge, rng)
    if p is None:
        return None
    ys, xs = np.nonzero((sc.labels > 0) & (sc.labels != sc.labels[p[1], p[0]]))
    if ys.size == 0:
        return None
    d = np.hypot(xs - p[0], ys - p[1])
    k = int(np.argmin(d))
    if not 2.0 <= d[k] <= 8 * sc.u:
        return None
    return _line(sc.material.shape, p, (xs[k], ys[k]), max(2.0, rng.uniform(1.0, 1.8) * sc.u))


def _spur(sc: _Scene, rng: np.random.Generator) -> np.ndarray | None:
    """A thin protrusion out of a trace's edge that stops short of any other copper."""
    p = _choose(sc.edge, rng)
    n = None if p is None else _outward(sc, p)
    if n is None:
        return None
    length, width = rng.uniform(2.0, 4.0) * sc.u, max(2.0, rng.uniform(0.8, 1.3) * sc.u)
    shape = _line(sc.material.shape, p, (p[0] + length * n[0], p[1] + length * n[1]), width)
    near = cv2.dilate(shape.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    own = sc.labels[p[1], p[0]]
    return None if (near & (sc.labels > 0) & (sc.labels != own)).any() else shape


def _blob(sc: _Scene, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray | None:
    """An irregular blob of material on free background: spurious copper, debris."""
    r = rng.uniform(lo, hi) * sc.u
    p = _choose(~sc.material & sc.region & (sc.outside >= max(1.0, 0.6 * r)), rng)
    if p is None:
        return None
    h, w = sc.material.shape
    return blob_mask(h, w, p[1], p[0], max(1.0, r * rng.uniform(0.6, 1.0)), max(1.0, r), rng)


def _patch(sc: _Scene, rng: np.random.Generator) -> np.ndarray | None:
    """An irregular blob over print: part of a mark erased."""
    p = _choose(sc.material & sc.region, rng)
    if p is None:
        return None
    h, w = sc.material.shape
    r = rng.uniform(1.5, 3.0) * sc.u
    return blob_mask(h, w, p[1], p[0], r * rng.uniform(0.6, 1.0), r, rng)


def _stroke(sc: _Scene, rng: np.random.Generator) -> np.ndarray | None:
    """A stray ink stroke on the paper."""
    p = _choose(~sc.material & sc.region & (sc.outside >= 2 * sc.u), rng)
    if p is None:
        return None
    a, length = rng.uniform(0, math.pi), rng.uniform(3.0, 8.0) * sc.u
    q = (p[0] + length * math.cos(a), p[1] + length * math.sin(a))
    return _line(sc.material.shape, p, q, max(1.0, rng.uniform(0.6, 1.2) * sc.u)) & sc.region


SHAPES = {  # defect_type -> shape drawer (polarity: assistant.wording.DEFECT_CHANGES)
    "open": _open, "mousebite": lambda sc, rng: _bite(sc, rng, 0.8, 1.4), "pin_hole": _pin_hole,
    "short": _short, "spur": _spur, "spurious_copper": lambda sc, rng: _blob(sc, rng, 1.2, 2.5),
    "missing_print": _patch, "extra_print": _stroke,
    "missing_part": lambda sc, rng: _bite(sc, rng, 2.0, 4.0), "debris": lambda sc, rng: _blob(sc, rng, 1.0, 2.0),
}


def _defect(g: Golden, warp, image: np.ndarray, rng: np.random.Generator,
            cfg: AlignedConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """(query with one defect, (H, W) bool mask of the pixels it changed, defect_type), drawn on the warped golden
    `image`. A type is drawn from the kind's vocabulary; a placement that changes too little is drawn again, and a
    type that cannot be placed in cfg.max_tries gives way to the kind's other types."""
    sc = _scene(warp(g.material.astype(np.float32)) > 0.5, warp(g.region.astype(np.float32)) > 0.5)
    layers = {"missing": warp(g.base), "extra": warp(g.ink)}  # what a missing / extra defect paints
    types = KIND_TYPES[g.kind]
    first = types[int(rng.integers(len(types)))]
    min_px = max(4, cfg.min_area * image.shape[0] * image.shape[1])
    for t in (first, *(t for t in types if t != first)):
        layer = layers[DEFECT_CHANGES[t]]
        diff = np.abs(layer.astype(np.int16) - image.astype(np.int16)).max(axis=2)
        for _ in range(cfg.max_tries):
            shape = SHAPES[t](sc, rng)
            changed = None if shape is None else shape & (diff > cfg.change_threshold)
            if changed is not None and changed.sum() >= min_px:
                return np.where(changed[..., None], layer, image), changed, t
    raise ValueError(f"no {g.kind} defect changes the golden by {cfg.change_threshold} grey levels anywhere "
                     "(is the golden a plain image?)")


def _photometric(image: np.ndarray, rng: np.random.Generator, cfg: AlignedConfig) -> np.ndarray:
    """Gain, offset, an occasional slight blur and sensor noise: another shot under slightly other light."""
    gain, offset = 1 + rng.uniform(-cfg.gain, cfg.gain), rng.uniform(-cfg.offset, cfg.offset)
    sigma, blur = rng.uniform(0, cfg.noise), rng.uniform(0.3, cfg.blur) if rng.random() < 0.5 else 0.0
    x = image.astype(np.float32) * gain + offset
    if blur > 0:
        x = cv2.GaussianBlur(x, (0, 0), blur)
    x += rng.standard_normal(x.shape, np.float32) * sigma
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def lay(image: np.ndarray, warp: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` moved by the (2, 3) affine `warp` (golden pixel -> query pixel) onto a (w, h) `size` canvas, edges
    replicated: how a query is made from its golden, and how the golden is laid over the query to compare them."""
    return cv2.warpAffine(image, warp, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def make_pair(golden: Golden | Image.Image, rng: np.random.Generator, cfg: AlignedConfig | None = None,
              anomalous: bool | None = None) -> AlignedPair:
    """An aligned pair from a golden (a `Golden`, or a user's PIL image taken as a board unless made with
    `golden_from_image`): the query is the golden moved by up to cfg.max_shift pixels and cfg.max_rotation degrees
    (edges replicated), with one defect when `anomalous` (drawn with cfg.anomaly_ratio when None), then relit."""
    cfg = cfg or AlignedConfig()
    g = golden if isinstance(golden, Golden) else golden_from_image(golden)
    h, w = g.material.shape
    if anomalous is None:
        anomalous = bool(rng.random() < cfg.anomaly_ratio)
    dx, dy = (float(v) for v in rng.uniform(-cfg.max_shift, cfg.max_shift, 2))
    rot = float(rng.uniform(-cfg.max_rotation, cfg.max_rotation))
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), rot, 1.0)
    m[:, 2] += (dx, dy)

    def warp(a: np.ndarray) -> np.ndarray:
        return lay(a, m, (w, h))

    image, mask, dtype = warp(g.image), np.zeros((h, w), bool), ""
    if anomalous:
        image, mask, dtype = _defect(g, warp, image, rng, cfg)
    ink = tuple(int(v) for v in np.median(g.ink[g.material], axis=0)) if g.material.any() else (0, 0, 0)
    return AlignedPair(golden=Image.fromarray(g.image), query=Image.fromarray(_photometric(image, rng, cfg)),
                       mask=mask.astype(np.uint8) * 255, label=int(anomalous), change=DEFECT_CHANGES.get(dtype, ""),
                       defect_type=dtype, shift=(dx, dy), rotation=rot, warp=m.astype(np.float32), ink=ink)
