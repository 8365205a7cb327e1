"""Synthesis speed: samples/s per method at 256 px on procedural parts/surfaces, and the full build mix
(render + synthesize + PNG writes + texts) with 1 and 2 workers. Prints one table.

    OMP_NUM_THREADS=1 python bench/synth_speed.py [--size 256] [--per-method 24] [--build 120]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time

import numpy as np

from data_synth import METHODS, synthesize
from data_synth.build import BuildSettings, build
from data_synth.sources import ProceduralSource


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (load-independent cost)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--per-method", type=int, default=24, help="samples per method")
    ap.add_argument("--build", type=int, default=120, help="samples in each end-to-end build")
    args = ap.parse_args()
    src = ProceduralSource()
    cats = src.categories()
    gen = np.random.default_rng(0)
    pool = [(src.sample(c, gen, args.size), src.sample(c, gen, args.size), c.is_object) for c in cats]
    rows = []
    t0 = time.perf_counter()
    for c in cats[:8]:
        src.sample(c, gen, args.size)
    rows.append(("render normal (procedural)", 8 / (time.perf_counter() - t0), None, "-"))
    for m in METHODS:
        rng = np.random.default_rng(1)
        fallbacks = 0
        t0, c0 = time.perf_counter(), cpu_seconds()
        for i in range(args.per_method):
            img, other, obj = pool[i % len(pool)]
            fallbacks += synthesize(img, m, rng, other=other, is_object=obj).meta["fallback"] is not None
        rows.append((f"synthesize {m}", args.per_method / (time.perf_counter() - t0),
                     args.per_method / (cpu_seconds() - c0), f"{fallbacks}/{args.per_method}"))
    for workers in (1, 2):
        out = tempfile.mkdtemp(prefix="synth_bench_")
        try:
            t0, c0 = time.perf_counter(), cpu_seconds()
            r = build([ProceduralSource()], out, args.build, BuildSettings(size=args.size), workers=workers,
                      progress=False)
            total, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            rows.append((f"build mix, {workers} worker(s), samples only", args.build / r["seconds_samples"], None, "-"))
            rows.append((f"build mix, {workers} worker(s), incl. ref pools", args.build / total, args.build / cpu, "-"))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    print(f"# data_synth speed, {args.size} px, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus visible, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
    print(f"(build = render + synthesize + PNG writes + texts + conversations; ref pools = {r['references']} "
          f"reference normals written once per build)")
    load = os.getloadavg()[0]
    print(f"(samples/s = wall clock, load average {load:.1f}; per CPU-s = samples per CPU-second, load-independent; "
          "x2 = what 2 free cores give)")
    print(f"| {'what':<44} | {'samples/s':>9} | {'per CPU-s':>9} | {'fallbacks':>9} |")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 11}|{'-' * 11}|")
    for name, rate, per_cpu, fb in rows:
        pc = f"{per_cpu:9.1f}" if per_cpu else f"{'-':>9}"
        print(f"| {name:<44} | {rate:>9.1f} | {pc} | {fb:>9} |")


if __name__ == "__main__":
    main()
