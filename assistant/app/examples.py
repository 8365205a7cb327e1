"""Generated example inputs for the app (never real data): washers with a scratch, a stain, none."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

DEFAULT_QUESTION = "Is there any anomaly?"


def washer(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """A brushed metal washer on a dark table, random pose and light; (H, W, 3) uint8 RGB."""
    img = np.full((size, size, 3), 38, np.uint8) + rng.integers(0, 6, (size, size, 1), dtype=np.uint8)
    c = (size // 2 + int(rng.integers(-8, 9)), size // 2 + int(rng.integers(-8, 9)))
    r_out, r_in = int(size * 0.38), int(size * 0.16)
    metal = np.zeros_like(img)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), sigmaX=6, sigmaY=0.6)
    base = 165 + int(rng.integers(-10, 11)) + 18 * grain
    metal[:] = np.clip(np.stack([base, base + 4, base + 10], -1), 0, 255).astype(np.uint8)
    ring = np.zeros((size, size), np.uint8)
    cv2.circle(ring, c, r_out, 255, -1, cv2.LINE_AA)
    cv2.circle(ring, c, r_in, 0, -1, cv2.LINE_AA)
    a = (ring.astype(np.float32) / 255.0)[..., None]
    return (img * (1 - a) + metal * a).astype(np.uint8)


def make_examples(out_dir: str | os.PathLike) -> list[tuple[str, list[str], str]]:
    """Write generated example images (defective washer, stained washer, good washer + references);
    returns (query path, reference paths, question) triples."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    refs = []
    for i in range(2):
        p = out / f"reference_good_{i}.png"
        Image.fromarray(washer(rng)).save(p)
        refs.append(str(p))
    scratch = washer(rng)
    cv2.line(scratch, (205, 75), (250, 140), (70, 62, 58), 3, cv2.LINE_AA)  # dark scratch, top right
    stain = washer(rng)
    cv2.ellipse(stain, (105, 215), (22, 15), 30, 0, 360, (120, 95, 40), -1, cv2.LINE_AA)  # rust stain, bottom left
    stain = cv2.GaussianBlur(stain, (3, 3), 0)
    good = washer(rng)
    items = [("scratched_washer.png", scratch, DEFAULT_QUESTION), ("stained_washer.png", stain, "Where is the defect?"),
             ("good_washer.png", good, "Is it safe to ship?")]
    examples = []
    for name, arr, question in items:
        Image.fromarray(arr).save(out / name)
        examples.append((str(out / name), refs, question))
    return examples
