"""Evaluation plots: ROC curves and a qualitative grid (image, ground truth, map, answer) of best/worst cases."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
             title: str = "Image-level ROC") -> Path | None:
    """One ROC curve per name from (labels, scores); names with a single class are skipped.

    Returns the written path, or None when no curve could be drawn.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    drawn = 0
    for name, (labels, scores) in curves.items():
        labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
        if len(np.unique(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(labels, scores):.3f})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class Case:
    image: str  # path of the query image
    mask: str | None  # path of the ground-truth mask, if any
    anomaly_map: np.ndarray | None  # (h, w) map (any scale), None if not kept
    threshold: float  # image threshold, used to scale the map colours
    text: str  # answer shown under the images
    title: str  # e.g. "best: bottle/000.png"


def qualitative_grid(cases: list[Case], path: str | Path, side: int = 160) -> Path:
    """A row per case: image, ground truth, anomaly map over the image, answer text."""
    import cv2

    from assistant.imaging import load_image, load_mask

    if not cases:
        raise ValueError("qualitative_grid needs at least one case")
    plt = _pyplot()
    fig, axes = plt.subplots(len(cases), 4, figsize=(11, 2.6 * len(cases)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    for row, case in zip(axes, cases):
        img = np.asarray(load_image(case.image).resize((side, side)))
        row[0].imshow(img)
        row[0].set_title(case.title, fontsize=7)
        if case.mask and Path(case.mask).exists():
            row[1].imshow(load_mask(case.mask, size=(side, side)), cmap="gray", vmin=0, vmax=1)
            row[1].set_title("ground truth", fontsize=7)
        else:
            row[1].imshow(np.zeros((side, side)), cmap="gray", vmin=0, vmax=1)
            row[1].set_title("no mask", fontsize=7)
        row[2].imshow(img)
        if case.anomaly_map is not None:
            amap = cv2.resize(np.asarray(case.anomaly_map, dtype=np.float32), (side, side))
            vmax = 2.0 * case.threshold if case.threshold > 0 else float(amap.max() or 1.0)
            row[2].imshow(amap, cmap="jet", alpha=0.5, vmin=0.0, vmax=vmax)
        row[2].set_title("anomaly map", fontsize=7)
        wrapped = [w for line in case.text.splitlines() for w in textwrap.wrap(line, 60) or [""]][:14]
        row[3].text(0.0, 1.0, "\n".join(wrapped), va="top", fontsize=7, family="monospace")
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
