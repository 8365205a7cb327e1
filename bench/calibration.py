"""Verdict calibration on labelled folders: calibrated threshold against the oracle one, per reference count.

    python bench/calibration.py --data DIR [DIR ...] [--shots 1,4,16] [--seeds 0,1,2] [--config offline-small]
                                [--set expert.calibration=margin]

For every category, reference count k and seed: the expert is fitted on k references drawn from train/good (as
`evaluate` draws them) and scores the test images; the table gives balanced accuracy, miss and overkill at the
calibrated threshold, the balanced accuracy at the oracle threshold (the best single threshold on these labels:
what no calibration can beat), the review rate (share of borderline verdicts) and the balanced accuracy outside
the review band. One table; never part of `make test`.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="MVTec-layout category folders")
    p.add_argument("--shots", default="1,4,16")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--config", default="offline-small")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--lot", action="store_true", help="each test folder is one lot (expert.lot_decide)")
    args = p.parse_args(argv)
    import torch

    from assistant.cli_args import parse_int_list
    from assistant.config import load_config
    from assistant.evaluation.data import discover, skip_reason
    from assistant.evaluation.expert.metrics import best_balanced_accuracy
    from assistant.evaluation.expert.runner import evaluate_category
    from assistant.expert import load_expert

    torch.set_num_threads(2)
    cfg = load_config(args.config, args.overrides)
    tower, expert = load_expert(cfg)
    cats = discover(args.data)
    seeds = parse_int_list(args.seeds, "--seeds")
    rows = []
    for k in parse_int_list(args.shots, "--shots", minimum=0):
        per_k = []
        for cat in cats:
            if skip_reason(cat, k):
                print(f"{cat.name}: skipped at k={k} ({skip_reason(cat, k)})", file=sys.stderr)
                continue
            res = evaluate_category(expert, tower, cat, k, seeds, pixel=False, lot=args.lot)
            m = {key: float(np.mean([r.metrics.get(key, np.nan) for r in res.runs]))
                 for key in ("balanced_accuracy", "miss", "overkill", "review_rate", "balanced_accuracy_outside_review",
                             "image_auroc")}
            m["oracle"] = float(np.mean([best_balanced_accuracy(r.labels, r.scores) for r in res.runs]))
            per_k.append((cat.name, m))
        rows += [(k, name, m) for name, m in per_k]
        if per_k:
            rows.append((k, "**mean**", {key: float(np.nanmean([m[key] for _, m in per_k])) for key in per_k[0][1]}))
    how = f"{cfg.expert.calibration}" + (f", target_overkill {cfg.expert.target_overkill}"
                                          if cfg.expert.calibration == "null" else "") + (", lot" if args.lot else "")
    print(f"\nCalibration ({how}; seeds {args.seeds})\n")
    print("| k | category | image AUROC | balanced acc. | miss | overkill | oracle balanced acc. | review rate | "
          "balanced acc. outside review |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, name, m in rows:
        print(f"| {k} | {name} | {m['image_auroc']:.3f} | {m['balanced_accuracy']:.3f} | {m['miss']:.3f} | "
              f"{m['overkill']:.3f} | {m['oracle']:.3f} | {m['review_rate']:.3f} | "
              f"{m['balanced_accuracy_outside_review']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
