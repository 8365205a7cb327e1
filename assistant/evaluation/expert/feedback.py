"""`evaluate --feedback G,D`: a user who labels G good and D defective parts, simulated on the test split.

Per category and seed: k references are drawn from train/good as usual; G normal and D anomalous test images are
drawn (seeded, apart from the reference draw) as the user's labels and left out of scoring. The same remaining
test images are scored twice: before (the references alone, the calibrated threshold) and after the labels
(`expert.labels.fit_labels`: the labelled good images join the references, the threshold is refined by both
kinds of label).
"""
from __future__ import annotations

import random
import time
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from assistant.evaluation.data.items import EvalCategory, sample_references
from assistant.evaluation.expert.runner import CategoryResult, TestFeatures, load_masks, seed_result, seed_run
from assistant.expert.labels import fit_labels
from assistant.imaging import load_image

FEEDBACK_SALT = 7919  # the label draw's seed is seed x this + 1: apart from the reference draw of the same seed


def feedback_split(cat: EvalCategory, n_good: int, n_bad: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    """(labelled good, labelled defective, scored) item indices of a category for one seed."""
    normals = [i for i, it in enumerate(cat.items) if it.label == 0]
    anomalies = [i for i, it in enumerate(cat.items) if it.label == 1]
    if n_good > len(normals) - 1 or n_bad > len(anomalies) - 1:
        raise ValueError(f"{cat.name}: --feedback {n_good},{n_bad} needs more than {n_good} normal and {n_bad} "
                         f"anomalous test images, found {len(normals)} and {len(anomalies)}")
    rng = random.Random(seed * FEEDBACK_SALT + 1)
    good, bad = sorted(rng.sample(normals, n_good)), sorted(rng.sample(anomalies, n_bad))
    taken = set(good) | set(bad)
    return good, bad, [i for i in range(len(cat.items)) if i not in taken]


def labelled_run(expert, tower, cat: EvalCategory, feats: TestFeatures, refs: list[str], good: list[str],
                 bad: list[str], seed: int, masks, cost_ratio: float, batch_size: int):
    """A SeedRun of `cat`'s items judged with the references and the labels."""
    state, cal = fit_labels(expert, tower, [load_image(r) for r in refs], [load_image(p) for p in good],
                            [load_image(p) for p in bad], seed=seed, cost_ratio=cost_ratio)
    return state_run(expert, tower, cat, feats, state, refs, seed, masks, batch_size), cal


def state_run(expert, tower, cat: EvalCategory, feats: TestFeatures, state, refs: list[str], seed: int, masks,
              batch_size: int = 16):
    """A SeedRun of `cat`'s items judged with a fitted ReferenceState (labels, or an inspection profile's)."""
    size, results, t_pred = tower.image_size, [], 0.0
    for j in range(0, len(cat.items), batch_size):
        part = list(range(j, min(j + batch_size, len(cat.items))))
        images = [load_image(cat.items[i].image) for i in part]
        out = feats.get(part, images)
        t0 = time.perf_counter()
        results += expert.predict(out, state, (size, size), images=images, tower=tower)
        t_pred += time.perf_counter() - t0
    calib = [dict(state.calibration, threshold=state.threshold)]
    return seed_result(seed, refs, cat, results, masks, [state.threshold], calib, t_pred / max(len(results), 1))


def feedback_category(expert, tower, cat: EvalCategory, shots: int, seeds: list[int], n_good: int, n_bad: int,
                      cost_ratio: float = 1.0, batch_size: int = 16, pixel: bool = True):
    """(before, after, per-seed label calibrations) for one category."""
    before = CategoryResult(cat.name, cat.n_normal - n_good, cat.n_anomalous - n_bad)
    after = CategoryResult(cat.name, before.n_normal, before.n_anomalous)
    cals = []
    for seed in tqdm(seeds, desc=f"{cat.name} feedback", unit="seed"):
        g, d, rest = feedback_split(cat, n_good, n_bad, seed)
        sub = replace(cat, items=[cat.items[i] for i in rest])
        masks = load_masks(sub.items, tower.image_size) if (pixel and sub.has_masks) else None
        feats = TestFeatures(tower, sub.items, batch_size, sub.name)
        before.runs.append(seed_run(expert, tower, sub, feats, shots, seed, masks, batch_size))
        refs = list(sample_references(cat.train_good, shots, seed))
        run, cal = labelled_run(expert, tower, sub, feats, refs, [cat.items[i].image for i in g],
                                [cat.items[i].image for i in d], seed, masks, cost_ratio, batch_size)
        after.runs.append(run)
        cals.append({"seed": seed, **cal.to_dict()})
    return before, after, cals


TABLE_KEYS = (("image_auroc", "I-AUROC"), ("balanced_accuracy", "BalAcc"), ("overkill", "Overkill"),
              ("miss", "Miss"))


def feedback_table(pairs: list[tuple[CategoryResult, CategoryResult]], n_good: int, n_bad: int, shots: int,
                   seeds: list[int], cost_ratio: float) -> str:
    """Markdown: per category and metric, before -> after (mean over seeds), and the mean row."""
    head = " | ".join(f"{name} before | {name} after" for _, name in TABLE_KEYS)
    lines = [f"# Feedback: {shots}-shot + {n_good} good, {n_bad} defective labelled (seeds "
             f"{','.join(map(str, seeds))}; miss:false-reject cost {cost_ratio:g}:1)", "",
             f"| category | scored | {head} |", "|---|---|" + "---|---|" * len(TABLE_KEYS)]
    means: dict[str, list[float]] = {}
    for before, after in pairs:
        b, a = before.summary(), after.summary()
        cells = []
        for key, name in TABLE_KEYS:
            for tag, s in (("b", b), ("a", a)):
                v = s.get(key)
                cells.append("–" if v is None else f"{v:.3f}")
                if v is not None:
                    means.setdefault(f"{key}{tag}", []).append(v)
        lines.append(f"| {before.name} | {before.n_normal}+{before.n_anomalous} | " + " | ".join(cells) + " |")
    cells = [f"**{np.mean(means[f'{k}{t}']):.3f}**" if means.get(f"{k}{t}") else "–"
             for k, _ in TABLE_KEYS for t in ("b", "a")]
    lines.append("| **mean** | | " + " | ".join(cells) + " |")
    lines += ["", "Scored: normal + anomalous test images left after the labels were drawn; before and after are "
                  "scored on the same images. Thresholds are calibrated, never set by hand."]
    return "\n".join(lines)
