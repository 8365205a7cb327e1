"""`--baseline knn`: the plain nearest-neighbour detector, evaluated beside ours in the same run.

It is the expert with everything that makes ours stronger switched off: no zero-shot head, no
reference augmentation, no neighbourhood aggregation, no smoothing, image score = max of the map
(the same tower and levels, and the same automatic threshold calibration so it can give verdicts).
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

KNN_OVERRIDES = [
    "expert.zero_shot=false", "expert.augment_references=false", "expert.neighbourhood=1",
    "expert.smoothing_sigma=0", "expert.score_topk=0", "expert.knn_k=1", "expert.checkpoint=null",
    "expert.level_fusion=mean",
]  # config overrides that turn the expert into the plain kNN baseline


def knn_config(config: str, overrides=(), device: str | None = None):
    from assistant.config import load_config

    extra = [f"vision.device={device}"] if device else []
    return load_config(config, list(overrides) + KNN_OVERRIDES + extra)


class KNNBaseline:
    """detect(query, references) -> AnomalyResult with the plain kNN expert; reference states are cached."""

    def __init__(self, cfg, tower=None, cache_size: int = 8):
        from assistant.expert import build_expert
        from assistant.vision.base import build_vision_tower

        self.cfg = cfg
        self.tower = tower if tower is not None else build_vision_tower(cfg.vision)
        self.expert = build_expert(cfg, self.tower).eval()
        self._states: OrderedDict = OrderedDict()
        self._cache_size = cache_size

    def state(self, references):
        from assistant.imaging import load_image

        key = tuple(str(r) for r in references)
        if not key:
            raise ValueError("--baseline knn needs reference images (--shots >= 1)")
        if key not in self._states:
            self._states[key] = self.expert.fit_references(self.tower, [load_image(r) for r in references])
            if len(self._states) > self._cache_size:
                self._states.popitem(last=False)
        return self._states[key]

    def __call__(self, query, references):
        from assistant.imaging import load_image

        img = load_image(query)
        state = self.state(references)
        return self.expert.predict(self.tower.encode([img]), state, (img.size[1], img.size[0]))[0]


def build_knn_baseline(config: str, overrides=(), device: str | None = None) -> KNNBaseline:
    return KNNBaseline(knn_config(config, overrides, device))


def add_knn_baseline(args, cfg, cats, tower) -> dict:
    """Folder mode: evaluate the kNN baseline on the same categories/seeds and add it to OUT/report.json
    ("baseline": {"name", "categories", "mean"}) and to report.md as a side-by-side table."""
    from assistant.config import load_config
    from assistant.evaluation.report import build_report
    from assistant.evaluation.runner import evaluate
    from assistant.expert import build_expert

    bcfg = load_config(args.config, list(args.overrides) + KNN_OVERRIDES)
    expert = build_expert(bcfg, tower).eval()
    mutual = bool(getattr(args, "mutual", False))  # 0-shot: the same mutual scoring on the plain features
    results = evaluate(expert, tower, cats, args.shots, args.seeds, args.batch_size, pixel=not args.no_pixel,
                       mutual=mutual)
    base = build_report(results, args.shots, args.seeds, {"overrides": KNN_OVERRIDES}, "mutual" if mutual else "head")
    out = Path(args.out)
    report = json.loads((out / "report.json").read_text())
    report["baseline"] = {"name": "knn", "overrides": KNN_OVERRIDES, "categories": base["categories"], "mean": base["mean"]}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    keys = [k for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "balanced_accuracy") if k in report["mean"]]
    lines = ["", "## Ours vs plain kNN baseline (same run)", "",
             "| category | " + " | ".join(f"{k} ours | {k} knn" for k in keys) + " |", "|---|" + "---|---|" * len(keys)]
    for name, c in report["categories"].items():
        b = base["categories"].get(name, {})
        lines.append(f"| {name} | " + " | ".join(f"{c.get(k, float('nan')):.3f} | {b.get(k, float('nan')):.3f}" for k in keys) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{report['mean'][k]:.3f}** | {base['mean'].get(k, float('nan')):.3f}" for k in keys) + " |")
    with open(out / "report.md", "a") as f:
        f.write("\n".join(lines) + "\n")
    return report
