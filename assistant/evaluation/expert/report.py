"""Expert reports: report.json (schema below), report.md (per-category table), report.csv, roc.png, qualitative.png.

report.json = {"shots", "seeds", "config", "categories": {NAME: {metric: mean, ..., "std": {metric: std},
"n_normal", "n_anomalous"}}, "mean": {metric: mean over categories}}; metrics are fractions in [0, 1].
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from assistant.evaluation.data.items import sample_references
from assistant.evaluation.expert.metrics import METRIC_KEYS
from assistant.evaluation.expert.runner import encode_items
from assistant.evaluation.plots import Case, plot_roc, qualitative_grid
from assistant.imaging import load_image

SHORT = {"image_auroc": "I-AUROC", "image_ap": "I-AP", "image_f1_max": "I-F1max", "pixel_auroc": "P-AUROC",
         "pixel_aupro": "AUPRO", "pixel_f1_max": "P-F1max", "balanced_accuracy": "BalAcc", "overkill": "Overkill",
         "miss": "Miss", "review_rate": "Review", "balanced_accuracy_outside_review": "BalAcc outside review",
         "overkill_outside_review": "Overkill outside review", "miss_outside_review": "Miss outside review",
         "image_auroc_free": "I-AUROC free", "aligned_share": "Aligned"}
PATH_KEYS = ("image_auroc_free", "aligned_share")  # shown when some image took the aligned path


def build_report(results, shots: int, seeds: list[int], config: dict, zero_shot_mode: str = "head") -> dict:
    """`zero_shot_mode` (k = 0 only): "mutual" (scored against the category's other test images), or the
    single-image path the expert used, "self" (in-image rarity) or "head"."""
    cats = {r.name: r.summary() for r in results}
    mean = {}
    for key in METRIC_KEYS:
        vals = [c[key] for c in cats.values() if key in c]
        if vals:
            mean[key] = float(np.mean(vals))
    out = {"shots": shots, "seeds": list(seeds), "config": config, "categories": cats, "mean": mean}
    if shots == 0:
        out["zero_shot_mode"] = zero_shot_mode
    return out


def markdown(report: dict) -> str:
    keys = [k for k in METRIC_KEYS if any(k in c for c in report["categories"].values())]
    if not any(c.get("aligned_share", 0.0) > 0 for c in report["categories"].values()):
        keys = [k for k in keys if k not in PATH_KEYS]  # every image took the free path: the same AUROC twice
    mode = report.get("zero_shot_mode") if report["shots"] == 0 else None
    how = {"mutual": " (mutual scoring over each category's unlabeled test images)",
           "self": " (each image alone: in-image rarity)",
           "head": " (each image alone: the trained zero-shot head)"}.get(mode, "")
    lines = [f"# Expert evaluation: {report['shots']}-shot{how}, seeds {','.join(map(str, report['seeds']))}", "",
             "| category | normal | anomalous | " + " | ".join(SHORT[k] for k in keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for name, c in report["categories"].items():
        cells = []
        for k in keys:
            if k in c:
                sd = c["std"].get(k, 0.0)
                cells.append(f"{c[k]:.3f}" + (f" ± {sd:.3f}" if sd >= 5e-4 else ""))  # no "± 0.000" from float noise
            else:
                cells.append("–")
        lines.append(f"| {name} | {c['n_normal']} | {c['n_anomalous']} | " + " | ".join(cells) + " |")
    m = report["mean"]
    lines.append("| **mean** | | | " + " | ".join(f"**{m[k]:.3f}**" if k in m else "–" for k in keys) + " |")
    source = ("the expert calibrated itself from the references" if report["shots"] > 0 else
              "split from each category's own scores (two clusters of log scores)" if mode == "mutual" else
              "found on each image: the lowest score of anomalies synthesized on it" if mode == "self" else
              "the zero-shot head stored with its weights (fitted on synthetic data at training time)")
    lines += ["", "Balanced accuracy, overkill (normals rejected) and miss (anomalies passed) use the threshold",
              f"{source}; no threshold was set by hand."]
    if "review_rate" in keys:
        lines += ["Review: share of images judged borderline (their score lies within the threshold's uncertainty, "
                  "or the references differ from the part almost everywhere: a person should check them); BalAcc, "
                  "Overkill and Miss outside review: those figures over the other images (the decided ones)."]
    if "aligned_share" in keys:
        lines += ["Aligned: share of images compared with a registered reference position by position (the aligned "
                  "path); I-AUROC free: the AUROC of the free path's scores of the same images (no second run). When "
                  "some images took the aligned path, the ranking metrics use each score over its own path's "
                  "threshold (the decision statistic), since the two paths score on different scales."]
    return "\n".join(lines) + "\n"


def roc_curves(results) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{category: (labels, scores)} of each category's first seed, for plots.plot_roc."""
    return {r.name: (r.runs[0].labels, r.runs[0].scores) for r in results if r.runs}


def write_reports(results, out_dir: str | Path, shots: int, seeds: list[int], config: dict,
                  zero_shot_mode: str = "head") -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(results, shots, seeds, config, zero_shot_mode)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    plot_roc(roc_curves(results), out / "roc.png", title="image-level ROC (first seed)")
    return report


def write_csv(report: dict, path: str | Path) -> list[str]:
    """report.csv: one row per category (metrics, then their std over seeds) and a mean row; any report
    with the {"categories": {NAME: {metric, "std", "n_normal", "n_anomalous"}}, "mean"} schema. Returns the
    metric columns."""
    cats = report["categories"]
    cols = sorted({k for e in cats.values() for k, v in e.items() if isinstance(v, float)})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["category", "n_normal", "n_anomalous", "n_questions"] + cols + [f"{c}_std" for c in cols])
        for name, e in cats.items():
            std = e.get("std", {})
            w.writerow([name, e.get("n_normal", ""), e.get("n_anomalous", ""), e.get("n_questions", "")]
                       + [f"{e[c]:.6f}" if c in e else "" for c in cols]
                       + [f"{std[c]:.6f}" if c in std else "" for c in cols])
        w.writerow(["mean", "", "", ""] + [f"{report['mean'][c]:.6f}" if c in report["mean"] else "" for c in cols])
    return cols


