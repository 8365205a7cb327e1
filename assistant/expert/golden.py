"""Golden-template comparison: the query against a reference registered onto it, position by position.

The free path (model.py) treats the references as a bag of patches with all their rotations/flips: a missing pad
or a cut trace looks like some other normal patch of the part and is not seen. When a reference registers well
onto the query (`alignment.register`), this path compares what is at each place (`parts`):

- features: each query cell (the expert's kNN features, per level) against the reference's cells within
  `align_window` cells of the place it maps to; the reference's feature maps are resampled through the warp, so
  no second tower pass is needed. Per level in units of the same distance on normal stand-ins;
- pixels: where the blurred grey query lies outside the range of the warped reference (matched to the query's
  lighting) within PIXEL_TOLERANCE pixels: an edge a pixel or two off is no change, a missing or extra blob is.
  Spread over one patch cell (the resolution of the feature maps), in units of a fraction of the reference's
  material/background contrast;
- `fuse`: the geometric mean of the two and the free map. A thing missing from the query shows as well as a thing
  that is extra: both differ from what the reference has at that place.

Calibration keeps the principle of references.py: no defect is used. Camera views of each reference
(`calibration.camera_view`: small shift, rotation, scale, lighting, blur, noise) stand in for new normal parts;
they are registered and scored exactly like queries, and the image threshold lies the null offset above the
median of their scores (`calibration.estimate_threshold`; the unfitted offset, since the shipped null model was
fitted on the free path's scores), never below one unit of change (MIN_THRESHOLD).

Polarity (`golden_compare.polarity`): the reference's grey levels split by Otsu into material and background
(`material_side`); inside a region, the query going from the reference's material towards its background is
`missing`, the other way `extra`, a change that is neither or both (a stain, a shade, a displaced part) `altered`.
Which path a query takes, and the aligned results, are in golden_compare.py.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from assistant.expert.alignment import FLAT_STD, Registration, grey, lighting, register, warp_image
from assistant.expert.calibration import (
    NullModel,
    ThresholdEstimate,
    camera_view,
    estimate_threshold,
    masked_map,
)
from assistant.expert.knn import normal_scale
from assistant.expert.shape import material_masks

PIXEL_SIGMA = 1.0  # Gaussian blur (pixels at 256 px) of both grey images before their difference: noise
PIXEL_TOLERANCE = 2  # a query pixel differs only from all reference pixels within this many pixels (edge jitter)
EDGE_MARGIN = 8  # pixels (at 256 px) along the image edge and the warped reference's edge with no pixel evidence
CHANGE_FRACTION = 0.25  # one unit of the pixel map: this fraction of the reference's material/background contrast
NULL_VIEWS = 8  # camera views of the references (in turn) scored as new normal parts
PIXEL_FLOOR = 0.05  # smallest unit of the pixel map (grey in [0, 1]): a plain reference has no contrast to scale by
FUSE_FLOOR = 1e-3  # parts of the aligned map are floored here before their geometric mean
MIN_THRESHOLD = 1.0  # the aligned threshold is never below one unit: smaller changes are within the part's tolerance
FEATURE_FLOOR = 0.1  # smallest unit of a level's position-aware distance, as a fraction of its free-path unit
# auto: a golden sample differs from the query only in a few compact places; a different physical part shot in the same
# frame (another solar cell, another casting) differs almost everywhere after registration. When the share of the part
# changed by more than one pixel unit (`changed_share`) exceeds what re-shooting the reference changes by more than
# this, the pair is not golden and the free path is taken.
MAX_CHANGED = 0.25
PART_FLOOR = 0.1  # the changed share is measured over at least this fraction of the compared image (a sparse part)
FLIP_RATIO = 2.0  # a region is missing (extra) when it lost (gained) this many times more material than it gained
MIN_FLIP = 4  # ... and at least this many pixels (at the tower side) moved by half the contrast or more


@dataclass
class Template:
    """One reference prepared for position-aware comparison."""

    grey: np.ndarray  # (S, S) float32 grey reference in [0, 1] at the tower's side
    features: list[torch.Tensor]  # per level (1, C_l, h_l, w_l) kNN features of the reference
    material_bright: bool  # True when the material is the brighter Otsu class
    contrast: float  # mean grey of the brighter Otsu class minus the darker one's (0 for a plain reference)
    pixel_unit: float = 1.0  # unit of its pixel map (set by `calibrate`)
    null_share: float = 0.0  # `changed_share` of camera views of itself (re-shooting, resampling; set by `calibrate`)


@dataclass
class GoldenState:
    """Per-session data of the aligned path (ReferenceState.golden)."""

    templates: list[Template]
    grids: list[tuple[int, int]]  # per level grid of the kNN features
    grid: tuple[int, int]  # common grid of the free map
    feature_scales: list[float]  # per level unit of the position-aware distance (normal stand-ins)
    threshold: float = 0.0  # image-score threshold of the aligned map
    pixel_threshold: float = 0.0  # map threshold for pred_mask
    estimate: ThresholdEstimate | None = None
    calibration: dict = field(default_factory=dict)
    # k >= 2: why the references are not golden samples of one design ("" when they agree with each other after
    # registration, or k = 1): each registered onto the first and compared like a query (`changed_share`)
    inconsistent: str = ""


@dataclass
class Parts:
    """What one query is compared on, against one registered template (all (S, S) at the tower side)."""

    registration: Registration
    distances: list[torch.Tensor]  # per level (h_l, w_l) position-aware feature distance
    pixel: np.ndarray  # float32 |pixel difference| spread over a patch cell; 0 where not compared
    signed: np.ndarray  # float32 pixel difference, > 0 where the query is brighter than the reference allows
    compared: np.ndarray  # bool pixels with pixel evidence (covered by the reference, away from the edges)
    free: torch.Tensor  # (h', w') free map of the query (~1 on normal patches)
    query_grey: np.ndarray  # float32 grey query
    template: int  # index of the template


# ------------------------------------------------------------------ material
def material_side(g: np.ndarray, preset: str = "auto") -> tuple[bool, float]:
    """(material is bright, contrast between the classes) of a grey reference in [0, 1].

    Otsu splits the grey levels into two classes with the least within-class variance; which one is the material
    is not in the grey levels. `auto` takes the class covering less of the reference: a part lies on a larger
    background, tracks and pads on a larger substrate, print on a larger label. Where the material covers more
    than half (a copper plane filling the view) this is wrong; `expert.material: dark | bright` then says it. A
    plain reference is all background: material is what would stand out from it (bright on a dark surface)."""
    u8 = np.clip(cv2.GaussianBlur(g, (0, 0), 1.0) * 255, 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    hi = u8 > t
    share = float(hi.mean())
    if 0.0 < share < 1.0 and float(g.std()) >= FLAT_STD:
        contrast, bright = float(u8[hi].mean() - u8[~hi].mean()) / 255.0, share < 0.5
    else:
        level = float(g.mean())
        contrast, bright = 0.0, level < 0.5
    if preset in ("dark", "bright"):
        bright = preset == "bright"
    return bright, contrast


# ------------------------------------------------------------------ position-aware features
def feature_theta(warp: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(2, 3) affine_grid theta (normalised coordinates, align_corners=False) of a pixel warp query -> reference."""
    h, w = size
    n = np.array([[2.0 / w, 0, 1.0 / w - 1], [0, 2.0 / h, 1.0 / h - 1], [0, 0, 1]])
    full = np.vstack([np.asarray(warp, np.float64), [0, 0, 1]])
    return torch.tensor((n @ full @ np.linalg.inv(n))[:2], dtype=torch.float32)


