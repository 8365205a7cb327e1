"""Noise fields and foreign textures the defect synthesizers draw from; driven only by `rng`."""
from __future__ import annotations

import math

import cv2
import numpy as np

cv2.setNumThreads(1)  # determinism and fair sharing of the CPU


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
