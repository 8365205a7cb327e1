"""The shape of a change against a golden sample: what a missing or extra region does to the material around it.

Polarity (golden.polarity) says whether material was lost or gained; the shape says how, from the material of the
registered reference and of the query in a window around the region. Both are binarised at the reference's Otsu
level (`material_masks`), the query after matching its lighting to the reference's, so a brighter shot does not
grow material:

- material lost: `cut` when a piece of material falls apart into more pieces (a trace cut through), `gone` when a
  whole piece is lost (a missing pad, print or part), `hole` when the lost pixels are surrounded by material in
  the query (a hole inside a pad or a plane), else `bite` (a bite out of an edge);
- material gained: `bridge` when pieces of material join into fewer (two traces connected), `isolated` when the
  new material touches none of the reference's (a stray blob), else `protrusion` (material grown out of an edge).

Domain words come from these in assistant/wording.py (printed circuit boards: open, pin hole, mousebite, short,
spurious copper, spur). The shape is "" when the region is `altered` or too small to judge.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from assistant.expert.alignment import lighting, warp_image

SHAPES = ("cut", "gone", "hole", "bite", "bridge", "isolated", "protrusion")
SIGMA = 1.0  # Gaussian blur (pixels at 256 px) of both grey images before binarising: noise, not structure
WINDOW_MARGIN = 12  # pixels (at 256 px) around a region's box in which the pieces of material are counted
MIN_PIECE = 6  # pixels (at 256 px): smaller pieces of material (or smaller changes) are noise
ENCLOSED = 0.85  # share of the ring around lost pixels that must be material in the query for a hole
TOUCH = 0.05  # share of the ring around gained pixels that must be reference material for it to be attached


def material_masks(reference: np.ndarray, query: np.ndarray, warp: np.ndarray,
                   bright: bool) -> tuple[np.ndarray, np.ndarray]:
    """(reference material, query material): bool (S, S) on the query's grid of an (S, S) grey reference and query
    in [0, 1]. The reference is warped onto the query (`warp`: Registration.warp), the query matched to the
    reference's lighting; both are cut at the reference's Otsu level, material on the `bright` side of it. Pixels
    the warped reference does not cover are material in neither."""
    f = query.shape[0] / 256.0
    rw, inside = warp_image(cv2.GaussianBlur(reference, (0, 0), SIGMA * f), warp, query.shape)
    qb = cv2.GaussianBlur(query, (0, 0), SIGMA * f)
    gain, offset = lighting(qb, rw, inside)  # query ~ gain x reference + offset
    qm = (qb - offset) / gain
    u8 = np.clip(rw * 255, 0, 255).astype(np.uint8)
    level = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0] / 255.0
    ref, qry = (rw > level, qm > level) if bright else (rw < level, qm < level)
    return ref & inside, qry & inside


def pieces(material: np.ndarray, min_piece: int) -> int:
    """Connected pieces of material (8-connectivity) of at least min_piece pixels."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(material.astype(np.uint8), connectivity=8)
    return int((stats[1:, cv2.CC_STAT_AREA] >= min_piece).sum())


def ring_share(blob: np.ndarray, material: np.ndarray, width: int) -> float:
    """Share of the ring of `width` pixels around `blob` that is material (0 when there is no ring)."""
    ring = cv2.dilate(blob.astype(np.uint8), np.ones((2 * width + 1, 2 * width + 1), np.uint8)) > 0
    ring &= ~blob
    return float(material[ring].mean()) if ring.any() else 0.0


def change_shape(ref: np.ndarray, qry: np.ndarray, box: tuple[int, int, int, int], change: str) -> str:
    """Shape (one of SHAPES) of one region with polarity `change` ("missing" | "extra"); `box` (x0, y0, x1, y1,
    exclusive) in the pixels of the (S, S) material masks. "" for other changes or when too little changed."""
    if change not in ("missing", "extra"):
        return ""
    side = ref.shape[0]
    f = side / 256.0
    m = max(2, round(WINDOW_MARGIN * f))
    x0, y0, x1, y1 = (max(0, min(side, v)) for v in box)
    win = (slice(max(0, y0 - m), min(side, y1 + m)), slice(max(0, x0 - m), min(side, x1 + m)))
    r, q = ref[win], qry[win]
    inner = np.zeros_like(r)
    inner[y0 - win[0].start:y1 - win[0].start, x0 - win[1].start:x1 - win[1].start] = True
    blob = (r & ~q if change == "missing" else q & ~r) & inner
    min_piece = max(2, round(MIN_PIECE * f * f))
    if blob.sum() < min_piece:
        return ""
    before, after = pieces(r, min_piece), pieces(q, min_piece)
    width = max(1, math.ceil(2 * f))
    if change == "missing":
        if after > before:
            return "cut"
        if after < before:
            return "gone"
        return "hole" if ring_share(blob, q, width) >= ENCLOSED else "bite"
    if after < before:
        return "bridge"
    return "isolated" if ring_share(blob, r, width) < TOUCH else "protrusion"


def box_pixels(box, map_size: tuple[int, int], side: int) -> tuple[int, int, int, int]:
    """A Box (pixels of a map of size (H, W)) in the pixels of the (side, side) grey images, widened outwards."""
    fy, fx = side / map_size[0], side / map_size[1]
    return (math.floor(box.x0 * fx), math.floor(box.y0 * fy), math.ceil(box.x1 * fx), math.ceil(box.y1 * fy))
