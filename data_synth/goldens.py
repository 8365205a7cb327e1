"""Golden parts for aligned-pair synthesis, drawn in layers from code (board, label, plate) or split from a user's
golden image.

A golden has a `base` (the part without its material: the substrate of a board, the paper of a label and the bench
around it, the bench under a plate), an `ink` (the material's colour: copper, print, machined metal), and a
`material` mask saying where the ink shows. data_synth.aligned paints the base over material for a "missing" defect
and the ink over base for an "extra" one, so defects look like the part, not like stains. Widths and radii are given
for a 64-pixel image and scale with the side; layout, colours and widths vary with the Generator passed in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

cv2.setNumThreads(1)  # determinism and fair sharing of the CPU


KINDS = ("board", "label", "plate")
KIND_TYPES = {"board": ("open", "mousebite", "pin_hole", "short", "spur", "spurious_copper"),
              "label": ("missing_print", "extra_print"), "plate": ("missing_part", "debris")}
KIND_NOUNS = {"board": "circuit board", "label": "label", "plate": "machined plate"}


@dataclass
class Golden:
    """A golden part in layers, all (H, W[, 3]); image = ink where material, base elsewhere."""

    kind: str  # board | label | plate: picks the defect vocabulary
    base: np.ndarray  # (H, W, 3) uint8 RGB: the part without its material
    ink: np.ndarray  # (H, W, 3) uint8 RGB: the material's colour everywhere
    material: np.ndarray  # (H, W) bool: where the material is
    region: np.ndarray  # (H, W) bool: where defects may land (the part, not the bench around it)
    picture: np.ndarray | None = None  # (H, W, 3) uint8: a user's golden as given (None: drawn from the layers)

    @property
    def image(self) -> np.ndarray:
        if self.picture is not None:
            return self.picture
        return np.where(self.material[..., None], self.ink, self.base)


def _unit(size: int) -> float:
    """Drawing unit: widths and radii are given for a 64-pixel image and scale with the side."""
    return size / 64.0


def _color(rng: np.random.Generator, base: tuple, jitter: float = 12.0) -> np.ndarray:
    return np.clip(np.array(base, np.float32) + rng.uniform(-jitter, jitter, 3), 0, 255)


def _layer(rng: np.random.Generator, size: int, color: np.ndarray, grain: float) -> np.ndarray:
    """(size, size, 3) uint8 flat colour with a faint fixed grain (so the part is not perfectly flat)."""
    g = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 1.2) * grain
    return np.clip(color[None, None] + g[..., None], 0, 255).astype(np.uint8)


def _pt(rng: np.random.Generator, size: int, margin: int) -> tuple[int, int]:
    return int(rng.integers(margin, size - margin)), int(rng.integers(margin, size - margin))


def _toward(p: tuple[int, int], ang: float, n: float, margin: int, size: int) -> tuple[int, int]:
    """The point n pixels from p at angle ang, kept `margin` pixels inside the image."""
    x, y = p[0] + n * math.cos(ang), p[1] + n * math.sin(ang)
    return int(np.clip(x, margin, size - margin)), int(np.clip(y, margin, size - margin))


def _board(rng: np.random.Generator, size: int) -> Golden:
    """Copper traces (Manhattan/45-degree polylines), pads at their ends, vias; on a dark or a bright substrate."""
    u, m = _unit(size), max(3, size // 12)
    if rng.random() < 0.6:  # dark solder mask, bright copper / gold / tin
        sub = [(24, 70, 36), (22, 40, 80), (24, 24, 28)][int(rng.integers(3))]
        cu = [(205, 130, 70), (220, 185, 90), (200, 200, 205)][int(rng.integers(3))]
    else:  # bright substrate (binarised scans), dark copper
        sub, cu = (228, 226, 214), [(40, 40, 44), (90, 50, 30)][int(rng.integers(2))]
    mat = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(4, 9))):
        w = max(2, round(rng.uniform(1.5, 3.0) * u))
        p = _pt(rng, size, m)
        pts = [p]
        for _seg in range(int(rng.integers(1, 4))):
            ang = rng.integers(8) * math.pi / 4
            n = rng.uniform(0.15, 0.45) * size
            q = _toward(p, ang, n, m, size)
            pts.append(q)
            p = q
        cv2.polylines(mat, [np.array(pts, np.int32)], False, 1, w)
        for end in (pts[0], pts[-1]):  # a pad at each end: round or square
            r = max(w, round(rng.uniform(1.0, 1.6) * w))
            if rng.random() < 0.5:
                cv2.circle(mat, end, r, 1, -1)
            else:
                cv2.rectangle(mat, (end[0] - r, end[1] - r), (end[0] + r, end[1] + r), 1, -1)
    for _ in range(int(rng.integers(1, 5))):  # vias: a copper ring with a drilled centre
        c, r = _pt(rng, size, m), max(2, round(rng.uniform(1.5, 2.5) * u))
        cv2.circle(mat, c, r, 1, -1)
        cv2.circle(mat, c, max(1, r // 2), 0, -1)
    base = _layer(rng, size, _color(rng, sub), 2.0)
    ink = _layer(rng, size, _color(rng, cu), 3.0)
    return Golden("board", base, ink, mat.astype(bool), np.ones((size, size), bool))


def _label(rng: np.random.Generator, size: int) -> Golden:
    """A printed label on a bench: paper, a border, text-like bars and blocks, a barcode."""
    u = _unit(size)
    bench = _color(rng, (70, 72, 78), 20)
    paper = _color(rng, [(238, 236, 228), (240, 226, 150), (225, 235, 240)][int(rng.integers(3))], 8)
    inkc = _color(rng, [(25, 25, 30), (30, 40, 120), (140, 25, 30)][int(rng.integers(3))], 10)
    x0, y0 = (int(rng.integers(size // 16, size // 8)) for _ in range(2))
    x1, y1 = (size - int(rng.integers(size // 16, size // 8)) for _ in range(2))
    region = np.zeros((size, size), np.uint8)
    cv2.rectangle(region, (x0, y0), (x1, y1), 1, -1)
    base = np.where(region[..., None] > 0, _layer(rng, size, paper, 1.5), _layer(rng, size, bench, 3.0))
    mat = np.zeros((size, size), np.uint8)
    b = max(1, round(rng.uniform(0.8, 1.5) * u))
    pad = max(2, round(2 * u))
    cv2.rectangle(mat, (x0 + pad, y0 + pad), (x1 - pad, y1 - pad), 1, b)
    inner = (x0 + 2 * pad + b, y0 + 2 * pad + b, x1 - 2 * pad - b, y1 - 2 * pad - b)
    split = int(inner[1] + rng.uniform(0.5, 0.65) * (inner[3] - inner[1]))
    y, h = inner[1], max(2, round(rng.uniform(2.0, 3.0) * u))
    while y + h < split - h:  # text lines: words are bars of random length with gaps
        x = inner[0]
        while x < inner[2] - 3 * u:
            wlen = int(rng.uniform(3, 12) * u)
            cv2.rectangle(mat, (x, y), (min(x + wlen, inner[2]), y + h - 1), 1, -1)
            x += wlen + max(2, int(rng.uniform(1.5, 3) * u))
        y += h + max(2, round(rng.uniform(1.5, 3.0) * u))
    x = inner[0]
    while x < inner[2]:  # barcode: bars of 1-3 modules, gaps of 1-2
        bw = max(1, round(rng.integers(1, 4) * 0.7 * u))
        cv2.rectangle(mat, (x, split + pad), (min(x + bw - 1, inner[2]), inner[3]), 1, -1)
        x += bw + max(1, round(rng.integers(1, 3) * 0.7 * u))
    ink = _layer(rng, size, inkc, 2.0)
    return Golden("label", base.astype(np.uint8), ink, mat.astype(bool), region.astype(bool))


def _plate(rng: np.random.Generator, size: int) -> Golden:
    """A machined plate on a dark bench: brushed metal with engraved lines, drilled holes, milled slots."""
    u, m = _unit(size), size // 10
    bench = _layer(rng, size, _color(rng, (40, 42, 48), 12), 3.0)
    metal = _color(rng, [(190, 192, 198), (200, 175, 110), (160, 170, 185)][int(rng.integers(3))], 10)
    streaks = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigmaX=size / 8,
                               sigmaY=0.6)
    streaks /= max(float(streaks.std()), 1e-6)
    ink = np.clip(metal[None, None] + 6 * streaks[..., None], 0, 255)  # brushed: streaks along x
    plate = np.zeros((size, size), np.uint8)
    x0, y0 = (int(rng.integers(size // 16, size // 8)) for _ in range(2))
    x1, y1 = (size - int(rng.integers(size // 16, size // 8)) for _ in range(2))
    cv2.rectangle(plate, (x0, y0), (x1, y1), 1, -1)
    mat = plate.copy()
    for _ in range(int(rng.integers(2, 6))):  # holes
        cv2.circle(mat, _pt(rng, size, m + 2), max(2, round(rng.uniform(2, 5) * u)), 0, -1)
    for _ in range(int(rng.integers(0, 3))):  # slots: thick lines with round ends
        p, ang, n = _pt(rng, size, m + 4), rng.integers(4) * math.pi / 4, rng.uniform(0.1, 0.25) * size
        cv2.line(mat, p, _toward(p, ang, n, m, size), 0, max(3, round(rng.uniform(2.5, 4) * u)))
    lines = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 4))):  # engraved lines: darker grooves in the metal (still material)
        cv2.line(lines, _pt(rng, size, m), _pt(rng, size, m), 1, max(1, round(0.8 * u)))
    ink = np.where(lines[..., None] > 0, ink * 0.55, ink)
    return Golden("plate", bench, np.clip(ink, 0, 255).astype(np.uint8), mat.astype(bool), plate.astype(bool))


RENDERERS = {"board": _board, "label": _label, "plate": _plate}


def render_golden(kind: str, size: int, seed: int | np.random.Generator) -> Golden:
    """A procedural golden part of `kind` (board | label | plate), size x size, varied by `seed`."""
    if kind not in RENDERERS:
        raise ValueError(f"unknown golden kind {kind!r}; expected one of {', '.join(KINDS)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return RENDERERS[kind](rng, size)


def golden_from_image(image: Image.Image, kind: str = "board") -> Golden:
    """A user's golden image in layers: material = the minority side of an Otsu split of the grey image (traces,
    print and holes cover less than their background), ink = its median colour, base = the image inpainted there."""
    if kind not in KIND_TYPES:
        raise ValueError(f"unknown golden kind {kind!r}; expected one of {', '.join(KINDS)}")
    rgb = np.asarray(image.convert("RGB"), np.uint8).copy()
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    _, hi = cv2.threshold(g, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mat = hi.astype(bool) if hi.mean() < 0.5 else ~hi.astype(bool)
    ink = np.median(rgb[mat], axis=0) if mat.any() else np.zeros(3)
    base = cv2.inpaint(rgb, cv2.dilate(mat.astype(np.uint8), np.ones((3, 3), np.uint8)), 3, cv2.INPAINT_TELEA)
    ink_img = np.broadcast_to(ink.astype(np.uint8), rgb.shape).copy()
    return Golden(kind, base, ink_img, mat, np.ones(g.shape, bool), picture=rgb)
