"""The expert's per-session state from reference normal images, and how its verdict thresholds are found.

`fit_references` builds the per-level memory bank (references and their rotations/flips, greedy coreset above
`bank_images` images' worth of patches) and calibrates the image threshold: by default from the null distribution
of normal scores (`calibration.estimate_threshold`; each reference against the others, or one reference's views
against its other views), or with the earlier margin rule (`margin_calibrate`). Without references, `self_threshold`
finds a threshold on the query itself from anomalies synthesized on it. Functions take the expert (weights and
config) and return data; nothing per session is stored in the module.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from PIL import Image

from assistant.config import ALIGNMENTS, ExpertConfig
from assistant.expert.calibration import (
    CALIBRATION_BETA,
    UNFITTED_CATEGORY_SIGMA,
    ThresholdEstimate,
    camera_view,
    dihedral_views,
    estimate_threshold,
    margin_key,
    masked_map,
    mild_jitter,
    synthesize_anomaly,
)
from assistant.expert.golden import GoldenState, fit_golden
from assistant.expert.knn import greedy_coreset, normal_scale
from assistant.expert.postprocess import best_f1_threshold
from assistant.vision.base import VisionOutput


@dataclass
class ReferenceState:
    """Per-session data from the reference normals (never stored in the module)."""

    banks: list[torch.Tensor]  # per level (M_l, C_l) reference-normal patch features; (0, C_l) when k = 0
    scales: list[float]  # per-level normal nearest-neighbour distance used to normalise level maps
    threshold: float  # calibrated image-score threshold (pred_score > threshold -> anomalous)
    pixel_threshold: float  # calibrated map threshold for pred_mask
    n_shots: int  # number of reference images used
    calibration: dict = field(default_factory=dict)  # how the thresholds were found (scores, method)
    estimate: ThresholdEstimate | None = None  # null-distribution threshold with its uncertainty (calibration: null)
    golden: GoldenState | None = None  # aligned path (expert.alignment auto | golden | aligned; expert/golden.py)
    # how queries are compared with these references (expert.alignment's values); None: the config's. A session
    # whose user says "this good part is a golden sample" sets "golden"
    alignment: str | None = None

    @property
    def sigma(self) -> float:
        """Log-scale uncertainty of the threshold (a default where the path has no estimate of its own)."""
        return self.estimate.sigma if self.estimate is not None else UNFITTED_CATEGORY_SIGMA

    @property
    def few_shot(self) -> bool:
        return self.n_shots > 0 and all(b.shape[0] > 0 for b in self.banks)


def zero_shot_state(expert) -> ReferenceState:
    """The state without references: thresholds per query image (self-calibrated) or from training."""
    if expert.self_calibrated():  # the thresholds are found per query image in predict
        expert.require_self_scales()
        thr, how = float("nan"), "per query image: anomalies synthesized on it (in-image rarity)"
    elif expert.head is None or not expert.trained:
        raise RuntimeError("zero-shot needs trained expert heads (expert.checkpoint); none are loaded. "
                           "Give at least one reference normal image.")
    else:
        thr, how = expert.zero_shot_threshold, "zero-shot threshold from training"
    return ReferenceState(
        banks=[torch.zeros(0, c) for c in expert.level_dims],
        scales=[1.0] * len(expert.level_dims),
        threshold=thr,
        pixel_threshold=thr,
        n_shots=0,
        calibration={"method": how},
    )


@torch.no_grad()
def reference_features(expert, tower, ref: Image.Image):
    """expert.patch_features of a reference's rotations/flips (all 8 with expert.augment_references, else itself):
    (L x (V, N_l, C), L x grid_l, (h', w')); `ref` at the tower's side."""
    n_views = 8 if expert.cfg.augment_references else 1
    return expert.patch_features(tower.encode(dihedral_views(ref)[:n_views]))


