"""What the expert learns besides its head, all fitted on synthetic categories (never on real data): the per-level
self scales of the zero-shot map, the calibration margins (margin rule), the null model (new-part offsets of the
default threshold) and the reference-mismatch cut."""
from __future__ import annotations

import random

import numpy as np
import torch
from tqdm import tqdm

from training.expert.data import features, indices_by_category

# reference counts a calibration margin is fitted for by default (expert.margin_key picks the one to use); 8 and
# 16 can be asked for with --margin-shots (docs/results.md says why the default stops at 4)
MARGIN_SHOTS = (1, 2, 4)
# reference counts the null model (new-part offsets) is fitted for; more references use the k8 offsets, since new
# good parts lie about as far above the leave-one-out median with more references (docs/results.md)
NULL_SHOTS = (1, 2, 4, 8)



@torch.no_grad()
def self_scales(expert, normal_idx: list[int], tokens, glob, grid) -> list[float]:
    """Per level: median in-image nearest distance (expert.self_level_distances) over normal training images,
    the constants that make the single-image zero-shot map ~1 on ordinary patches."""
    if not normal_idx:
        raise ValueError("the training data has no normal images: the zero-shot scales need some (label 0)")
    per_level: list[list[torch.Tensor]] = []
    for i in range(0, len(normal_idx), 32):
        d, _, _ = expert.self_level_distances(features(tokens, glob, grid, normal_idx[i:i + 32]))
        per_level = per_level or [[] for _ in d]
        for lv, x in enumerate(d):
            per_level[lv].append(x[torch.isfinite(x)])
    cat = [torch.cat(x) for x in per_level]
    return [float(x.median().clamp_min(1e-6)) if x.numel() else 1.0 for x in cat]  # 1.0: grid too small to leave out


def _scored_and_spare(recs: list[dict], all_idx: list[int], max_per_cat: int) -> tuple[list[int], list[str]]:
    """A category's first `max_per_cat` records (scored) and the images of its later normal records (spares that
    make up the references where the build has too few)."""
    spare = [recs[i]["image"] for i in all_idx[max_per_cat:] if int(recs[i].get("label", 0)) == 0]
    return all_idx[:max_per_cat], spare


@torch.no_grad()
def fit_margins(expert, tower, recs: list[dict], tokens, glob, grid, max_per_cat: int = 40, log=print,
                shots: tuple[int, ...] = MARGIN_SHOTS) -> dict[str, float]:
    """Calibration margins for k = `shots` references (1, 2, 4; 8 and 16 on request), fitted on the synthetic
    categories (never on real data).

    For every category with normal and anomalous samples: fit the expert on k of its reference normals, score its
    first `max_per_cat` samples, divide by the highest held-out normal score of the calibration; the margin is the
    ratio cut with the best balanced accuracy averaged over categories. Where the build has fewer than k
    references per category, its later normal samples (never among the scored ones) make up the k. (Leave-one-out
    over k references scores each against k - 1, so the gap to new parts shrinks as k grows: one margin for all
    k >= 2 left many misses at 4 and 8 references.)
    """
    from assistant.imaging import load_image

    by_cat = indices_by_category(recs)
    margins = {}
    for k in shots:
        key = f"k{k}"
        per_cat = []
        for all_idx in by_cat.values():
            idx, spare = _scored_and_spare(recs, all_idx, max_per_cat)
            labels = np.array([int(recs[i].get("label", 0)) for i in idx])
            refs = (recs[idx[0]].get("references") or []) + spare
            if len(set(labels.tolist())) < 2 or len(refs) < k:
                continue
            state = expert.fit_references(tower, [load_image(x) for x in refs[:k]], seed=0)
            n = max(state.calibration["normal_scores"])
            vo = features(tokens, glob, grid, idx)
            scores = np.array([r.pred_score for r in expert.predict(vo, state, (tower.image_size,) * 2)])
            per_cat.append((scores / n, labels))
        if not per_cat:
            continue
        cands = np.linspace(0.8, 3.0, 111)
        bacc = [np.mean([((r[y == 1] > c).mean() + (r[y == 0] <= c).mean()) / 2 for r, y in per_cat]) for c in cands]
        margins[key] = float(cands[int(np.argmax(bacc))])
        log(f"calibration margin {key}: {margins[key]:.3f} (synthetic balanced accuracy {max(bacc):.3f} "
            f"over {len(per_cat)} categories)")
    return margins


