"""Reports: report.json (schema below), report.md (per-category table) and roc.png.

report.json = {"shots", "seeds", "config", "categories": {NAME: {metric: mean, ..., "std": {metric: std},
"n_normal", "n_anomalous"}}, "mean": {metric: mean over categories}}; metrics are fractions in [0, 1].
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from assistant.evaluation.metrics import METRIC_KEYS, roc_points

SHORT = {"image_auroc": "I-AUROC", "image_ap": "I-AP", "image_f1_max": "I-F1max", "pixel_auroc": "P-AUROC",
         "pixel_aupro": "AUPRO", "pixel_f1_max": "P-F1max", "balanced_accuracy": "BalAcc", "overkill": "Overkill",
         "miss": "Miss", "review_rate": "Review", "balanced_accuracy_outside_review": "BalAcc outside review"}


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
        lines += ["Review: share of images judged borderline (their score lies within the threshold's uncertainty: a "
                  "person should check them); BalAcc outside review: the balanced accuracy of the other images."]
    return "\n".join(lines) + "\n"


def roc_figure(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for r in results:
        run = r.runs[0] if r.runs else None
        if run is None or len(set(run.labels.tolist())) < 2:
            continue
        fpr, tpr = roc_points(run.labels, run.scores)
        auc = r.summary().get("image_auroc", float("nan"))
        ax.plot(fpr, tpr, label=f"{r.name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("image-level ROC (first seed)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_reports(results, out_dir: str | Path, shots: int, seeds: list[int], config: dict,
                  zero_shot_mode: str = "head") -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(results, shots, seeds, config, zero_shot_mode)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    roc_figure(results, out / "roc.png")
    return report
