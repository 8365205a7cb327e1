"""Reference fit time: seconds to fit the expert on k good parts (memory bank, null calibration, golden templates).

    python bench/fit_speed.py --data DIR [DIR ...] [--shots 1,4] [--repeats 3] [--config offline-small]

For every MVTec-layout category and k, the first k images of train/good are fitted once to warm up, then `--repeats`
times; the table gives the median seconds. Never part of `make test`.
"""
from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="MVTec-layout category folders")
    p.add_argument("--shots", default="1,4")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--config", default="offline-small")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    import torch

    from assistant.cli_args import parse_int_list
    from assistant.config import load_config
    from assistant.evaluation.data import discover
    from assistant.expert import load_expert
    from assistant.imaging import load_image

    torch.set_num_threads(2)
    cfg = load_config(args.config, args.overrides)
    tower, expert = load_expert(cfg)
    print(f"\nReference fit time ({args.config}, alignment {cfg.expert.alignment}; median of {args.repeats})\n")
    print("| category | k | fit s |\n|---|---|---|")
    for cat in discover(args.data):
        for k in parse_int_list(args.shots, "--shots", minimum=1):
            refs = [load_image(f) for f in cat.train_good[:k]]
            expert.fit_references(tower, refs, seed=0)  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                expert.fit_references(tower, refs, seed=0)
                times.append(time.perf_counter() - t0)
            print(f"| {cat.name} | {k} | {statistics.median(times):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