@torch.no_grad()
def fit_references(expert, tower, ref_images: list[Image.Image], ref_out: VisionOutput | None = None,
                   seed: int = 0, alignment: str | None = None) -> ReferenceState:
    """Memory bank (+ rotations/flips, coreset) and calibrated thresholds; k = 0 gives the zero-shot state.
    `alignment`: this session's comparison mode (expert.alignment's values; None: the config's)."""
    k = len(ref_images)
    if k == 0 or not expert.cfg.few_shot:
        return zero_shot_state(expert)
    rng = random.Random(seed)
    size = tower.image_size
    refs = [im.convert("RGB").resize((size, size), Image.BICUBIC) for im in ref_images]
    pf = [reference_features(expert, tower, r) for r in refs]
    encoded, grids, grid = [p[0] for p in pf], pf[0][1], pf[0][2]  # k x L x (V, N_l, C), L x grid_l, (h', w')
    L = len(expert.level_dims)
    flat = [[e[lv].reshape(-1, e[lv].shape[-1]) for lv in range(L)] for e in encoded]  # k x L x (V N', C)
    banks = [coreset(expert.cfg, torch.cat([f[lv] for f in flat]), encoded[0][lv].shape[1], seed) for lv in range(L)]
    mode = check_alignment(alignment or expert.cfg.alignment)
    state = ReferenceState(banks=banks, scales=[1.0] * L, threshold=0.0, pixel_threshold=0.0, n_shots=k,
                           alignment=mode)
    # pseudo-normal distances: each reference against the others (k >= 2, leave-one-out) or, with one
    # reference, each rotation/flip view against the bank of the other views (leave-view-out)
    held_out: list[list[torch.Tensor]] = []  # per pseudo-normal image: L x (N',)
    if k >= 2:
        for i in range(k):
            others = [torch.cat([flat[j][lv] for j in range(k) if j != i]) for lv in range(L)]
            held_out.append([expert.distances(encoded[i][lv][:1], others[lv], grids[lv])[0] for lv in range(L)])
    else:
        n_views = encoded[0][0].shape[0]
        for v in range(n_views):
            rest = [torch.cat([encoded[0][lv][j] for j in range(n_views) if j != v] or [encoded[0][lv][v]])
                    for lv in range(L)]
            held_out.append([expert.distances(encoded[0][lv][v:v + 1], rest[lv], grids[lv])[0] for lv in range(L)])
    state.scales = [normal_scale(torch.cat([h[lv] for h in held_out])) for lv in range(L)]
    # the margin rule's held-out statistic is the arithmetic mean of the level maps whatever level_fusion is: its
    # margins were fitted on synthetic categories for this pairing
    normal_maps = torch.stack([torch.stack([expert.to_grid(h[lv][None], grids[lv], grid)[0] / state.scales[lv]
                                            for lv in range(L)]).mean(0) for h in held_out])  # (P, h', w')
    margin_calibrate(expert, tower, state, refs, normal_maps, rng)
    if expert.cfg.calibration == "null":
        groups = null_scores(expert, tower, state, encoded, held_out, grids, grid, refs, rng)
        est = estimate_threshold(groups, k, expert.null_model, expert.cfg.target_overkill, expert.cfg.review_confidence,
                                 seed=seed)
        state.threshold, state.estimate = est.threshold, est
        source = ("leave-view-out rotations/flips and camera views of the reference" if k == 1
                  else "leave-one-out: each reference against the others")
        fitted = (
            f"fitted on {expert.null_model.categories} synthetic categories"
            if expert.null_model.fitted
            else "unfitted default"
        )
        state.calibration.update(
            method=f"null distribution of normal scores ({source})",
            rule=f"median null score x {math.exp(est.offset):.3f} (new-part offset for {k} reference(s), "
                 f"{fitted}): about {expert.cfg.target_overkill:.0%} of good parts above it",
            null_scores=[round(float(x), 4) for g in groups for x in g], estimate=est.to_dict())
    if mode != "free":  # golden-template inspection: templates and the aligned path's threshold
        state.golden = fit_golden(expert, tower, refs, encoded, grids, grid, state.scales, seed)
    return state


def check_alignment(mode: str) -> str:
    """`mode` when it is one of ALIGNMENTS, else a ValueError naming them."""
    if mode not in ALIGNMENTS:
        raise ValueError(f"alignment: expected one of {', '.join(ALIGNMENTS)}, got {mode!r}")
    return mode


def null_scores(expert, tower, state: ReferenceState, encoded, held_out, grids, grid, refs, rng) -> list[np.ndarray]:
    """Image scores of new-part stand-ins, on the query's scale (same level fusion, same pooling), grouped by what
    can be resampled: with k >= 2 each reference against the others (one group per reference); with one
    reference its rotations/flips against the other views and `camera_views` camera views of it against its
    non-identity views (`camera_view`; their reflected border is not scored), one group per view."""
    size = (tower.image_size, tower.image_size)
    L = len(expert.level_dims)

    def scores(per_level: list[torch.Tensor], valid: list[np.ndarray] | None = None) -> np.ndarray:
        """L x (B, N_l) distances -> (B,) image scores."""
        maps = torch.stack([expert.to_grid(d, g, grid) / sc for d, g, sc in zip(per_level, grids, state.scales)], 1)
        up = expert.upsample(expert.fuse_levels(maps, expert.cfg.level_fusion), size)
        if valid is not None:
            up = [masked_map(m, v) for m, v in zip(up, valid)]
        return np.array([expert.image_score(m) for m in up])

    held = scores([torch.stack([h[lv] for h in held_out]) for lv in range(L)])  # (P,)
    if state.n_shots >= 2 or expert.cfg.camera_views <= 0:
        return [np.array([x]) for x in held]
    cams = [camera_view(refs[0], rng) for _ in range(expert.cfg.camera_views)]
    feats = expert.patch_features(tower.encode([c[0] for c in cams]))[0]  # L x (n, N_l, C)
    views = encoded[0][0].shape[0]
    rest = [(encoded[0][lv][1:] if views > 1 else encoded[0][lv]).reshape(-1, encoded[0][lv].shape[-1])
            for lv in range(L)]  # the other rotations/flips: the identity view itself would match exactly
    cam = scores([expert.distances(feats[lv], rest[lv], grids[lv]) for lv in range(L)], [c[1] for c in cams])
    return [np.array([x]) for x in np.concatenate([held, cam])]