def warp_features(feat: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) reference features -> the same resampled at the query cells' registered places."""
    grid = F.affine_grid(theta[None].to(feat), list(feat.shape), align_corners=False)  # (1, h, w, 2)
    return F.grid_sample(feat, grid, mode="bilinear", padding_mode="border", align_corners=False)


def window_distance(query: torch.Tensor, reference: torch.Tensor, radius: int) -> torch.Tensor:
    """(C, h, w), (C, h, w) -> (h, w): L2 distance of each query cell to the nearest reference cell within
    `radius` cells (Chebyshev) of the same place."""
    _, h, w = query.shape
    padded = F.pad(reference[None], (radius,) * 4, mode="replicate")[0] if radius > 0 else reference
    best = None
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            d = (query - padded[:, dy:dy + h, dx:dx + w]).pow(2).sum(0)
            best = d if best is None else torch.minimum(best, d)
    return best.sqrt()


def position_distances(query_feats: list[torch.Tensor], template: Template, theta: torch.Tensor,
                       grids: list[tuple[int, int]], radius: int) -> list[torch.Tensor]:
    """Per level (h_l, w_l) distance of each query cell to the template's cells around its registered place;
    query_feats: L x (N_l, C_l)."""
    return [window_distance(q.t().reshape(-1, *g), warp_features(ref, theta)[0], radius)
            for q, ref, g in zip(query_feats, template.features, grids)]