@torch.no_grad()
def fit_null(expert, tower, recs: list[dict], tokens, glob, grid, shots: tuple[int, ...] = NULL_SHOTS,
             draws: int = 1, max_per_cat: int = 40, target_overkill: float | None = None, log=print):
    """NullModel from the *normal* samples of synthetic categories (no defect is used): for every category, k and
    draw, fit k references (the category's reference normals, then its normal samples beyond the scored ones),
    and record log(score of each scored normal sample) - log(median null score). See
    assistant/expert/calibration.py."""
    import dataclasses

    from assistant.expert.calibration import fit_null_model

    target = target_overkill or expert.cfg.target_overkill
    by_cat = indices_by_category(recs)
    per_category: dict[str, dict[int, list[np.ndarray]]] = {}
    saved_cfg, expert.cfg = expert.cfg, dataclasses.replace(expert.cfg, calibration="null")  # null_median needed
    try:
        for cat, all_idx in tqdm(sorted(by_cat.items()), desc="null model", unit="category", leave=False):
            offsets = null_offsets(expert, tower, recs, all_idx, (tokens, glob, grid), shots, draws, max_per_cat)
            if offsets:
                per_category[cat] = offsets
    finally:
        expert.cfg = saved_cfg
    model = fit_null_model(per_category, target)
    for key, offs in model.offsets.items():
        at = float(np.exp(np.interp(1 - target, model.levels, offs)))
        log(f"null model {key}: new good parts' {1 - target:.0%} quantile at x{at:.3f} the null median, spread "
            f"across categories {model.spread[key]:.3f} ({model.categories} categories)")
    return model


def null_offsets(expert, tower, recs: list[dict], all_idx: list[int], feats, shots, draws: int,
                 max_per_cat: int) -> dict[int, list[np.ndarray]]:
    """{k: log(normal sample score / null median), one array per reference draw} of one category (`all_idx`);
    `feats` = (tokens, glob, grid) of the cached features."""
    from assistant.imaging import load_image

    scored, spare = _scored_and_spare(recs, all_idx, max_per_cat)
    idx = [i for i in scored if int(recs[i].get("label", 0)) == 0]
    pool = (recs[all_idx[0]].get("references") or []) + spare
    out: dict[int, list[np.ndarray]] = {}
    if len(idx) < 2:
        return out
    vo = features(*feats, idx)
    for k in shots:
        if len(pool) < k:
            continue
        for d in range(draws):
            refs = random.Random(d).sample(pool, k)
            state = expert.fit_references(tower, [load_image(x) for x in refs], seed=d)
            scores = np.array([r.pred_score for r in expert.predict(vo, state, (tower.image_size,) * 2)])
            m = state.estimate.null_median
            out.setdefault(k, []).append(np.log(np.clip(scores, 1e-6, None) / m))
    return out


@torch.no_grad()
def fit_reference_mismatch(expert, tower, recs: list[dict], tokens, glob, grid, max_per_cat: int = 20,
                           quantile: float = 0.99, log=print) -> tuple[float | None, dict]:
    """Cut on the median of the 1-shot normalised kNN map above which the reference is judged not to show the
    query's part (fitted on the synthetic categories, never on real data).

    Per category: fit the expert on its first reference, then take the map median (`raw_maps`, ~1 on a matching
    surface) of up to `max_per_cat` of its own samples (normal and defective: a local defect must not trigger
    it) and of 3 samples of each other category. The cut is the `quantile` of the same-kind medians, so 1% of
    same-kind synthetic parts lie above it; the share of other-kind parts above it is reported with it."""
    from assistant.imaging import load_image

    by_cat = indices_by_category(recs)
    cats = sorted(c for c, idx in by_cat.items() if recs[idx[0]].get("references"))
    if len(cats) < 2:
        return None, {}

    def medians(idx: list[int], state) -> np.ndarray:
        return expert.raw_maps(features(tokens, glob, grid, idx), state).flatten(1).median(1).values.numpy()

    same, other = [], []
    for cat in cats:
        state = expert.fit_references(tower, [load_image(recs[by_cat[cat][0]]["references"][0])], seed=0)
        same.append(medians(by_cat[cat][:max_per_cat], state))
        other.append(medians([i for c in cats if c != cat for i in by_cat[c][:3]], state))
    same_all, other_all = np.concatenate(same), np.concatenate(other)
    cut = float(np.quantile(same_all, quantile))
    stats = {"same_kind_flagged": round(float((same_all > cut).mean()), 4),
             "other_kind_flagged": round(float((other_all > cut).mean()), 4), "categories": len(cats)}
    log(f"reference mismatch cut {cut:.3f}: flags {stats['same_kind_flagged']:.1%} of same-kind and "
        f"{stats['other_kind_flagged']:.1%} of other-kind synthetic parts ({len(cats)} categories)")
    return cut, stats
