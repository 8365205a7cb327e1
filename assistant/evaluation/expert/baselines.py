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
        from assistant.expert import build_expert, load_expert

        self.cfg = cfg
        if tower is None:
            self.tower, self.expert = load_expert(cfg)
        else:
            self.tower, self.expert = tower, build_expert(cfg, tower).eval()
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


def add_knn_baseline(config: str, overrides, cats, tower, out: str | Path, shots: int, seeds: list[int],
                     batch_size: int = 16, pixel: bool = True, mutual: bool = False) -> dict:
    """Folder mode: evaluate the kNN baseline on the same categories/seeds and add it to OUT/report.json
    ("baseline": {"name", "categories", "mean"}) and to report.md as a side-by-side table. `mutual` (k = 0): the
    same mutual scoring on the plain features."""
    from assistant.evaluation.expert.report import build_report
    from assistant.evaluation.expert.runner import evaluate
    from assistant.expert import build_expert

    expert = build_expert(knn_config(config, overrides), tower).eval()
    results = evaluate(expert, tower, cats, shots, seeds, batch_size, pixel=pixel, mutual=mutual)
    base = build_report(results, shots, seeds, {"overrides": KNN_OVERRIDES}, "mutual" if mutual else "head")
    out = Path(out)
    report = json.loads((out / "report.json").read_text())
    report["baseline"] = {"name": "knn", "overrides": KNN_OVERRIDES, "categories": base["categories"],
                          "mean": base["mean"]}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    with open(out / "report.md", "a") as f:
        f.write("\n".join(side_by_side(report, base)) + "\n")
    return report


def side_by_side(report: dict, base: dict) -> list[str]:
    """Markdown lines: ours and the kNN baseline per category and their means."""
    keys = [k for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "balanced_accuracy") if k in report["mean"]]
    nan = float("nan")
    lines = ["", "## Ours vs plain kNN baseline (same run)", "",
             "| category | " + " | ".join(f"{k} ours | {k} knn" for k in keys) + " |", "|---|" + "---|---|" * len(keys)]
    for name, c in report["categories"].items():
        b = base["categories"].get(name, {})
        lines.append(f"| {name} | " + " | ".join(f"{c.get(k, nan):.3f} | {b.get(k, nan):.3f}" for k in keys) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{report['mean'][k]:.3f}** | {base['mean'].get(k, nan):.3f}"
                                             for k in keys) + " |")
    return lines