# ------------------------------------------------------------------ pixels
def pixel_difference(query: np.ndarray, reference: np.ndarray, warp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(signed difference, compared mask) of an (S, S) grey query and reference, both blurred by PIXEL_SIGMA, the
    reference warped onto the query and matched to its lighting. A query pixel differs only by what lies outside
    the range of the reference within PIXEL_TOLERANCE pixels (the pixel analogue of the feature window): an edge
    one or two pixels off is no change, a missing or extra blob is. > 0: brighter than the reference allows."""
    side = query.shape[0]
    f = side / 256.0
    qb = cv2.GaussianBlur(query, (0, 0), PIXEL_SIGMA * f)
    rb, inside = warp_image(cv2.GaussianBlur(reference, (0, 0), PIXEL_SIGMA * f), warp, query.shape)
    gain, offset = lighting(qb, rb, inside)
    rm = gain * rb + offset
    t = max(1, round(PIXEL_TOLERANCE * f))
    k = np.ones((2 * t + 1, 2 * t + 1), np.uint8)
    signed = np.maximum(qb - cv2.dilate(rm, k), 0) - np.maximum(cv2.erode(rm, k) - qb, 0)
    m = max(1, round(EDGE_MARGIN * f))
    compared = cv2.erode(np.pad(inside.astype(np.uint8), 1), np.ones((2 * m + 1, 2 * m + 1), np.uint8))[1:-1, 1:-1] > 0
    return (signed * compared).astype(np.float32), compared


def spread(values: np.ndarray, cell: int) -> np.ndarray:
    """Maximum over a cell x cell window: a pixel difference covers the patch cell around it, like the maps."""
    return cv2.dilate(values, np.ones((cell, cell), np.uint8)) if cell > 1 else values


def parts(expert, templates: list[Template], i: int, query_grey: np.ndarray, query_feats: list[torch.Tensor],
          reg: Registration, grids: list[tuple[int, int]], grid: tuple[int, int], free: torch.Tensor) -> Parts:
    """The Parts of one query (grey (S, S), kNN features L x (N_l, C_l), free map (h', w')) against template i."""
    side = query_grey.shape[0]
    t = templates[i]
    dist = position_distances(query_feats, t, feature_theta(reg.warp, query_grey.shape), grids, expert.cfg.align_window)
    signed, compared = pixel_difference(query_grey, t.grey, reg.warp)
    cell = max(1, round(side / grid[0])) | 1
    return Parts(registration=reg, distances=dist, pixel=spread(np.abs(signed), cell), signed=signed,
                 compared=compared, free=free, query_grey=query_grey, template=i)


def fuse(expert, state: GoldenState, p: Parts) -> np.ndarray:
    """(S, S) aligned map: the geometric mean of the pixel map (in units of its template), the position-aware
    feature map (levels fused like the free path's) and the free map, each smoothed like the expert's maps. A place
    scores high when its grey levels, its features at that place and (less needed: a missing thing looks like
    some normal patch) its features anywhere all differ from the reference; one part's stray response (an edge a
    pixel off, a feature map reacting to a neighbouring structure) counts less, as in the free path's level fusion."""
    side = p.pixel.shape[0]
    maps = torch.stack([expert.to_grid((d / s).reshape(1, -1), g, state.grid)
                        for d, g, s in zip(p.distances, state.grids, state.feature_scales)], 1)  # (1, L, h', w')
    feat = expert.fuse_levels(maps, expert.cfg.level_fusion)  # (1, h', w')
    feat_up, free_up = expert.upsample(torch.cat([feat, p.free[None]]), (side, side))  # (S, S) each
    sigma = expert.cfg.smoothing_sigma * side / 256.0
    pix = p.pixel / state.templates[p.template].pixel_unit
    pix = cv2.GaussianBlur(pix, (0, 0), sigma) if sigma > 0 else pix
    out = np.cbrt(np.maximum(pix, FUSE_FLOOR) * np.maximum(feat_up, FUSE_FLOOR) * np.maximum(free_up, FUSE_FLOOR))
    return out.astype(np.float32)


# ------------------------------------------------------------------ fitting (references -> GoldenState)
def prepare_template(image: Image.Image, feats: list[torch.Tensor], grids: list[tuple[int, int]], side: int,
                     material: str) -> Template:
    """A reference (resized to the tower side) and its kNN features (L x (N_l, C_l), identity view)."""
    g = grey(image, side)
    bright, contrast = material_side(g, material)
    return Template(grey=g, features=[f.t().reshape(1, -1, *gl).contiguous() for f, gl in zip(feats, grids)],
                    material_bright=bright, contrast=contrast)


def bank_without_identity(encoded: list[list[torch.Tensor]], i: int, lv: int) -> torch.Tensor:
    """(M, C) level-lv patches of every reference view except reference i's identity view (which a camera view of
    reference i would match too easily); all of them when nothing else is left."""
    rows = [encoded[m][lv][1:] if m == i else encoded[m][lv] for m in range(len(encoded))]
    rows = [r.reshape(-1, r.shape[-1]) for r in rows if r.shape[0] > 0]
    return torch.cat(rows) if rows else encoded[i][lv].reshape(-1, encoded[i][lv].shape[-1])


@torch.no_grad()
def fit_golden(expert, tower, refs: list[Image.Image], encoded: list[list[torch.Tensor]], grids: list[tuple[int, int]],
               grid: tuple[int, int], scales: list[float], seed: int = 0) -> GoldenState:
    """GoldenState of k references (resized to the tower side; `encoded`: k x L x (V, N_l, C) kNN features of their
    rotations/flips, identity first): templates, units and the threshold of the aligned map from camera views of
    the references scored as queries (`null_parts`, `calibrate`)."""
    side = tower.image_size
    templates = [prepare_template(r, [encoded[i][lv][0] for lv in range(len(grids))], grids, side, expert.cfg.material)
                 for i, r in enumerate(refs)]
    state = GoldenState(templates=templates, grids=list(grids), grid=tuple(grid), feature_scales=list(scales))
    calibrate(expert, state, null_parts(expert, tower, state, refs, encoded, scales, seed), scales, seed)
    state.inconsistent = references_disagree(state)
    return state


def changed_share(template: Template, signed: np.ndarray, compared: np.ndarray, query_grey: np.ndarray,
                  warp: np.ndarray) -> float:
    """Share of the part that changed between the template and a registered query: compared pixels whose difference
    (`pixel_difference`) exceeds one pixel unit of the template, over the compared pixels that are material in either
    image or changed (at least PART_FLOOR of the compared area, so a plain or sparse template is measured against a
    part-sized area). ~0 for a golden pair but where the defect is; most of the part for two different parts, also
    when the part covers little of the image (a screw lying at another angle on a plain background)."""
    if not compared.any():
        return 1.0
    changed = (np.abs(signed) > template.pixel_unit) & compared
    ref, qry = material_masks(template.grey, query_grey, warp, template.material_bright)
    part = int(((ref | qry | changed) & compared).sum())
    return float(changed.sum()) / max(part, PART_FLOOR * int(compared.sum()), 1)


def references_disagree(state: GoldenState) -> str:
    """"" when every reference registers onto the first and differs from it only in a few places (MAX_CHANGED), else
    why not: references that are different parts in the same frame are no golden samples."""
    first = state.templates[0]
    for j, t in enumerate(state.templates[1:], start=2):
        reg = register(t.grey, first.grey, first.grey.shape[0])
        if not reg.good:
            return f"good part {j} does not register onto good part 1 ({reg.reason})"
        signed, compared = pixel_difference(t.grey, first.grey, reg.warp)
        share = changed_share(first, signed, compared, t.grey, reg.warp)
        if share - first.null_share > MAX_CHANGED:
            return (f"good parts 1 and {j} differ in {share:.0%} of the part after registration: they are different "
                    f"parts, not golden samples of one design")
    return ""


def null_parts(expert, tower, state: GoldenState, refs: list[Image.Image], encoded: list[list[torch.Tensor]],
               scales: list[float], seed: int) -> list[tuple[Parts, np.ndarray]]:
    """(Parts, (S, S) bool pixels that come from the reference) of NULL_VIEWS camera views of the references (in
    turn), each registered to and compared with its own reference's template; their free map against the bank
    without that reference's identity view, as `references.null_scores` does."""
    side, k, L = tower.image_size, len(refs), len(state.grids)
    rng = random.Random(seed)
    views = [(j % k, *camera_view(refs[j % k], rng)) for j in range(max(NULL_VIEWS, 2))]  # (ref, view, valid)
    feats = expert.patch_features(tower.encode([v for _, v, _ in views]))[0]  # L x (n, N_l, C)
    out = []
    for j, (i, view, valid) in enumerate(views):
        free = [expert.to_grid(expert.distances(feats[lv][j:j + 1], bank_without_identity(encoded, i, lv),
                                                state.grids[lv]), state.grids[lv], state.grid) / scales[lv]
                for lv in range(L)]
        free_map = expert.fuse_levels(torch.stack(free, 1), expert.cfg.level_fusion)[0]  # (h', w')
        qg = grey(view, side)
        valid = cv2.resize(valid.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST) > 0
        reg = register(qg, state.templates[i].grey, side, mask=valid)
        out.append((parts(expert, state.templates, i, qg, [f[j] for f in feats], reg, state.grids, state.grid,
                          free_map), valid))
    return out


def calibrate(expert, state: GoldenState, null: list[tuple[Parts, np.ndarray]], scales: list[float], seed: int) -> None:
    """Units and the image threshold of the aligned map from the null parts. Feature units: the median of the
    stand-ins' position-aware distances (floored by FEATURE_FLOOR x the free path's unit). Pixel unit of a template:
    the largest of the stand-ins' typical pixel difference, CHANGE_FRACTION of its contrast and PIXEL_FLOOR.
    Threshold: the null estimate (unfitted offset: the stand-ins' own spread), at least MIN_THRESHOLD units. Each
    template's `null_share`: the median changed share of its stand-ins, what re-shooting alone changes."""
    for lv in range(len(state.grids)):
        d = torch.cat([p.distances[lv].flatten() for p, _ in null])
        state.feature_scales[lv] = max(normal_scale(d), FEATURE_FLOOR * scales[lv])
    for i, t in enumerate(state.templates):
        pix = [p.pixel[p.compared & v] for p, v in null if p.template == i]
        noise = normal_scale(torch.from_numpy(np.concatenate(pix))) if pix and sum(x.size for x in pix) else 0.0
        t.pixel_unit = max(noise, CHANGE_FRACTION * t.contrast, PIXEL_FLOOR)
        shares = [changed_share(t, p.signed, p.compared & v, p.query_grey, p.registration.warp) for p, v in null
                  if p.template == i]
        t.null_share = float(np.median(shares)) if shares else 0.0
    scores = np.array([expert.image_score(masked_map(fuse(expert, state, p), v)) for p, v in null])
    est = estimate_threshold([np.array([x]) for x in scores], len(state.templates), NullModel(),
                             expert.cfg.target_overkill, expert.cfg.review_confidence, seed=seed)
    state.estimate = est
    state.threshold = state.pixel_threshold = max(est.threshold, MIN_THRESHOLD)
    state.calibration = {
        "method": f"aligned: {len(null)} camera views of the reference(s) registered and scored as new parts",
        "rule": f"median null score x {math.exp(est.offset):.3f} (unfitted offset: {expert.cfg.target_overkill:.0%} "
                f"upper tail of the stand-ins' own spread), at least {MIN_THRESHOLD:g}",
        "null_scores": [round(float(x), 4) for x in scores], "estimate": est.to_dict(),
        "registered": [bool(p.registration.good) for p, _ in null]}
