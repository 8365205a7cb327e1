"""Generated MMAD-style data and a deterministic fake answerer for the evaluation tests (no real images)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from assistant.expert import AnomalyResult

TYPES = ["Anomaly Detection", "Defect Classification", "Defect Localization", "Object Classification"]


def _img(path: Path, defect: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = (rng.random((32, 32, 3)) * 40 + 100).astype(np.uint8)
    if defect:
        a[8:16, 8:16] = 250
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def make_mmad(root: Path, n_good: int = 3, n_bad: int = 3, categories=("bottle", "screw")) -> Path:
    """A tiny MMAD tree (DS/<cat>/{train,test,ground_truth}) and its mmad.json; returns the json path."""
    data = {}
    seed = 0
    for cat in categories:
        base = root / "DS" / cat
        for i in range(2):
            seed += 1
            _img(base / "train" / "good" / f"{i:03d}.png", False, seed)
        for kind, n in (("good", n_good), ("crack", n_bad)):
            for i in range(n):
                seed += 1
                rel = f"DS/{cat}/test/{kind}/{i:03d}.png"
                _img(root / rel, kind != "good", seed)
                conv = [{"Question": "Is there any defect in the object?", "Options": {"A": "Yes.", "B": "No."},
                         "Answer": "A" if kind != "good" else "B", "type": "Anomaly Detection"},
                        {"Question": "What kind of object is this?", "Options": {"A": cat, "B": "cable", "C": "wood"},
                         "Answer": "A", "type": "Object Classification"}]
                entry = {
                    "conversation": conv,
                    "similar_templates": [f"DS/{cat}/train/good/000.png", f"DS/{cat}/train/good/001.png"],
                    "random_templates": [f"DS/{cat}/train/good/001.png"],
                }
                if kind != "good":
                    m = np.zeros((32, 32), np.uint8)
                    m[8:16, 8:16] = 255
                    (base / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(m).save(base / "ground_truth" / kind / f"{i:03d}_mask.png")
                    entry["mask_path"] = f"ground_truth/{kind}/{i:03d}_mask.png"
                    entry["conversation"].append(
                        {
                            "Question": "Where is the defect?",
                            "Options": {"A": "Top left.", "B": "Center.", "C": "Bottom right."},
                            "Answer": "A",
                            "type": "Defect Localization",
                        }
                    )
                data[rel] = entry
    path = root / "mmad.json"
    path.write_text(json.dumps(data, indent=1))
    return path


@dataclass
class FakeEvidence:
    result: AnomalyResult
    image: str


class FakeAnswerer:
    """Scores an image by its brightest 8x8 block; answers in varied formats (some wrong on purpose)."""

    def __init__(self):
        self.analyzed = 0
        self.answered = 0

    def analyze(self, query, references=()):
        self.analyzed += 1
        a = np.asarray(Image.open(query).convert("L"), dtype=np.float32) / 255.0
        amap = a.copy()
        score = float(amap.max())
        return FakeEvidence(AnomalyResult(anomaly_map=amap, pred_score=score, pred_label=score > 0.8,
                                          pred_mask=amap > 0.8, threshold=0.8), str(query))

    def answer(self, evidence, question: str) -> str:
        self.answered += 1
        h = sum(map(ord, evidence.image + question)) % 5
        if question.startswith("Is this part defective"):  # free-text yes/no (JSONL without options)
            return "Yes, there is a bright blob." if evidence.result.pred_label else "No, it looks normal."
        if question.startswith("Is there any defect"):
            yes = evidence.result.pred_label
            return ["Answer: A." if yes else "Answer: B.", "a" if yes else "b",
                    "The answer is A" if yes else "The answer is B", "Yes" if yes else "No.",
                    "B" if yes else "A"][h]  # the last form is deliberately wrong
        if question.startswith("What kind"):
            return ["Answer: A.", "C", "(A)", "b", "option A"][h]
        return ["Answer: A.", "Center.", "top left", "Answer: C.", ""][h]


class BatchFakeAnswerer(FakeAnswerer):
    """The same answers through answer_batch (as the Assistant offers); counts batch calls."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def answer_batch(self, evidences, questions):
        self.batches += 1
        return [FakeAnswerer.answer(self, e, q) for e, q in zip(evidences, questions)]
