"""`python -m training defect-type`: fit the defect-type classifier (assistant/expert/defect_type.py).

For every anomalous sample of the data_synth builds (aligned pairs excluded: their change names the type), the
expert is run as it is served (one reference normal of the sample's category) and the flagged region that overlaps
the ground-truth mask most is measured (expert/describe.py); its label is the vocabulary word of the method that
drew the defect (METHOD_TYPES). Features are cached in OUT/features.npz, so a rerun only refits. A held-out share
of the samples sets the abstention threshold: the lowest top probability at which the named types are right on at
least --precision of the held-out regions. The classifier is refitted on all samples and written to OUT
(defect_type.safetensors + defect_type.json with the held-out figures).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, help="data_synth build folders")
    p.add_argument("--out", required=True, help="folder for defect_type.safetensors + defect_type.json")
    p.add_argument("--config", default="offline-small")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-samples", type=int, default=None, help="anomalous samples per build (default all)")
    p.add_argument("--heldout", type=float, default=0.25, help="share of samples that sets the threshold")
    p.add_argument("--precision", type=float, default=0.8, help="held-out share right among the named types")
    p.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    p.add_argument("--seed", type=int, default=0)


def region_descriptor(expert, tower, state, rec: dict):
    """The descriptor of the flagged region overlapping the sample's mask most, or None when none does."""
    import torch

    from assistant.imaging import load_image, load_mask

    img = load_image(rec["image"])
    side = tower.image_size
    with torch.no_grad():
        res = expert.predict(tower.encode([img]), state, (side, side), images=[img], tower=tower)[0]
    gt = load_mask(rec["mask"], (side, side))
    hits = [(int(gt[b.y0:b.y1, b.x0:b.x1].sum()), i) for i, b in enumerate(res.boxes) if b.descriptor is not None]
    hits = [h for h in hits if h[0] > 0]
    return res.boxes[max(hits)[1]].descriptor if hits else None


def collect(args, records: list[dict]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, F) features, (N,) type indices and the sample ids of the located regions; cached in OUT/features.npz."""
    from assistant.config import load_config
    from assistant.expert import load_expert
    from assistant.expert.defect_type import METHOD_TYPES, VOCABULARY
    from assistant.expert.describe import FEATURES, features
    from assistant.imaging import load_image

    cache = Path(args.out) / "features.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if list(z["names"]) == list(FEATURES) and len(z["ids"]) and z["n_records"] == len(records):
            return z["x"], z["y"], [str(i) for i in z["ids"]]
    tower, expert = load_expert(load_config(args.config, args.overrides))
    states, xs, ys, ids = {}, [], [], []
    for rec in tqdm(records, desc="measuring regions"):
        key = rec["references"][0]
        if key not in states:
            states[key] = expert.fit_references(tower, [load_image(key)], seed=args.seed)
        d = region_descriptor(expert, tower, states[key], rec)
        if d is not None:
            xs.append(features(d))
            ys.append(VOCABULARY.index(METHOD_TYPES[rec["method"]]))
            ids.append(f"{rec['build']}:{rec['id']}")
    x, y = np.stack(xs), np.array(ys, np.int64)
    np.savez(cache, x=x, y=y, ids=np.array(ids), names=np.array(FEATURES), n_records=len(records))
    return x, y, ids


def pick_threshold(probs: np.ndarray, y: np.ndarray, precision: float) -> tuple[float, float, float]:
    """(threshold, precision, coverage): the lowest top probability whose named regions are right on at least
    `precision` of them (held-out); 1.0 (never name) when no level reaches it."""
    top, pred = probs.max(1), probs.argmax(1)
    for t in np.unique(np.round(top, 3)):
        named = top >= t
        if named.sum() >= 5 and (pred[named] == y[named]).mean() >= precision:
            return float(t), float((pred[named] == y[named]).mean()), float(named.mean())
    return 1.0, float("nan"), 0.0


def run(args) -> int:
    from assistant.expert.defect_type import METHOD_TYPES, VOCABULARY, fit_probabilities
    from data_synth.build import read_manifest

    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for d in args.data:
        recs = [dict(r, build=Path(d).name) for r in read_manifest(d)
                if r["label"] and r.get("method") in METHOD_TYPES and r["mask"] and r["references"]]
        records += recs[: args.max_samples] if args.max_samples else recs
    if not records:
        print(f"defect-type: no anomalous samples with a method in {sorted(METHOD_TYPES)} in {args.data}",
              file=sys.stderr)
        return 2
    x, y, ids = collect(args, records)
    rng = np.random.default_rng(args.seed)
    held = rng.random(len(y)) < args.heldout
    clf = fit_probabilities(x[~held], y[~held], VOCABULARY, c=args.c)
    import torch

    with torch.no_grad():
        probs = clf(torch.from_numpy(x[held])).numpy()
    threshold, prec, coverage = pick_threshold(probs, y[held], args.precision)
    accuracy = float((probs.argmax(1) == y[held]).mean())
    final = fit_probabilities(x, y, VOCABULARY, c=args.c)
    final.threshold = threshold
    counts = {t: int((y == i).sum()) for i, t in enumerate(VOCABULARY)}
    meta = {"command": "python -m training defect-type " + " ".join(sys.argv[2:]), "data": args.data,
            "samples": len(records), "located": len(y), "per_type": counts, "heldout": int(held.sum()),
            "heldout_accuracy": round(accuracy, 4), "heldout_named_precision": round(prec, 4),
            "heldout_coverage": round(coverage, 4), "seconds": round(time.time() - t0, 1)}
    final.save(out, meta)
    print(json.dumps({k: v for k, v in meta.items() if k != "command"}))
    return 0
