"""Does the expert notice a reference that does not show the query's part? (AnomalyResult.reference_mismatch)

    python bench/reference_check.py --data DIR [DIR ...] [--config configs/offline-small.yaml] [--seeds 0,1,2]

Every MVTec-layout category is used both as a source of references and as a source of queries. For each seed and
each category R, one reference is drawn from R's train/good (random.Random(seed).sample, as in `evaluate`), the
expert is fitted on it, and every test image of every category Q is predicted against it. A pair R = Q is a
matching reference, so a flag there is a false warning (split into good and defective queries); R != Q is a
wrong reference, so a flag there is the check doing its job. Prints one table: the share of queries flagged per
(reference, query) pair, with the median map value (the statistic that is compared with the fitted cut).
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, help="MVTec-layout categories (or folders of them)")
    p.add_argument("--config", default="configs/offline-small.yaml")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    from assistant.cli_args import parse_int_list
    from assistant.config import load_config
    from assistant.evaluation.data import discover, sample_references
    from assistant.evaluation.expert.runner import encode_items, slice_features
    from assistant.expert import load_expert
    from assistant.imaging import load_image

    cfg = load_config(args.config, overrides=args.overrides)
    tower, expert = load_expert(cfg)
    if expert.reference_mismatch is None:
        print(f"{cfg.expert.checkpoint}: this expert has no fitted reference_mismatch cut (retrain it with "
              "`python -m training expert`); nothing to check", file=sys.stderr)
        return 2
    cats = [c for c in discover(args.data) if c.items and c.train_good]
    if not cats:
        print(f"no category with test images and train/good under {args.data}", file=sys.stderr)
        return 2
    seeds = parse_int_list(args.seeds, "--seeds")
    size = (tower.image_size, tower.image_size)
    t0 = time.perf_counter()
    feats = {c.name: encode_items(tower, c.items, 16, c.name) for c in cats}
    flags: dict[tuple[str, str], list[tuple[int, bool, float]]] = {}  # (ref cat, query cat) -> (label, flag, median)
    for seed in seeds:
        for rc in cats:
            refs = sample_references(rc.train_good, 1, seed)
            state = expert.fit_references(tower, [load_image(r) for r in refs], seed=seed)
            for qc in cats:
                n = len(qc.items)
                res = []
                for j in range(0, n, 16):
                    res += expert.predict(slice_features(feats[qc.name], list(range(j, min(j + 16, n)))), state, size)
                flags.setdefault((rc.name, qc.name), []).extend(
                    (it.label, r.reference_mismatch, r.reference_median) for it, r in zip(qc.items, res))
    print(f"reference mismatch cut {expert.reference_mismatch:.3f} (fitted on synthetic categories); "
          f"1 reference, seeds {args.seeds}; {time.perf_counter() - t0:.0f} s\n")
    print_table(flags)
    return 0


def print_table(flags: dict) -> None:
    """One row per (reference category, query category), then the pooled same-part and other-part shares."""
    import numpy as np

    print("| reference | query | pair | queries | flagged | flagged good | flagged defective | median map value |")
    print("|---|---|---|---|---|---|---|---|")
    same, other = [], []
    for (rn, qn), rows in flags.items():
        lab = np.array([r[0] for r in rows])
        fl = np.array([r[1] for r in rows])
        med = np.array([r[2] for r in rows])
        kind = "same part" if rn == qn else "other part"
        (same if rn == qn else other).append(fl)
        good = f"{fl[lab == 0].mean():.3f}" if (lab == 0).any() else "–"
        bad = f"{fl[lab == 1].mean():.3f}" if (lab == 1).any() else "–"
        print(f"| {rn} | {qn} | {kind} | {len(rows)} | {fl.mean():.3f} | {good} | {bad} | {np.median(med):.2f} |")
    if same:
        print(f"| **all** | | **same part (false warnings)** | {sum(map(len, same))} | "
              f"**{np.concatenate(same).mean():.3f}** | | | |")
    if other:
        print(f"| **all** | | **other part (caught)** | {sum(map(len, other))} | "
              f"**{np.concatenate(other).mean():.3f}** | | | |")


if __name__ == "__main__":
    raise SystemExit(main())
