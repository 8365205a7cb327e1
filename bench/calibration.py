"""Verdict calibration on labelled folders: calibrated threshold against the oracle one, per reference count.

    python bench/calibration.py --data DIR [DIR ...] [--shots 1,4,16] [--seeds 0,1,2] [--config offline-small]
                                [--set expert.calibration=margin] [--lot] [--out rows.json]

For every category, reference count k and seed: the expert is fitted on k references drawn from train/good (as
`evaluate` draws them) and scores the test images; the table gives, averaged over the seeds:
- image AUROC, and AUROC free: the AUROC of the free path's scores of the same images (where the aligned path judged
  an image, the free path's score recorded beside it; no second run), with the aligned share (images that took the
  aligned path);
- balanced accuracy, miss and overkill at the calibrated threshold, and the balanced accuracy at the oracle threshold
  (the best single threshold on these labels: what no calibration can beat);
- the review rate (share of borderline verdicts) and, over the images decided outside the review band, the balanced
  accuracy, overkill (decided good parts flagged) and miss (decided defective parts passed).
Folders without ground_truth/ (image-level labels) work: no pixel metric is computed. The header names the config,
shots, seeds and lot; `--out FILE` also writes the rows as JSON ({"settings": ..., "rows": [{"k", "category",
metric: value or null}]}) so runs can be merged later. One table per run; never part of `make test`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# (row key, column header), in table order; every key but "oracle" is a metric of the evaluation runner
COLUMNS = [("image_auroc", "image AUROC"), ("image_auroc_free", "AUROC free"), ("aligned_share", "aligned share"),
           ("balanced_accuracy", "balanced acc."), ("miss", "miss"), ("overkill", "overkill"),
           ("oracle", "oracle balanced acc."), ("review_rate", "review rate"),
           ("balanced_accuracy_outside_review", "balanced acc. outside review"),
           ("overkill_outside_review", "overkill outside review"), ("miss_outside_review", "miss outside review")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="MVTec-layout category folders")
    p.add_argument("--shots", default="1,4,16")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--config", default="offline-small")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--lot", action="store_true", help="each test folder is one lot (expert.lot_decide)")
    p.add_argument("--out", help="also write the rows as JSON to this file")
    return p.parse_args(argv)


def seed_mean(runs, key: str) -> float:
    """Mean over the seeds that have the metric (nan when none has it: e.g. no decided defective part)."""
    vals = [r.metrics[key] for r in runs if r.metrics.get(key) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def category_row(res) -> dict:
    """The table's figures for one category's seed runs."""
    from assistant.evaluation.expert.metrics import best_balanced_accuracy

    m = {key: seed_mean(res.runs, key) for key, _ in COLUMNS if key != "oracle"}
    m["oracle"] = float(np.mean([best_balanced_accuracy(r.labels, r.scores) for r in res.runs]))
    return m


def mean_row(per_k: list[dict]) -> dict:
    """Mean over the categories of each figure (those that have it)."""
    out = {}
    for key, _ in COLUMNS:
        vals = [m[key] for m in per_k if not np.isnan(m[key])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    return out


def run_rows(args, tower, expert) -> list[dict]:
    """[{"k", "category", figure: value}] per reference count: each category, then their mean."""
    from assistant.cli_args import parse_int_list
    from assistant.evaluation.data import discover, skip_reason
    from assistant.evaluation.expert.runner import evaluate_category

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
            per_k.append({"k": k, "category": cat.name, **category_row(res)})
        rows += per_k
        if per_k:
            rows.append({"k": k, "category": "**mean**", **mean_row(per_k)})
    return rows


def settings(args, cfg) -> dict:
    """What the run was: config, overrides, calibration rule, shots, seeds, lot, folders."""
    from assistant.cli_args import parse_int_list

    rule = cfg.expert.calibration + (f", target_overkill {cfg.expert.target_overkill}"
                                     if cfg.expert.calibration == "null" else "")
    return {"config": args.config, "overrides": list(args.overrides), "calibration": rule,
            "shots": parse_int_list(args.shots, "--shots", minimum=0), "seeds": parse_int_list(args.seeds, "--seeds"),
            "lot": bool(args.lot), "data": [str(d) for d in args.data]}


def table(rows: list[dict], s: dict) -> str:
    """The Markdown table with its header line (config, shots, seeds, lot); a missing figure is shown as –."""
    over = f" ({', '.join(s['overrides'])})" if s["overrides"] else ""
    shots, seeds = ",".join(map(str, s["shots"])), ",".join(map(str, s["seeds"]))
    lines = [f"Calibration: config {s['config']}{over}, calibration {s['calibration']}; shots {shots}; "
             f"seeds {seeds}; lot {'yes' if s['lot'] else 'no'}", "",
             "| k | category | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = ["–" if np.isnan(r[key]) else f"{r[key]:.3f}" for key, _ in COLUMNS]
        lines.append(f"| {r['k']} | {r['category']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: str, rows: list[dict], s: dict) -> None:
    """{"settings", "rows"}; a missing figure (nan) is written as null."""
    clean = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in rows]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"settings": s, "rows": clean}, indent=1) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from assistant.config import load_config
    from assistant.expert import load_expert

    torch.set_num_threads(2)
    cfg = load_config(args.config, args.overrides)
    tower, expert = load_expert(cfg)
    s = settings(args, cfg)
    rows = run_rows(args, tower, expert)
    print("\n" + table(rows, s))
    if args.out:
        write_json(args.out, rows, s)
        print(f"\nrows: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
