"""`python -m training defect-type`: fit the defect-type classifier (assistant/expert/defect_type.py).

For every anomalous sample of the data_synth builds (aligned pairs excluded: their change names the type), the
expert is run as it is served (one reference normal of the sample's category) and the flagged region that overlaps
the ground-truth mask most is measured (expert/describe.py), and the tower's patch tokens are averaged over it
(defect_type.region_tokens; only with --inputs descriptors+tower); its label is the vocabulary word of the method
that drew the defect (METHOD_TYPES). Features are cached in OUT/features.npz, so a rerun only refits. A held-out share
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
    p.add_argument("--inputs", choices=("descriptors", "descriptors+tower"), default="descriptors",
                   help="what the classifier reads: the measured descriptors (shipped), or also the tower's tokens "
                        "averaged over the region (more types named on real parts, more of them wrongly: "
                        "docs/results.md)")


def region_descriptor(expert, tower, state, rec: dict):
    """(descriptor, region tokens) of the flagged region overlapping the sample's mask most, or None when none
    does."""
    import torch

    from assistant.expert.defect_type import region_tokens
    from assistant.expert.describe import box_region
    from assistant.imaging import load_image, load_mask

    img = load_image(rec["image"])
    side = tower.image_size
    with torch.no_grad():
        out = tower.encode([img])
        res = expert.predict(out, state, (side, side), images=[img], tower=tower)[0]
    gt = load_mask(rec["mask"], (side, side))
    hits = [(int(gt[b.y0:b.y1, b.x0:b.x1].sum()), i) for i, b in enumerate(res.boxes) if b.descriptor is not None]
    hits = [h for h in hits if h[0] > 0]
    if not hits:
        return None
    top = res.boxes[max(hits)[1]]
    return top.descriptor, region_tokens(out, box_region(res.pred_mask, top))


def collect(args, records: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], tuple]:
    """(N, F) descriptor features, (N, T) region tokens, (N,) type indices, the sample ids of the located regions and
    the tower's level channel counts; cached in OUT/features.npz."""
    from assistant.config import load_config
    from assistant.expert import load_expert
    from assistant.expert.defect_type import METHOD_TYPES, VOCABULARY
    from assistant.expert.describe import FEATURES, features
    from assistant.imaging import load_image

    cache = Path(args.out) / "features.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if (list(z["names"]) == list(FEATURES) and len(z["ids"]) and z["n_records"] == len(records)
                and "tokens" in z):
            return z["x"], z["tokens"], z["y"], [str(i) for i in z["ids"]], tuple(int(c) for c in z["dims"])
    tower, expert = load_expert(load_config(args.config, args.overrides))
    expert.set_type_classifier(None)  # the descriptors only (a shipped classifier's naming is not needed here)
    states, xs, toks, ys, ids = {}, [], [], [], []
    for rec in tqdm(records, desc="measuring regions"):
        key = rec["references"][0]
        if key not in states:
            states[key] = expert.fit_references(tower, [load_image(key)], seed=args.seed)
        got = region_descriptor(expert, tower, states[key], rec)
        if got is not None:
            xs.append(features(got[0]))
            toks.append(got[1])
            ys.append(VOCABULARY.index(METHOD_TYPES[rec["method"]]))
            ids.append(f"{rec['build']}:{rec['id']}")
    x, tokens, y = np.stack(xs), np.stack(toks), np.array(ys, np.int64)
    dims = np.array(tower.level_dims)
    np.savez(cache, x=x, tokens=tokens, y=y, ids=np.array(ids), names=np.array(FEATURES), n_records=len(records),
             dims=dims)
    return x, tokens, y, ids, tuple(int(c) for c in dims)


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
    x, tokens, y, ids, dims = collect(args, records)
    if args.inputs == "descriptors+tower":
        x = np.hstack([x, tokens])
    else:
        dims = ()
    rng = np.random.default_rng(args.seed)
    held = rng.random(len(y)) < args.heldout
    clf = fit_probabilities(x[~held], y[~held], VOCABULARY, c=args.c, tower_dims=dims)
    import torch

    with torch.no_grad():
        probs = clf(torch.from_numpy(x[held])).numpy()
    threshold, prec, coverage = pick_threshold(probs, y[held], args.precision)
    accuracy = float((probs.argmax(1) == y[held]).mean())
    final = fit_probabilities(x, y, VOCABULARY, c=args.c, tower_dims=dims)
    final.threshold = threshold
    counts = {t: int((y == i).sum()) for i, t in enumerate(VOCABULARY)}
    meta = {"command": "python -m training defect-type " + " ".join(sys.argv[2:]), "data": args.data,
            "inputs": args.inputs, "samples": len(records), "located": len(y), "per_type": counts,
            "heldout": int(held.sum()),
            "heldout_accuracy": round(accuracy, 4), "heldout_named_precision": round(prec, 4),
            "heldout_coverage": round(coverage, 4), "seconds": round(time.time() - t0, 1)}
    final.save(out, meta)
    print(json.dumps({k: v for k, v in meta.items() if k != "command"}))
    return 0
