"""Expert evaluation runner: k-shot reference sampling over seeds, one encode per test image.

For each category the test images are encoded once (their features do not depend on the seed); for each
seed, k references are drawn with `sample_references` (random.Random(seed).sample(sorted(files), k)), the
expert fits them (bank + calibrated threshold) and predicts every test item. Items that carry their own
references (other dataset formats) are grouped by reference set and fitted per group.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from assistant.evaluation.data.items import EvalCategory, EvalItem, sample_references, skip_reason
from assistant.evaluation.expert.metrics import METRIC_KEYS, image_metrics, pixel_metrics
from assistant.imaging import load_image, load_mask
from assistant.vision.base import VisionOutput, cat_outputs


@dataclass
class SeedRun:
    seed: int  # reference-sampling seed
    references: list[str]  # reference paths used (empty for zero-shot or per-item references)
    labels: np.ndarray  # (n,) ground-truth 0/1
    scores: np.ndarray  # (n,) image scores
    preds: np.ndarray  # (n,) 0/1 at the calibrated threshold
    thresholds: list[float]  # calibrated threshold(s) used
    metrics: dict  # metric -> value
    seconds_per_image: float  # predict time per image (encode excluded)
    calibration: list[dict] = field(default_factory=list)  # the expert's calibration record per reference set
    verdicts: list[str] = field(default_factory=list)  # (n,) normal | borderline | anomalous
    # (n,) the free path's score of each image: AnomalyResult.free_score where the aligned path judged it, else its
    # score (the free path's own), so the two paths are compared on the same images without a second run
    free_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    aligned_share: float = 0.0  # share of the images that took the aligned path


@dataclass
class CategoryResult:
    name: str
    n_normal: int
    n_anomalous: int
    runs: list[SeedRun] = field(default_factory=list)

    def summary(self) -> dict:
        """{metric: mean over seeds, ..., "std": {metric: std}, "n_normal", "n_anomalous"}."""
        out: dict = {}
        std: dict = {}
        for key in METRIC_KEYS:
            vals = [r.metrics[key] for r in self.runs if r.metrics.get(key) is not None]
            if vals:
                out[key] = float(np.mean(vals))
                std[key] = float(np.std(vals))
        out["std"] = std
        out["n_normal"] = self.n_normal
        out["n_anomalous"] = self.n_anomalous
        return out


def slice_features(out: VisionOutput, idx: list[int]) -> VisionOutput:
    """The features of images `idx` of a batch (every level, the global token; same grid)."""
    return VisionOutput([t[idx] for t in out.patch_tokens], out.global_token[idx], out.grid)


def encode_items(tower, items: list[EvalItem], batch_size: int = 16, desc: str = "") -> VisionOutput:
    """Encode all item images in batches (features kept on CPU)."""
    outs = []
    for i in tqdm(range(0, len(items), batch_size), desc=f"encode {desc}", leave=False, unit="batch"):
        imgs = [load_image(it.image) for it in items[i:i + batch_size]]
        o = tower.encode(imgs)
        outs.append(VisionOutput([t.cpu() for t in o.patch_tokens], o.global_token.cpu(), o.grid))
    return cat_outputs(outs)


FEATURE_BUDGET_MB = 2048  # test features kept across seeds up to this size; above it each seed re-encodes


class TestFeatures:
    """Features of a category's test images for the seed loop: encoded once and kept when all of them fit in
    `budget_mb` (offline-small: 1.8 MiB per image), otherwise encoded again per batch of every seed, so a folder of
    thousands of images is evaluated in bounded memory (slower; the same computation)."""

    def __init__(self, tower, items: list[EvalItem], batch_size: int, desc: str = "",
                 budget_mb: float = FEATURE_BUDGET_MB):
        self.tower, self.items = tower, items
        first = tower.encode([load_image(items[0].image)]) if items else None  # one image, to size the features
        per_image = sum(t[0].numel() * t.element_size() for t in first.patch_tokens) if first is not None else 0
        self.kept = len(items) * per_image <= budget_mb * 2 ** 20
        self.all = encode_items(tower, items, batch_size, desc) if self.kept else None
        if not self.kept:
            tqdm.write(f"{desc}: {len(items)} test images x {per_image / 2 ** 20:.1f} MB of features exceed "
                       f"{budget_mb:g} MB: encoding them again for every seed")

    def get(self, idx: list[int], images: list | None = None) -> VisionOutput:
        """Features of items `idx`; `images` = those items already loaded (re-encoding does not read them again)."""
        if self.kept:
            return slice_features(self.all, idx)
        return self.tower.encode(images if images is not None else [load_image(self.items[i].image) for i in idx])


def load_masks(items: list[EvalItem], size: int) -> np.ndarray:
    """(n, size, size) bool ground-truth masks (all-zero for normals)."""
    out = np.zeros((len(items), size, size), bool)
    for i, it in enumerate(items):
        if it.mask:
            out[i] = load_mask(it.mask, size=(size, size))
    return out


def evaluate_category(expert, tower, cat: EvalCategory, shots: int, seeds: Iterable[int], batch_size: int = 16,
                      pixel: bool = True, mutual: bool = False, feature_budget_mb: float = FEATURE_BUDGET_MB,
                      lot: bool = False) -> CategoryResult:
    """Evaluate one category for every seed; maps are compared with masks at the tower's image size.
    `mutual` (k = 0 only): every test image is scored against the category's other test images, unlabeled
    (expert.mutual_predict); no references are drawn, so every seed gives the same result.
    `lot`: the category's test folder is one lot inspected together (expert.lot_decide after the references)."""
    if mutual and shots > 0:
        raise ValueError(f"mutual scoring is a zero-shot mode: expected --shots 0, got {shots}")
    size = tower.image_size
    masks = load_masks(cat.items, size) if (pixel and cat.has_masks) else None
    res = CategoryResult(cat.name, cat.n_normal, cat.n_anomalous)
    seed_list = list(seeds)
    if mutual:  # no references: one scoring of the batch stands for every seed (all features at once)
        run = mutual_run(expert, tower, cat, masks, batch_size)
        res.runs = [replace(run, seed=s) for s in seed_list]
        return res
    feats = TestFeatures(tower, cat.items, batch_size, cat.name, feature_budget_mb)
    same = shots == 0 and not any(it.references for it in cat.items)  # nothing drawn per seed: one run for all
    for seed in tqdm(seed_list[:1] if same else seed_list, desc=cat.name, unit="seed"):
        res.runs.append(seed_run(expert, tower, cat, feats, shots, seed, masks, batch_size, lot))
    if same:
        res.runs += [replace(res.runs[0], seed=s) for s in seed_list[1:]]
    return res


