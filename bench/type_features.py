"""Which inputs let a defect-type classifier trained on synthetic defects name real ones: the region's measured
descriptors (what ships), the tower's features pooled over the region, or both?

    python bench/type_features.py --synth runs/synth-late --data DIR [DIR ...] [--max-synth 600] [--seed 0]
        [--cache runs/type-features.npz]

For every anomalous data_synth sample whose method maps to the vocabulary (METHOD_TYPES, at most --max-synth), and
every flagged defective test image of the --data folders whose folder type maps to it (describe_check
FOLDER_TYPES; one train/good reference drawn by --seed), the expert is run as served and the flagged box with the
most ground-truth pixels is taken (training/defect_type.py region_descriptor): its descriptor features
(expert/describe.py FEATURES) and the mean of each tower level's patch tokens over the box's region
(region_tokens). For each input set a class-balanced logistic regression is fitted on
75% of the synthetic regions; the other 25% set the abstention threshold (the lowest top probability whose named
types are right on at least --precision, training/defect_type.py pick_threshold). Printed per input set: held-out
synthetic accuracy, and on the dev regions top-1 accuracy, the share named and the accuracy of the named ones.
Features are cached in --cache, so a rerun only refits. One table; never part of `make test`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from describe_check import DEFAULT_DATA, expected_types
from golden import expert_arguments, expert_from_arguments, folder_items


def collect(args, tower, expert) -> dict[str, np.ndarray]:
    """desc, tower, y (type index) and dev (bool) of every located region."""
    from tqdm import tqdm

    from assistant.expert.defect_type import METHOD_TYPES, VOCABULARY
    from assistant.expert.describe import features
    from assistant.imaging import load_image
    from data_synth.build import read_manifest
    from training.defect_type import region_descriptor

    jobs = []  # (image, mask, references, type, dev)
    recs = [r for r in read_manifest(args.synth) if r["label"] and r.get("method") in METHOD_TYPES and r["mask"]]
    jobs += [(r["image"], r["mask"], (r["references"][0],), METHOD_TYPES[r["method"]], False)
             for r in recs[: args.max_synth]]
    for d in args.data:
        for it in folder_items(Path(d), args.seed):
            want = expected_types(it, Path(d).name) if it["label"] and it["mask"] else None
            if want:
                jobs.append((it["image"], it["mask"], tuple(it["references"]), sorted(want)[0], True))
    states, rows = {}, {"desc": [], "tower": [], "y": [], "dev": []}
    for image, mask, refs, kind, dev in tqdm(jobs, desc="regions"):
        if refs not in states:
            states[refs] = expert.fit_references(tower, [load_image(r) for r in refs], seed=args.seed)
        got = region_descriptor(expert, tower, states[refs], {"image": image, "mask": mask})
        if got is not None:  # (a normal verdict has no box, so only flagged defects count)
            row = (features(got[0]), got[1], VOCABULARY.index(kind), dev)
            for k, v in zip(("desc", "tower", "y", "dev"), row):
                rows[k].append(v)
    return {k: np.asarray(v) for k, v in rows.items()}


def evaluate(x: np.ndarray, y: np.ndarray, dev: np.ndarray, precision: float, seed: int) -> dict:
    """Fit on 75% of the synthetic rows, threshold on the rest, judge the dev rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from training.defect_type import pick_threshold

    syn = np.flatnonzero(~dev)
    held = np.zeros(len(y), bool)
    held[syn[np.random.default_rng(seed).random(len(syn)) < 0.25]] = True
    fit = ~dev & ~held
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced"))
    clf.fit(x[fit], y[fit])

    def probs(rows):  # (n, 9) over the whole vocabulary (a type absent from training is never likely)
        p = np.zeros((rows.sum(), 9))
        p[:, clf.classes_] = clf.predict_proba(x[rows])
        return p

    ph, pd = probs(held), probs(dev)
    threshold, _, _ = pick_threshold(ph, y[held], precision)
    named = pd.max(1) >= threshold
    right = pd.argmax(1) == y[dev]
    return {"synthetic held-out acc": float((ph.argmax(1) == y[held]).mean()), "dev acc": float(right.mean()),
            "dev named": float(named.mean()), "dev acc when named": float(right[named].mean()) if named.any()
            else float("nan"), "threshold": threshold, "dev regions": int(dev.sum())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--synth", required=True, help="a data_synth build")
    p.add_argument("--data", nargs="*", default=DEFAULT_DATA, help="MVTec-layout dev folders with masks")
    p.add_argument("--max-synth", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", type=float, default=0.8)
    p.add_argument("--cache", default=None, help="npz of the collected features (reused when present)")
    expert_arguments(p, seeds="0")
    args = p.parse_args(argv)
    if args.cache and Path(args.cache).is_file():
        z = dict(np.load(args.cache, allow_pickle=False))
    else:
        z = collect(args, *expert_from_arguments(args))
        if args.cache:
            np.savez(args.cache, **z)
    dev = z["dev"].astype(bool)
    sets = {"descriptors": z["desc"], "tower": z["tower"], "descriptors + tower": np.hstack([z["desc"], z["tower"]])}
    print(f"\nDefect-type inputs: {int((~dev).sum())} synthetic regions ({args.synth}), {int(dev.sum())} dev regions\n")
    cols = ("synthetic held-out acc", "dev acc", "dev named", "dev acc when named", "threshold")
    print(f"| inputs | {' | '.join(cols)} |\n|---|" + "---|" * len(cols))
    for name, x in sets.items():
        r = evaluate(x, z["y"], dev, args.precision, args.seed)
        print(f"| {name} | {' | '.join(f'{r[c]:.3f}' for c in cols)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
