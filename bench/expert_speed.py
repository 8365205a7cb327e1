"""Expert speed (and optionally quality) benchmark: ours vs the plain nearest-neighbour baseline.

    python bench/expert_speed.py [--config offline-small] [--shots 1,16] [--batches 1,16] [--repeats 20]
                                 [--pair QUERY REFERENCE] [--data DIR ... --seeds 0,1,2]

Speed: ms/image at the config's image size (tower forward + expert predict; references fitted once,
not timed) for batch 1 and batch 16, 1-shot and 16-shot, and the peak RSS of a process that does only
that (each row runs in a fresh subprocess). `--shots 0,1,16` adds the single-image zero-shot path (in-image
rarity; its threshold comes from anomalies synthesized on each query, which the timing includes). With --data,
--pair times a golden-template pair instead of random images: the query (repeated to fill the batch) against
its reference (1 shot), so registration and the aligned path are timed when the reference registers; the
`path` column says which path the timed predictions took. With --data,
the same run also evaluates both detectors (1-shot, the given seeds) and prints image/pixel AUROC and
balanced accuracy side by side.
Never part of `make test`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def method_config(args, method: str):
    """The config of one method row: ours, or the plain kNN detector of `evaluate --baseline knn`
    (assistant.evaluation.expert.baselines.KNN_OVERRIDES: one definition for the bench and the evaluation)."""
    from assistant.config import load_config
    from assistant.evaluation.expert.baselines import knn_config

    return (
        knn_config(args.config, args.overrides)
        if method == "knn-baseline"
        else load_config(args.config, args.overrides)
    )


def _images(n: int, size: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def one(args) -> dict:
    """Time one (method, shots, batch) row in this process."""
    import torch

    from assistant.expert import load_expert

    torch.set_num_threads(args.threads)
    cfg = method_config(args, args.method)
    tower, expert = load_expert(cfg)
    size = tower.image_size
    if args.pair:
        from assistant.imaging import load_image

        query, ref = (load_image(p) for p in args.pair)
        refs, queries = [ref], [query] * args.batch
    else:
        refs, queries = _images(args.shots, size, 0), _images(args.batch, size, 1)
    state = expert.fit_references(tower, refs)
    device = tower.device
    paths = set()

    def step():
        with torch.no_grad():
            out = tower.encode(queries)
            # images: the zero-shot path calibrates on them, the aligned path registers them
            paths.update(r.alignment or r.path for r in expert.predict(out, state, (size, size), images=queries,
                                                                       tower=tower))
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    times.sort()
    cpu.sort()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB -> MiB
    return {"method": args.method, "shots": len(refs), "batch": args.batch, "device": str(device),
            "path": "+".join(sorted(paths)),
            "ms_per_image": 1000 * times[len(times) // 2] / args.batch,
            "ms_per_image_p90": 1000 * times[int(len(times) * 0.9)] / args.batch,
            "cpu_ms_per_image": 1000 * cpu[len(cpu) // 2] / args.batch, "peak_rss_mb": rss}


def quality(args) -> list[dict]:
    from assistant.evaluation.data import discover
    from assistant.evaluation.expert.report import build_report
    from assistant.evaluation.expert.runner import evaluate
    from assistant.expert import load_expert

    rows = []
    cats = discover(args.data)
    for method in ("ours", "knn-baseline"):
        cfg = method_config(args, method)
        tower, expert = load_expert(cfg)
        res = evaluate(expert, tower, cats, 1, args.seeds)
        rep = build_report(res, 1, args.seeds, {})
        rows.append({"method": method, **{k: rep["mean"].get(k) for k in
                                          ("image_auroc", "pixel_auroc", "pixel_aupro", "balanced_accuracy")}})
    return rows


def print_speed(rows: list[dict], args) -> None:
    print(
        f"\nExpert speed ({args.config}, {args.threads} threads; median of {args.repeats}; tower + expert per image)\n"
    )
    print("(CPU ms = process CPU time summed over threads: on a busy shared machine wall time is inflated by other")
    print(" jobs; CPU ms / threads is the wall time to expect on idle cores with perfect threading)\n")
    print("| method | shots | batch | path | device | ms/image | p90 ms/image | CPU ms/image | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['shots']} | {r['batch']} | {r['path']} | {r['device']} | "
              f"{r['ms_per_image']:.1f} | {r['ms_per_image_p90']:.1f} | {r['cpu_ms_per_image']:.1f} | "
              f"{r['peak_rss_mb']:.0f} |")


def print_quality(args) -> None:
    from assistant.cli_args import parse_int_list

    args.seeds = parse_int_list(args.seeds, "--seeds")
    q = quality(args)
    print(f"\nQuality, 1-shot, seeds {args.seeds}, mean over {len(args.data)} folder(s)\n")
    print("| method | image AUROC | pixel AUROC | AUPRO | balanced acc. |")
    print("|---|---|---|---|---|")
    keys = ("image_auroc", "pixel_auroc", "pixel_aupro", "balanced_accuracy")
    for r in q:
        print(f"| {r['method']} | " + " | ".join(f"{r[k]:.3f}" if r[k] is not None else "–" for k in keys) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="offline-small")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--shots", default="1,16")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--methods", default="ours,knn-baseline")
    p.add_argument("--pair", nargs=2, default=None, metavar=("QUERY", "REFERENCE"),
                   help="time this golden-template pair (1 shot) instead of random images")
    p.add_argument("--data", nargs="*", default=None, help="MVTec-layout folders for the side-by-side quality table")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--shot", dest="shots_one", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        args.shots = args.shots_one
        print(json.dumps(one(args)))
        return 0
    rows = []
    for method in args.methods.split(","):
        for shots in (int(s) for s in args.shots.split(",")):
            if shots == 0 and method == "knn-baseline":  # a nearest-neighbour detector needs references
                continue
            for batch in (int(b) for b in args.batches.split(",")):
                cmd = [sys.executable, __file__, "--one", "--config", args.config, "--method", method,
                       "--shot", str(shots), "--batch", str(batch), "--repeats", str(args.repeats),
                       "--threads", str(args.threads)] + [x for o in args.overrides for x in ("--set", o)]
                cmd += ["--pair", *args.pair] if args.pair else []
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    return out.returncode
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print_speed(rows, args)
    if args.data:
        print_quality(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