def mutual_run(expert, tower, cat: EvalCategory, masks, batch_size: int = 16) -> SeedRun:
    """Every test image scored against the category's other test images (expert.mutual_predict), no references."""
    size = tower.image_size
    feats = encode_items(tower, cat.items, batch_size, cat.name)
    t0 = time.perf_counter()
    batch = expert.mutual_predict(feats, (size, size))
    seconds = (time.perf_counter() - t0) / max(len(cat.items), 1)
    calib = [{"rule": batch[0].calibration, "threshold": batch[0].threshold}]
    return seed_result(0, [], cat, batch, masks, [batch[0].threshold], calib, seconds)


def reference_groups(cat: EvalCategory, shots: int, seed: int) -> dict[tuple, list[int]]:
    """Reference set -> indices of the items judged against it: the item's own references, or k drawn for the seed."""
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(cat.items):
        refs = tuple(it.references) if it.references else tuple(sample_references(cat.train_good, shots, seed))
        groups.setdefault(refs, []).append(i)
    return groups


def seed_run(expert, tower, cat: EvalCategory, feats: TestFeatures, shots: int, seed: int, masks,
             batch_size: int = 16, lot: bool = False) -> SeedRun:
    """One seed: fit each reference set (bank + calibrated threshold) and predict its items; with `lot` the
    category's items are then decided together."""
    items, size = cat.items, tower.image_size
    groups = reference_groups(cat, shots, seed)
    per_item: list = [None] * len(items)
    thresholds, calib = [], []
    t_pred = 0.0
    for refs, idx in groups.items():
        state = expert.fit_references(tower, [load_image(r) for r in refs], seed=seed)
        per_image = not state.few_shot and expert.self_calibrated()  # zero-shot: a threshold per image
        if not per_image:
            thresholds.append(state.threshold)
            calib.append(dict(state.calibration, threshold=state.threshold, pixel_threshold=state.pixel_threshold))
        for j in range(0, len(idx), batch_size):
            part = idx[j:j + batch_size]
            # the query images: per-image calibration and the aligned path (golden templates) need them
            images = [load_image(items[i].image) for i in part] if per_image or state.golden else None
            out = feats.get(part, images)  # (encoding is not part of the timed prediction)
            t0 = time.perf_counter()
            results = expert.predict(out, state, (size, size), images=images, tower=tower)
            t_pred += time.perf_counter() - t0
            for i, r in zip(part, results):
                per_item[i] = r
            if per_image:
                thresholds += [r.threshold for r in results]
        if per_image:
            calib.append({"method": state.calibration["method"], "rule": results[0].calibration,
                          "threshold_median": float(np.median(thresholds)),
                          "threshold_range": [float(min(thresholds)), float(max(thresholds))]})
    if lot:
        per_item = expert.lot_decide(per_item)
        thresholds = [per_item[0].threshold] if per_item else thresholds
        calib.append({"rule": per_item[0].calibration, "threshold": per_item[0].threshold})
    refs = list(next(iter(groups))) if len(groups) == 1 else []
    return seed_result(seed, refs, cat, per_item, masks, thresholds, calib, t_pred / max(len(items), 1))


