"""Verdict thresholds refined by labelled examples: the user's "this one is good" / "this one is defective".

The calibrated threshold (references.py, calibration.py) is a prior: it places the threshold where about
`target_overkill` of new good parts would score, from the references' own variation and an offset fitted on
synthetic categories. Labels refine it, never replace it:

- labelled good images join the references: they strengthen the memory bank, and each one's score against the
  others (the leave-one-out null score references.py computes anyway) is a direct sample of how new good parts
  score here;
- labelled defective images are scored against that bank: direct samples of how defects score here.

On the log scale, good scores are modelled as normal with the prior's median and spread (the null model's 50% and
90% offsets) worth PRIOR_WEIGHT observations, updated by the good labels; defective scores as normal around their
labels, their spread shrunk to the prior's likewise. The threshold minimises the expected cost of a decision,
`cost_ratio` x P(miss) + P(false reject), with the two kinds equally likely; without defective labels it is the
(1 - target_overkill) quantile of the updated good-score model. A leave-one-out pass over the labels estimates the
overkill and miss rates that threshold has on them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from scipy.stats import norm

from assistant.expert.calibration import UNFITTED_MIN_SPREAD, ThresholdEstimate, review_band

PRIOR_WEIGHT = 2.0  # observations the calibrated prior is worth against labels
DEFAULT_COST_RATIO = 1.0  # miss : false reject; 1 places the threshold for the best balanced accuracy
GRID = 400  # candidate thresholds (log scale) searched for the least expected cost
Z90 = float(norm.ppf(0.9))


@dataclass
class LabelledCalibration:
    """How a threshold was fitted with labels (written to a profile's calibration.json)."""

    threshold: float  # image-score threshold in force
    prior_threshold: float  # the calibrated threshold before labels (same references + labelled good images)
    method: str  # in words
    n_good: int
    n_defective: int
    cost_ratio: float  # cost of a miss / cost of a false reject
    good_scores: list[float]  # leave-one-out scores of the labelled good images
    defective_scores: list[float]  # scores of the labelled defective images
    expected_overkill: float  # of the fitted score models at the threshold
    expected_miss: float
    loo_overkill: float | None = None  # leave-one-out on the labels themselves (None: no such labels)
    loo_miss: float | None = None

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class ScoreModel:
    """Normal model of log image scores: mean and spread."""

    mean: float
    sd: float


def prior_models(estimate, null_model, k: int, target_overkill: float) -> tuple[ScoreModel, float]:
    """(good-score model before labels, prior spread) from a ThresholdEstimate: median log(null median) plus the
    null model's 50% offset, spread from its 50%..90% offsets (the unfitted default when there is none)."""
    m = math.log(max(estimate.null_median, 1e-9))
    if null_model is not None and null_model.fitted:
        mid, hi = null_model.offset(k, 0.5), null_model.offset(k, 0.9)
        spread = max((hi - mid) / Z90, UNFITTED_MIN_SPREAD)
    else:
        spread = max(estimate.offset / max(float(norm.ppf(1 - target_overkill)), 1e-6), UNFITTED_MIN_SPREAD)
        mid = estimate.offset - float(norm.ppf(1 - target_overkill)) * spread
    return ScoreModel(m + mid, spread), spread


def update(prior: ScoreModel, logs: np.ndarray, weight: float = PRIOR_WEIGHT) -> ScoreModel:
    """The prior worth `weight` observations, updated by log scores (mean and pooled spread)."""
    if logs.size == 0:
        return prior
    n = weight + logs.size
    mean = (weight * prior.mean + logs.sum()) / n
    var = (weight * prior.sd ** 2 + ((logs - mean) ** 2).sum()) / n
    return ScoreModel(float(mean), float(max(math.sqrt(var), prior.sd / 2)))


def least_cost(good: ScoreModel, bad: ScoreModel, cost_ratio: float) -> float:
    """Log threshold minimising cost_ratio x P(bad below) + P(good above), equal priors."""
    lo = min(good.mean - 3 * good.sd, bad.mean - 3 * bad.sd)
    hi = max(good.mean + 4 * good.sd, bad.mean + 3 * bad.sd)
    t = np.linspace(lo, hi, GRID)
    cost = cost_ratio * norm.cdf((t - bad.mean) / bad.sd) + norm.sf((t - good.mean) / good.sd)
    return float(t[int(np.argmin(cost))])


def label_threshold(prior: ScoreModel, spread: float, good: np.ndarray, bad: np.ndarray, cost_ratio: float,
                    target_overkill: float) -> tuple[float, ScoreModel, ScoreModel | None]:
    """(threshold, good-score model, defect-score model or None) from labelled good and defective image scores."""
    g = update(prior, np.log(np.clip(good, 1e-9, None)))
    if bad.size == 0:
        return float(math.exp(g.mean + norm.ppf(1 - target_overkill) * g.sd)), g, None
    logs = np.log(np.clip(bad, 1e-9, None))
    b = update(ScoreModel(float(logs.mean()), spread), logs)
    if b.mean <= g.mean:  # defects labelled that score like good parts: the labels cannot place a threshold
        return float(math.exp(g.mean + norm.ppf(1 - target_overkill) * g.sd)), g, b
    return float(math.exp(least_cost(g, b, cost_ratio))), g, b


def leave_one_out(prior: ScoreModel, spread: float, good: np.ndarray, bad: np.ndarray, cost_ratio: float,
                  target_overkill: float) -> tuple[float | None, float | None]:
    """(overkill, miss) of each label judged by the threshold fitted on the other labels."""
    fr = [good[i] > label_threshold(prior, spread, np.delete(good, i), bad, cost_ratio, target_overkill)[0]
          for i in range(good.size)]
    miss = [bad[i] <= label_threshold(prior, spread, good, np.delete(bad, i), cost_ratio, target_overkill)[0]
            for i in range(bad.size)]
    return (float(np.mean(fr)) if fr else None), (float(np.mean(miss)) if miss else None)


def fit_labels(expert, tower, references: list[Image.Image], good: list[Image.Image], defective: list[Image.Image],
               seed: int = 0, cost_ratio: float = DEFAULT_COST_RATIO):
    """(ReferenceState, LabelledCalibration): the references and the labelled good images as one reference set,
    its threshold refined by the labels. The free path's threshold is refined; an aligned path (golden
    templates) keeps its own."""
    check_cost_ratio(cost_ratio)
    refs = list(references) + list(good)
    state = expert.fit_references(tower, refs, seed=seed)
    est = state.estimate
    if est is None:
        raise ValueError("labels refine the null-distribution threshold: expected expert.calibration 'null' and at "
                         f"least one reference, got calibration {expert.cfg.calibration!r} with {len(refs)} image(s)")
    null = state.calibration.get("null_scores", [])
    # with k >= 2 the null scores are one per reference, in order: the labelled good images' are the last ones
    good_scores = np.array(null[len(references):len(refs)] if len(refs) >= 2 else [], dtype=float)
    bad_scores = defect_scores(expert, tower, state, defective)
    cal = apply_labels(expert, state, est, len(references), good_scores, bad_scores, cost_ratio)
    return state, cal


def check_cost_ratio(cost_ratio: float) -> None:
    if not cost_ratio > 0:
        raise ValueError(f"cost_ratio: expected a positive miss:false-reject cost ratio, got {cost_ratio}")


def apply_labels(expert, state, est, n_refs: int, good_scores: np.ndarray, bad_scores: np.ndarray, cost_ratio: float,
                 how: str = "") -> LabelledCalibration:
    """Set `state`'s threshold (and its review band) from the prior estimate `est` of its n_shots references
    (n_refs of them references, the rest labelled good) and the label scores; the record in
    state.calibration["labels"], the prior in ["labels_prior"] (what `add_label` continues from)."""
    k, tgt = state.n_shots, expert.cfg.target_overkill
    prior, spread = prior_models(est, expert.null_model, k, tgt)
    thr, g, b = label_threshold(prior, spread, good_scores, bad_scores, cost_ratio, tgt)
    loo = leave_one_out(prior, spread, good_scores, bad_scores, cost_ratio, tgt)
    lt = math.log(thr)
    rule = (f"threshold at the least expected cost (miss:false reject {cost_ratio:g}:1) of score models from the "
            f"calibrated prior (worth {PRIOR_WEIGHT:g} parts) and the labels" if bad_scores.size else
            f"threshold at the {1 - tgt:.0%} quantile of good scores (prior worth {PRIOR_WEIGHT:g} parts, updated by "
            f"the labels)")
    cal = LabelledCalibration(
        threshold=thr, prior_threshold=float(est.threshold),
        method=f"{n_refs} reference(s) + {k - n_refs} labelled good as references{how}; {rule}",
        n_good=k - n_refs, n_defective=int(bad_scores.size), cost_ratio=float(cost_ratio),
        good_scores=[round(float(x), 4) for x in good_scores],
        defective_scores=[round(float(x), 4) for x in bad_scores],
        expected_overkill=float(norm.sf((lt - g.mean) / g.sd)),
        expected_miss=float(norm.cdf((lt - b.mean) / b.sd)) if b is not None else float("nan"),
        loo_overkill=loo[0], loo_miss=loo[1])
    sigma = est.sigma * math.sqrt(PRIOR_WEIGHT / (PRIOR_WEIGHT + good_scores.size + bad_scores.size))
    low, high = review_band(thr, sigma, est.review_confidence)
    state.estimate = dataclasses.replace(est, threshold=thr, sigma=sigma, low=low, high=high)
    state.threshold = thr
    state.calibration["labels"] = cal.to_dict()
    state.calibration["labels_prior"] = est.to_dict()
    return cal


@torch.no_grad()
def add_label(expert, tower, state, image: Image.Image, label: str, cost_ratio: float | None = None):
    """(new ReferenceState, LabelledCalibration) after one more label, without refitting: a defective image is
    scored against the bank; a good one is scored too (held out: the bank does not hold it yet), then its patches
    join the bank (as shot: no rotations/flips and no coreset pass, one image's worth). The prior keeps its null
    median, its offset becomes that of one more reference. `state` (from fit_labels or add_label) is not changed;
    the aligned path (golden templates) is not updated: a full refit (fit_labels) does that."""
    if label not in ("good", "defective"):
        raise ValueError(f"label: expected 'good' or 'defective', got {label!r}")
    rec, prior = state.calibration.get("labels"), state.calibration.get("labels_prior")
    if rec is None or prior is None:
        raise ValueError("add_label continues a labelled fit: expected a state from fit_labels or add_label")
    cost_ratio = rec["cost_ratio"] if cost_ratio is None else cost_ratio
    check_cost_ratio(cost_ratio)
    good, bad = list(rec["good_scores"]), list(rec["defective_scores"])
    size, img = tower.image_size, image.convert("RGB")
    out = tower.encode([img])
    score = float(expert.predict(out, dataclasses.replace(state, golden=None), (size, size), images=[img],
                                 tower=tower)[0].pred_score)
    new = dataclasses.replace(state, banks=list(state.banks), calibration=dict(state.calibration))
    if label == "defective":
        bad.append(score)
    else:
        good.append(score)
        feats = expert.patch_features(out)[0]  # L x (1, N_l, C): the image as shot, no rotations/flips
        new.banks = [torch.cat([b, f.reshape(-1, f.shape[-1]).to(b)]) for b, f in zip(new.banks, feats)]
        new.n_shots = state.n_shots + 1
    est = ThresholdEstimate(**prior)
    cal = apply_labels(expert, new, est, state.n_shots - rec["n_good"], np.array(good, float), np.array(bad, float),
                       cost_ratio, how=" (last label added without refitting)")
    return new, cal


def defect_scores(expert, tower, state, defective: list[Image.Image]) -> np.ndarray:
    """Image scores of labelled defective images against the reference bank (free path)."""
    if not defective:
        return np.zeros(0)
    free = dataclasses.replace(state, golden=None)
    size = tower.image_size
    out = tower.encode([im.convert("RGB") for im in defective])
    return np.array([r.pred_score for r in expert.predict(out, free, (size, size), images=list(defective),
                                                          tower=tower)], dtype=float)
