"""Write MMAD-format multiple-choice questions for MVTec-layout folders (your own labelled parts).

    python -m assistant.evaluation.data.mvtec_to_mmad --data DIR [DIR ...] --data-root ROOT --out mmad.json
        [--per-class N] [--seed 0]

Each DIR must lie under ROOT (keys are paths relative to ROOT, the category being the first two
parts, so put categories one folder below ROOT, as MMAD does). Questions come from the labels only:
Anomaly Detection (every image), Object Classification (every image; distractors are the other
categories' names), and for anomalous images Defect Classification (the defect folder; distractors the
category's other defect types), Defect Localization (3x3 position of the mask centroid) and Defect
Description (size word of the mask area). Options are shuffled with the seed. "similar_templates" are
the train/good images closest to the query in a 32x32 thumbnail; "random_templates" a seeded sample.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import numpy as np

from assistant.evaluation.data.mvtec import discover
from assistant.imaging import load_image, load_mask
from assistant.wording import POSITION_WORDS, SIZE_WORDS, position_word, size_word

OTHER_DEFECTS = ["scratch", "contamination", "crack", "hole", "missing part", "discoloration"]  # distractor pool
OTHER_OBJECTS = ["bottle", "screw", "cable", "wood", "leather", "capsule"]  # distractor pool


def _thumb(path: str) -> np.ndarray:
    return np.asarray(load_image(path).convert("L").resize((32, 32)), dtype=np.float32).reshape(-1) / 255.0


def _options(correct: str, distractors: list[str], rng: random.Random, n: int = 4) -> tuple[dict[str, str], str]:
    pool = [d for d in dict.fromkeys(distractors) if d != correct]
    rng.shuffle(pool)
    texts = [correct] + pool[: n - 1]
    rng.shuffle(texts)
    opts = {chr(65 + i): t for i, t in enumerate(texts)}
    return opts, chr(65 + texts.index(correct))


def _q(question: str, qtype: str, correct: str, distractors: list[str], rng: random.Random, n: int = 4) -> dict:
    opts, ans = _options(correct, distractors, rng, n)
    return {"Question": question, "Options": opts, "Answer": ans, "type": qtype}


def build(data: list[str], data_root: str, per_class: int | None = None, seed: int = 0, n_templates: int = 4) -> dict:
    """The mmad.json dict for the given MVTec-layout folders."""
    root = Path(os.path.abspath(data_root))
    rng = random.Random(seed)
    cats = discover(data)
    names = {c.name: c.name.split("__")[-1].replace("_", " ") for c in cats}
    out: dict = {}
    for cat in cats:
        croot = Path(os.path.abspath(cat.root))
        try:
            rel_cat = croot.relative_to(root)
        except ValueError:
            raise ValueError(f"{cat.root} is not under --data-root {root}") from None
        if len(rel_cat.parts) != 2:
            raise ValueError(f"{cat.root}: put categories exactly two folders below --data-root "
                             f"(ROOT/DATASET/CATEGORY), got {rel_cat}")
        if not cat.train_good:
            raise ValueError(f"{cat.root}: train/good has no images for the templates")
        thumbs = np.stack([_thumb(p) for p in cat.train_good])
        defects = sorted({it.defect for it in cat.items if it.label == 1})
        items = cat.items
        if per_class:
            by: dict[str, list] = {}
            for it in items:
                by.setdefault(it.defect, []).append(it)
            items = [it for d in sorted(by) for it in sorted(by[d], key=lambda x: x.image)[:per_class]]
        obj = names[cat.name]
        for it in items:
            key = str(Path(os.path.abspath(it.image)).relative_to(root))
            dist = np.abs(thumbs - _thumb(it.image)).mean(1)
            similar = [str(Path(os.path.abspath(cat.train_good[i])).relative_to(root))
                       for i in np.argsort(dist)[:n_templates]]
            randoms = [str(Path(os.path.abspath(p)).relative_to(root))
                       for p in rng.sample(cat.train_good, min(n_templates, len(cat.train_good)))]
            conv = [_q("Is there any defect in the object?", "Anomaly Detection", "Yes." if it.label else "No.",
                       ["Yes.", "No."], rng, 2),
                    _q("What kind of object is shown in the image?", "Object Classification", obj,
                       [n for n in names.values() if n != obj] + OTHER_OBJECTS, rng)]
            entry = {"conversation": conv, "similar_templates": similar, "random_templates": randoms}
            if it.label:
                kind = it.defect.replace("_", " ")
                if kind not in ("unknown defect", "anomaly"):
                    conv.append(_q("What type of defect is present on the object?", "Defect Classification", kind,
                                   [d.replace("_", " ") for d in defects] + OTHER_DEFECTS, rng))
                if it.mask:
                    m = load_mask(it.mask)
                    ys, xs = np.nonzero(m)
                    if len(ys):
                        h, w = m.shape
                        pos = position_word(ys.mean() / h, xs.mean() / w)
                        conv.append(_q("Where is the defect located in the image?", "Defect Localization", pos,
                                       [p for row in POSITION_WORDS for p in row], rng))
                        conv.append(_q("How large is the defective area compared with the object?",
                                       "Defect Description", size_word(float(m.mean())), [w for _, w in SIZE_WORDS],
                                       rng))
                    entry["mask_path"] = str(Path(os.path.abspath(it.mask)).relative_to(croot))
            out[key] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, help="MVTec-layout category folder(s) under --data-root")
    p.add_argument("--data-root", required=True, help="root the keys are relative to")
    p.add_argument("--out", required=True, help="mmad.json to write")
    p.add_argument("--per-class", type=int, default=None, help="at most N test images per defect folder (and good)")
    p.add_argument("--seed", type=int, default=0, help="option order and random templates")
    a = p.parse_args(argv)
    data = build(a.data, a.data_root, a.per_class, a.seed)
    Path(a.out).write_text(json.dumps(data, indent=1))
    n_q = sum(len(v["conversation"]) for v in data.values())
    print(f"{len(data)} images, {n_q} questions -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
