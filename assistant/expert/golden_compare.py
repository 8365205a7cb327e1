"""Comparing a query with golden templates (expert/golden.py): which path a query takes and why, the polarity and
shape of each region, and the aligned results.

`alignment` modes (`take_aligned`): `aligned` always compares position by position; `golden` (the user says the
references are golden samples) whenever the warp lies within a fixture's motion; `auto` only when the evidence shows
the same design in the same frame: the best reference registers well, the references agree with each other
(`GoldenState.inconsistent`), and the registered pair differs in a few places only (`golden_pair`: the share of
the part changed beyond what re-shooting the reference changes, at most MAX_CHANGED).
"""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import torch

from assistant.expert.alignment import Registration, grey, lighting, limits_reason, register, warp_image
from assistant.expert.defect_type import name_by_change
from assistant.expert.describe import describe
from assistant.expert.golden import (
    FLIP_RATIO,
    MAX_CHANGED,
    MIN_FLIP,
    PIXEL_FLOOR,
    GoldenState,
    Parts,
    changed_share,
    fuse,
    parts,
)
from assistant.expert.result import AnomalyResult, Box
from assistant.expert.shape import box_pixels, change_shape, material_masks


# ------------------------------------------------------------------ comparing
def best_registration(state: GoldenState, query_grey: np.ndarray) -> tuple[int, Registration]:
    """(template index, registration) of the template that registers best onto the query: good ones first, then
    the higher correlation."""
    regs = [register(query_grey, t.grey, query_grey.shape[0]) for t in state.templates]
    i = max(range(len(regs)), key=lambda j: (regs[j].good, regs[j].correlation))
    return i, regs[i]


def polarity(state: GoldenState, p: Parts, box: Box, map_size: tuple[int, int]) -> str:
    """`missing` | `extra` | `altered` of one region (box in the map's pixels, map of size map_size) from the signed
    aligned difference inside it: pixels where the query lies beyond the reference's range (`pixel_difference`,
    tolerant to edges a pixel or two off) by at least half the material/background contrast, towards the
    background (material lost) or towards the material (material gained)."""
    t = state.templates[p.template]
    side_h, side_w = p.signed.shape
    fy, fx = side_h / map_size[0], side_w / map_size[1]
    y0, x0 = math.floor(box.y0 * fy), math.floor(box.x0 * fx)
    sl = (slice(y0, max(math.ceil(box.y1 * fy), y0 + 1)), slice(x0, max(math.ceil(box.x1 * fx), x0 + 1)))
    d = p.signed[sl] if t.material_bright else -p.signed[sl]  # > 0: towards the material
    delta = max(0.5 * t.contrast, PIXEL_FLOOR)
    gained, lost = int((d > delta).sum()), int((d < -delta).sum())
    if lost >= MIN_FLIP and lost >= FLIP_RATIO * gained:
        return "missing"
    if gained >= MIN_FLIP and gained >= FLIP_RATIO * lost:
        return "extra"
    return "altered"


def name_shapes(state: GoldenState, p: Parts, boxes: list[Box], map_size: tuple[int, int]) -> None:
    """Set each region's `change` (`polarity`) and, for missing/extra ones, its `shape` (expert/shape.py)."""
    for box in boxes:
        box.change = polarity(state, p, box, map_size)
    if not any(b.change in ("missing", "extra") for b in boxes):
        return
    t = state.templates[p.template]
    side = p.query_grey.shape[0]
    ref, qry = material_masks(t.grey, p.query_grey, p.registration.warp, t.material_bright)
    for box in boxes:
        box.shape = change_shape(ref, qry, box_pixels(box, map_size, side), box.change)