def coreset(cfg: ExpertConfig, bank: torch.Tensor, per_image: int, seed: int) -> torch.Tensor:
    """(M, C) bank of one level -> at most min(max_bank, bank_images x per_image) rows (greedy k-center)."""
    cap = min(cfg.max_bank, cfg.bank_images * per_image)
    if bank.shape[0] <= cap:
        return bank
    n = min(cap, max(cfg.max_bank // 4, int(bank.shape[0] * cfg.coreset_ratio)))
    if bank.shape[0] > 8 * n:  # greedy k-center is O(n M): pre-sample uniformly first
        g = torch.Generator().manual_seed(seed)
        bank = bank[torch.randperm(bank.shape[0], generator=g)[:8 * n]]
    return bank[greedy_coreset(bank, n, seed)]


def margin_calibrate(expert, tower, state: ReferenceState, refs: list[Image.Image], normal_maps: torch.Tensor,
               rng: random.Random) -> None:
    """Image threshold from held-out normal scores and synthesized-anomaly scores; pixel threshold by F1.

    threshold = n * (a / n) ** 0.7 with n = the highest held-out normal score and a = the median score
    of anomalies synthesized on lightly jittered references (a >= n enforced): a geometric point between
    the two, nearer the anomalies because held-out views of the references are easier than new parts.
    """
    size = (tower.image_size, tower.image_size)
    n_synth = max(2, expert.cfg.calibration_synth)
    synth = [synthesize_anomaly(mild_jitter(refs[i % len(refs)], rng), rng) for i in range(n_synth)]
    nmaps = expert.upsample(normal_maps, size)
    smaps = expert.upsample(expert.raw_maps(tower.encode([s[0] for s in synth]), state), size)
    normal = np.array([expert.image_score(m) for m in nmaps])
    anomal = np.array([expert.image_score(m) for m in smaps])
    n = max(float(normal.max()), 1e-6)
    a = max(float(np.median(anomal)), n)
    margin = expert.calibration_margin.get(margin_key(state.n_shots, expert.calibration_margin))
    if margin:  # fitted offline on synthetic categories: new normal parts score ~margin x held-out normals
        state.threshold = float(n * margin)
        rule = f"{margin:.3f} x highest held-out normal score (margin fitted on synthetic categories)"
    else:
        state.threshold = float(n * (a / n) ** CALIBRATION_BETA)
        rule = f"geometric point {CALIBRATION_BETA} from highest held-out normal to median synthesized anomaly"
    # pixel threshold: best F1 on synthesized masks, not below the median of normal maps' maxima
    gt = np.concatenate([s[1].reshape(-1) for s in synth])
    pix = best_f1_threshold(smaps.reshape(-1), gt)
    state.pixel_threshold = max(pix, float(np.median([m.max() for m in nmaps])))
    state.calibration = {
        "method": ("leave-one-out references" if state.n_shots >= 2 else "leave-view-out rotations/flips")
        + " + synthesized anomalies",
        "rule": rule,
        "normal_scores": [round(float(x), 4) for x in normal],
        "synth_scores": [round(float(x), 4) for x in anomal],
    }


def self_threshold(expert, tower, img: Image.Image, image_size: tuple[int, int]) -> tuple[float, float, np.ndarray]:
    """(image threshold, pixel threshold, synthesized scores) for one query without references.

    `calibration_synth` anomalies are synthesized on the query itself (fixed seed: the same image always gets
    the same threshold) and scored like it. The image threshold is the lowest of their scores: on held-out
    synthetic categories the best single cut of (query score / that lowest score) was 1.0. The pixel
    threshold is the best F1 on their masks."""
    rng = random.Random(0)
    side = tower.image_size
    base = img.convert("RGB").resize((side, side), Image.BICUBIC)
    synth = [synthesize_anomaly(base, rng) for _ in range(max(2, expert.cfg.calibration_synth))]
    smaps = expert.upsample(expert.self_map(tower.encode([s[0] for s in synth])), image_size)
    scores = np.array([expert.image_score(m) for m in smaps])
    h, w = image_size
    gt = np.concatenate([cv2.resize(s[1].astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).reshape(-1)
                         for s in synth]) > 0
    return float(scores.min()), best_f1_threshold(smaps.reshape(-1), gt), scores
