"""Chat speed on this machine: load time, analysis time, time to first token, a 40-token answer, peak RSS.

    python bench/chat_speed.py [--checkpoint checkpoints/offline-small] [--image Q --reference R] [--repeats 3]

Without --image, a scikit-image brick texture with a painted dark stain (query) and a clean crop (reference)
are used. Prints one table (median over repeats) with the targets of the offline-small checkpoint.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

TARGETS = {"first token (s)": 0.6, "follow-up first token (s)": 0.6, "40-token answer (s)": 2.5, "peak RSS (GB)": 1.5}


def default_images():
    import numpy as np
    from PIL import Image
    from skimage import data

    brick = data.brick()  # (512, 512) grayscale
    rgb = np.stack([brick] * 3, -1).astype(np.float32)
    query = rgb[:256, :256].copy()
    yy, xx = np.mgrid[:256, :256]
    blob = np.exp(-(((yy - 60) / 14.0) ** 2 + ((xx - 190) / 22.0) ** 2))
    query = query * (1 - 0.7 * blob[..., None])  # dark stain at the top right
    ref = rgb[256:512, 256:512]
    return Image.fromarray(query.clip(0, 255).astype(np.uint8)), Image.fromarray(ref.astype(np.uint8))


def first_token(asst, ev, question, history=()) -> tuple[float, float, str]:
    """(wall s, process CPU s) to the first streamed chunk, and the whole answer."""
    t0, c0 = time.perf_counter(), time.process_time()
    stream = asst.stream_answer(ev, question, history=history)
    first = next(stream)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    rest = "".join(stream)
    return dt, dc, first + rest


def print_table(table: list[tuple], args, asst) -> None:
    print(
        f"\nchat speed: {args.checkpoint} {' '.join(args.overrides)}, LM {asst.cfg.lm.dtype}, "
        f"torch threads {args.threads}, {os.cpu_count()} CPUs, "
        f"median of {args.repeats}; load average {os.getloadavg()[0]:.1f} (other jobs inflate wall time)"
    )
    print(f"| {'metric':28s} | {'wall':>7s} | {'CPU s':>7s} | {'target':>7s} | ok  |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 9}|{'-' * 9}|-----|")
    for name, val, c, target in table:
        ok = "" if target is None else ("yes" if val <= target else "NO")
        cs = "" if c is None else f"{c:7.3f}"
        print(f"| {name:28s} | {val:7.3f} | {cs:>7s} | {'' if target is None else f'{target:7.2f}':>7s} | {ok:3s} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/offline-small")
    p.add_argument("--image", default=None)
    p.add_argument("--reference", action="append", default=[])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the targets are for 2 cores)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set lm.dtype=float32")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from assistant.model import Assistant

    t0 = time.perf_counter()
    asst = Assistant.from_pretrained(args.checkpoint, overrides=args.overrides)
    load_s = time.perf_counter() - t0
    if args.image:
        query, refs = args.image, args.reference
    else:
        q, r = default_images()
        query, refs = q, [r]
    keys = ["analyze (s)", "first token (s)", "follow-up first token (s)", "40-token answer (s)"]
    rows: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in keys}  # process CPU seconds (all threads)
    answer = follow = ""
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        ev = asst.analyze(query, refs)
        rows["analyze (s)"].append(time.perf_counter() - t0)
        cpu["analyze (s)"].append(time.process_time() - c0)
        dt, dc, answer = first_token(asst, ev, "Is there any anomaly in the image?")
        rows["first token (s)"].append(dt)
        cpu["first token (s)"].append(dc)
        dt, dc, follow = first_token(asst, ev, "Where is it?", [("Is there any anomaly in the image?", answer)])
        rows["follow-up first token (s)"].append(dt)
        cpu["follow-up first token (s)"].append(dc)
        t0, c0 = time.perf_counter(), time.process_time()
        asst.answer(ev, "Describe the image in detail.", max_new_tokens=40, min_new_tokens=40)
        rows["40-token answer (s)"].append(time.perf_counter() - t0)
        cpu["40-token answer (s)"].append(time.process_time() - c0)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB
    table = [("load (s)", load_s, None, None)]
    table += [(k, statistics.median(v), statistics.median(cpu[k]), TARGETS.get(k)) for k, v in rows.items()]
    table.append(("peak RSS (GB)", rss_gb, None, TARGETS["peak RSS (GB)"]))
    print_table(table, args, asst)
    print(f"\nQ: Is there any anomaly in the image?\nA: {answer}\nQ: Where is it?\nA: {follow}")
    print(f"expert: {asst.analyze(query, refs).result.to_dict()['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