def expert_grid(expert, tower, categories, results, shots: int, path: str | Path, n: int = 4,
                mutual: bool = False) -> Path | None:
    """Folder evaluation: grid of the n best and n worst test images of the first seed, ranked by how far
    the score sits from the calibrated threshold on the right (best) or wrong (worst) side. With `mutual`
    (batch zero-shot) a shown image's map is recomputed with its whole category, as it was evaluated."""
    ranked = []
    for cat, res in zip(categories, results):
        if not res.runs or not res.runs[0].thresholds:
            continue
        run = res.runs[0]
        thr = max(float(run.thresholds[0]), 1e-8)
        for i, it in enumerate(cat.items):
            margin = (float(run.scores[i]) / thr - 1.0) * (1 if it.label else -1)  # > 0: right side
            ranked.append((margin, cat, i, run))
    if not ranked:
        return None
    ranked.sort(key=lambda x: (x[0], x[1].name, x[2]))
    worst = ranked[:n]
    best = [r for r in ranked[::-1] if r not in worst][:n]
    states: dict = {}
    batches: dict = {}  # category name -> mutual-scoring results of all its items
    cases = []
    size = (tower.image_size, tower.image_size)
    for tag, group in (("best", best), ("worst", worst)):
        for margin, cat, i, run in group:
            it = cat.items[i]
            if mutual:
                if cat.name not in batches:
                    batches[cat.name] = expert.mutual_predict(encode_items(tower, cat.items), size)
                refs, res = (), batches[cat.name][i]
            else:
                refs = tuple(it.references) or tuple(sample_references(cat.train_good, shots, run.seed))
                if refs not in states:
                    states[refs] = expert.fit_references(tower, [load_image(r) for r in refs], seed=run.seed)
                img = load_image(it.image)
                res = expert.predict(tower.encode([img]), states[refs], size, images=[img], tower=tower)[0]
            text = (f"truth: {'anomalous (' + it.defect + ')' if it.label else 'normal'}\n"
                    f"verdict: {'anomalous' if res.pred_label else 'normal'}, score {res.pred_score:.3g}, "
                    f"threshold {res.threshold:.3g}\n"
                    + ("mutual scoring, no references" if mutual else f"{len(refs)} reference(s), seed {run.seed}"))
            cases.append(Case(image=it.image, mask=it.mask, anomaly_map=res.anomaly_map, threshold=res.threshold,
                              text=text, title=f"{tag}: {cat.name}/{Path(it.image).parent.name}/{Path(it.image).name}"))
    return qualitative_grid(cases, path)