def reference_estimate(state: GoldenState, p: Parts, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 grey: the registered reference on the query's grid at `size`, in the query's lighting: the
    part without the defect, for the region descriptors (expert/describe.py)."""
    t = state.templates[p.template]
    rw, inside = warp_image(t.grey, p.registration.warp, p.query_grey.shape)
    gain, offset = lighting(p.query_grey, rw, inside)  # query ~ gain x reference + offset
    est = np.where(inside, gain * rw + offset, p.query_grey)
    est = cv2.resize(np.clip(est * 255, 0, 255).astype(np.uint8), (int(size[1]), int(size[0])),
                     interpolation=cv2.INTER_LINEAR)
    return np.repeat(est[..., None], 3, axis=2)


# ------------------------------------------------------------------ results
def take_aligned(mode: str, reg: Registration, golden: GoldenState) -> tuple[bool, str]:
    """(compare position by position?, why) for one query and its best registration under an alignment mode, before
    the pixel comparison (`golden_pair` completes the auto check)."""
    if mode == "aligned":
        return True, "position by position, as asked (alignment: aligned)" + (
            "" if reg.good else f"; the registration is poor: {reg.reason}")
    if mode == "golden":
        why = limits_reason(reg.warp, reg.size)
        if why:
            return False, f"the golden sample does not register within a fixture's motion ({why}): compared freely"
        return True, "the good part is a golden sample (as you said): registered and compared position by position"
    if golden.inconsistent:
        return False, f"the good parts are not golden samples of one design: {golden.inconsistent}"
    if not reg.good:
        return False, f"the good part does not show the same view: {reg.reason}"
    return True, "the good part registers as the same design in the same frame: compared position by position"


def golden_pair(golden: GoldenState, p: Parts) -> tuple[bool, str]:
    """auto, after registration: (is the pair golden?, why). A golden sample differs from the query in a few compact
    places; a different part of the same kind in the same frame differs almost everywhere (MAX_CHANGED)."""
    t = golden.templates[p.template]
    share = changed_share(t, p.signed, p.compared, p.query_grey, p.registration.warp)
    if share - t.null_share > MAX_CHANGED:  # beyond what re-shooting the golden sample itself changes
        return False, (f"the good part registers in the same frame but differs from this one in {share:.0%} of the "
                       f"part: a different part, not a golden sample; compared as a bag of patches")
    return True, (f"the good part registers as the same design in the same frame and differs in {share:.0%} of the "
                  f"part: compared position by position")


def golden_results(expert, state, query_out, raw: torch.Tensor, results: list[AnomalyResult], images, image_size,
                   make_result) -> list[AnomalyResult]:
    """The free path's results of a batch, replaced by the aligned path's where the session's alignment mode
    (`state.alignment`, else `expert.alignment`) asks for it: `aligned` always, `golden` when the warp lies within a
    fixture's motion, `auto` when the best reference registers well. `make_result(amap, score, state, path, grid,
    reference_median=...)` is the expert's result builder; every result says which path it used and why
    (AnomalyResult.alignment, alignment_reason)."""
    golden = getattr(state, "golden", None)
    mode = getattr(state, "alignment", None) or expert.cfg.alignment
    if golden is None or mode == "free":
        why = "" if mode != "free" else "free comparison asked for (alignment: free)"
        return [dataclasses.replace(r, alignment="free", alignment_reason=why) for r in results]
    if images is None or len(images) != len(results):
        if mode in ("aligned", "golden"):
            raise ValueError(f"expert.alignment {mode!r} registers each query with its reference: expected "
                             f"predict(..., images=<{len(results)} query image(s)>), got "
                             f"{'None' if images is None else len(images)}")
        return [dataclasses.replace(r, alignment="free") for r in results]
    side = int(golden.templates[0].grey.shape[0])
    feats, _, _ = expert.patch_features(query_out)
    aligned_state = dataclasses.replace(state, threshold=golden.threshold, pixel_threshold=golden.pixel_threshold,
                                        estimate=golden.estimate, calibration=golden.calibration)
    out = []
    for b, (img, res) in enumerate(zip(images, results)):
        qg = grey(img, side)
        i, reg = best_registration(golden, qg)
        take, why = take_aligned(mode, reg, golden)
        p = parts(expert, golden.templates, i, qg, [f[b] for f in feats], reg, golden.grids, golden.grid,
                  raw[b]) if take else None
        if take and mode == "auto":
            take, why = golden_pair(golden, p)
        if not take:
            out.append(dataclasses.replace(res, alignment="free", registration=reg, alignment_reason=why))
            continue
        amap = fuse(expert, golden, p)
        if tuple(image_size) != amap.shape:
            amap = cv2.resize(amap, (int(image_size[1]), int(image_size[0])), interpolation=cv2.INTER_LINEAR)
        r = make_result(amap, expert.image_score(amap), aligned_state, "aligned", golden.grid,
                        reference_median=res.reference_median)
        name_shapes(golden, p, r.boxes, tuple(image_size))
        describe(r, img.convert("L").convert("RGB"), reference_estimate(golden, p, tuple(image_size)),
                 classifier=expert.type_classifier, out=query_out, index=b)
        for box in r.boxes:  # missing or extra material is that kind of defect, whatever the look
            if box.descriptor is not None:
                name_by_change(box.descriptor, box.change)
        out.append(dataclasses.replace(r, alignment="aligned", registration=p.registration, alignment_reason=why,
                                       free_score=float(res.pred_score), free_threshold=float(res.threshold)))
    return out