def seed_result(seed: int, refs: list[str], cat: EvalCategory, results: list, masks, thresholds: list[float],
                 calib: list[dict], seconds: float) -> SeedRun:
    """A SeedRun from the expert's results for every item (in item order), with the metrics."""
    labels = np.array([it.label for it in cat.items])
    scores = np.array([r.pred_score for r in results], dtype=float)
    preds = np.array([int(r.pred_label) for r in results], dtype=int)
    maps = np.stack([r.anomaly_map for r in results]).astype(np.float32, copy=False) if masks is not None else None
    verdicts = [r.verdict for r in results]
    aligned = np.array([r.alignment == "aligned" for r in results], dtype=bool)
    free = np.array([r.free_score if a and r.free_score is not None else r.pred_score
                     for r, a in zip(results, aligned)], dtype=float)
    ranked, free_ranked = scores, free
    if aligned.any():  # two paths, two score scales: rank by the decision statistic, each score over its threshold
        ranked = np.array([r.pred_score / max(r.threshold, 1e-12) for r in results], dtype=float)
        free_ranked = np.array([r.free_score / max(r.free_threshold, 1e-12) if a and r.free_threshold else
                                r.pred_score / max(r.threshold, 1e-12) for r, a in zip(results, aligned)], dtype=float)
    metrics = _metrics(labels, ranked, preds, masks, maps, verdicts, free_ranked)
    metrics["aligned_share"] = float(aligned.mean()) if aligned.size else 0.0
    return SeedRun(seed, refs, labels, scores, preds, thresholds, metrics, seconds, calib, verdicts, free,
                   metrics["aligned_share"])


def _metrics(labels: np.ndarray, scores: np.ndarray, preds: np.ndarray, masks, maps, verdicts=None,
             free_scores=None) -> dict:
    """Image metrics (with the review band when verdicts are given, the free path's AUROC when its scores are),
    plus pixel metrics when the category has masks."""
    metrics = image_metrics(labels, scores, preds, verdicts, free_scores)
    if masks is not None:
        metrics.update(pixel_metrics(masks, maps))
    return metrics


def evaluate(expert, tower, categories: list[EvalCategory], shots: int, seeds: Iterable[int], batch_size: int = 16,
             pixel: bool = True, mutual: bool = False, feature_budget_mb: float = FEATURE_BUDGET_MB,
             lot: bool = False) -> list[CategoryResult]:
    """Evaluate every category; a category with fewer than `shots` reference normals is skipped with a note."""
    out = []
    for c in categories:
        reason = skip_reason(c, shots)
        if reason:
            tqdm.write(reason)
            continue
        out.append(evaluate_category(expert, tower, c, shots, list(seeds), batch_size, pixel, mutual,
                                     feature_budget_mb, lot))
    return out
