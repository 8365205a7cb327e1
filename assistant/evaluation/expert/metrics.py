"""Detection and localization metrics (scikit-learn where it has them).

Image level: AUROC, AP, F1-max; balanced accuracy, overkill (normals rejected) and miss (anomalies
passed) at a given decision; with verdicts, the review rate (borderline images) and the balanced accuracy,
overkill and miss of the images decided outside the review band; with the free path's scores, their AUROC.
Pixel level: AUROC, F1-max, AUPRO (per-region overlap averaged over ground-truth connected components, integrated
over pixel FPR in [0, limit] and divided by limit).
"""
from __future__ import annotations

import cv2
import numpy as np
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

METRIC_KEYS = ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_aupro", "pixel_f1_max",
               "balanced_accuracy", "overkill", "miss", "review_rate", "balanced_accuracy_outside_review",
               "overkill_outside_review", "miss_outside_review", "image_auroc_free", "aligned_share"]


def _both_classes(labels: np.ndarray) -> bool:
    return labels.size > 0 and labels.min() != labels.max()


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all thresholds."""
    p, r, _ = precision_recall_curve(labels, scores)
    f = 2 * p * r / np.maximum(p + r, 1e-12)
    return float(f.max())


def balanced_accuracy(labels, preds, absent: float | None = None) -> float | None:
    """Mean of the recall of normals (0) and of anomalies (1): scikit-learn's balanced_accuracy_score, the one place
    every balanced accuracy of the evaluation is computed. When a class has no image the result is None, or, with
    `absent` given, that value stands for the missing class's recall (the MMAD benchmark counts it as 0)."""
    y, p = np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)
    if _both_classes(y):
        return float(balanced_accuracy_score(y, p))
    if absent is None:
        return None
    present = [float((p[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    return (sum(present) + absent * (2 - len(present))) / 2.0


def graded_balanced_accuracy(records: list[dict], field: str = "correct", absent: float | None = 0.0) -> float | None:
    """Balanced accuracy of graded answers over normal and anomalous images: records with "label" 0/1 and a
    true/false `field` (a right answer counts as the label predicted); records without a label are left out."""
    recs = [r for r in records if r.get("label") in (0, 1)]
    y = np.array([int(r["label"]) for r in recs], dtype=int)
    right = np.array([bool(r[field]) for r in recs], dtype=bool)
    return balanced_accuracy(y, np.where(right, y, 1 - y), absent)


def best_balanced_threshold(labels, scores) -> tuple[float, float]:
    """(threshold, balanced accuracy) of the best single threshold on these labels (the oracle no calibration can
    beat), read along scikit-learn's ROC curve: (TPR + TNR) / 2 is largest there. `score > threshold` reproduces it:
    the threshold is the midpoint between the lowest flagged score and the next lower one; among ties the lowest."""
    s = np.asarray(scores, float)
    fpr, tpr, thr = roc_curve(np.asarray(labels, int), s, drop_intermediate=False)
    ba = (np.nan_to_num(tpr) + 1 - np.nan_to_num(fpr, nan=1.0)) / 2  # one class only: its side alone counts
    i = int(np.flatnonzero(ba >= ba.max() - 1e-12)[-1])  # the last maximum: the lowest threshold among ties
    if not np.isfinite(thr[i]):  # nothing flagged
        return float(s.max() + 1e-6), float(ba[i])
    below = s[s < thr[i]]
    return float((thr[i] + below.max()) / 2 if below.size else thr[i] - 1e-6), float(ba[i])


def best_balanced_accuracy(labels, scores) -> float:
    """Balanced accuracy of the best single threshold on these labels (best_balanced_threshold)."""
    return best_balanced_threshold(labels, scores)[1]


def image_metrics(labels, scores, preds=None, verdicts=None, free_scores=None) -> dict:
    """labels 0/1, scores higher = more anomalous, preds 0/1 at the calibrated threshold; verdicts (normal |
    borderline | anomalous) add the review metrics (review_metrics); free_scores (the free path's score of each
    image, where the aligned path judged it) add image_auroc_free, to compare the two paths on the same images."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    out: dict = {}
    if _both_classes(y):
        out["image_auroc"] = float(roc_auc_score(y, s))
        out["image_ap"] = float(average_precision_score(y, s))
        out["image_f1_max"] = f1_max(y, s)
        if free_scores is not None and len(free_scores) == len(y):
            out["image_auroc_free"] = float(roc_auc_score(y, np.asarray(free_scores, dtype=np.float64)))
    if preds is not None:
        p = np.asarray(preds, dtype=int)
        out.update(_decision_metrics(y, p))
        if verdicts is not None and len(verdicts) == len(p):
            out.update(review_metrics(y, p, verdicts))
    return out


def _decision_metrics(y: np.ndarray, p: np.ndarray, suffix: str = "") -> dict:
    """overkill (share of normals flagged), miss (share of anomalies passed) and, when both classes are present, the
    balanced accuracy; a figure whose class has no image is left out. `suffix` is added to the keys."""
    out: dict = {}
    n0, n1 = (y == 0).sum(), (y == 1).sum()
    if n0:
        out["overkill" + suffix] = float(((p == 1) & (y == 0)).sum() / n0)
    if n1:
        out["miss" + suffix] = float(((p == 0) & (y == 1)).sum() / n1)
    if n0 and n1:
        out["balanced_accuracy" + suffix] = balanced_accuracy(y, p)
    return out


def review_metrics(y: np.ndarray, p: np.ndarray, verdicts) -> dict:
    """review_rate (share of borderline images, sent to a person) and the balanced accuracy, overkill and miss of
    the images decided outside the review band (keys ending in _outside_review; left out when a class has no
    decided image)."""
    review = np.array([v == "borderline" for v in verdicts], dtype=bool)
    out = {"review_rate": float(review.mean()) if review.size else 0.0}
    out.update(_decision_metrics(y[~review], p[~review], "_outside_review"))
    return out


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the 8-connected components of a binary mask."""
    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [lab == i for i in range(1, n)]


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3, max_thresholds: int = 2000) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit` pixel FPR, normalised to [0, 1].

    masks (B, H, W) bool, maps (B, H, W) float. For each threshold t: FPR = fraction of normal pixels with
    map >= t; PRO = mean over all ground-truth components of the fraction of the component with map >= t.
    The curve is cut at fpr_limit (linear interpolation) and integrated with the trapezoid rule.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape:
        raise ValueError(f"aupro: masks {masks.shape} and maps {maps.shape} must have the same shape")
    regions = [maps[i][r] for i in range(len(masks)) for r in _regions(masks[i])]
    normal = np.sort(maps[~masks])
    if not regions or normal.size == 0:
        return float("nan")
    thresholds = np.unique(maps)
    if thresholds.size > max_thresholds:
        thresholds = np.unique(np.quantile(maps, np.linspace(0, 1, max_thresholds)))
    thresholds = thresholds[::-1]  # high -> low: FPR increases
    fpr = 1.0 - np.searchsorted(normal, thresholds, side="left") / normal.size
    pro = np.mean([1.0 - np.searchsorted(np.sort(r), thresholds, side="left") / r.size for r in regions], axis=0)
    fpr = np.concatenate([[0.0], fpr])
    pro = np.concatenate([[0.0], pro])
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit:
        j = int(np.argmax(fpr > fpr_limit)) if (fpr > fpr_limit).any() else None
        if j is not None:
            x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
            y_end = y0 + (y1 - y0) * (fpr_limit - x0) / max(x1 - x0, 1e-12)
        else:
            y_end = y[-1]
        x, y = np.append(x, fpr_limit), np.append(y, y_end)
    return float(np.trapezoid(y, x) / fpr_limit) if hasattr(np, "trapezoid") else float(np.trapz(y, x) / fpr_limit)


def pixel_metrics(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> dict:
    """Pixel AUROC, F1-max and AUPRO over a stack of (B, H, W) masks and maps."""
    y = np.asarray(masks).astype(bool).reshape(-1)
    s = np.asarray(maps, dtype=np.float32).reshape(-1)
    if not _both_classes(y.astype(np.uint8)):
        return {}
    return {"pixel_auroc": float(roc_auc_score(y, s)), "pixel_f1_max": f1_max(y, s),
            "pixel_aupro": aupro(masks, maps, fpr_limit)}
