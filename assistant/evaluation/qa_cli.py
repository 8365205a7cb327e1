"""`python -m assistant evaluate --mmad FILE | --jsonl FILE --data-root ROOT ...`: answer-level runs.

    --mmad mmad.json --data-root ROOT [--templates similar|random] [--shots 1] [--shuffle-options]
    --jsonl questions.jsonl [--data-root ROOT]
    --num-chunks N --chunk-idx I     one shard (or `accelerate launch`: one shard per process)
    --merge                          combine OUT/shards/* into OUT/answers.jsonl + reports
    --baseline knn                   the plain nearest-neighbour detector answers the detection questions too
Rerunning the same command continues an interrupted run (OUT/run.json guards against mixing runs).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from assistant.evaluation.qa_runner import make_units, run_order, run_units
from assistant.evaluation.store import (
    StoreError,
    check_run_file,
    merge_shards,
    read_answers,
    resolve_chunk,
    write_answers,
)


def _add(parser: argparse.ArgumentParser, *flags, **kw) -> None:
    """Add an option unless the (shared) evaluate parser already defines it."""
    if any(f in parser._option_string_actions for f in flags):
        return
    parser.add_argument(*flags, **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from assistant.cli import add_config_arguments

    g = parser.add_argument_group("question sets (answer-level)")
    _add(g, "--mmad", metavar="FILE", help="MMAD mmad.json question file")
    _add(g, "--jsonl", metavar="FILE", help="JSONL questions: {image, references?, question, answer?, options?, mask?, label?}")
    _add(g, "--data-root", metavar="ROOT", help="folder the question file's image paths are relative to")
    _add(g, "--templates", choices=["similar", "random"], default="similar", help="MMAD reference list (default similar)")
    _add(g, "--shuffle-options", action="store_true", help="shuffle MMAD options per question (seeded by --seeds)")
    _add(g, "--num-chunks", type=int, default=1, help="split the run into N shards (default 1)")
    _add(g, "--chunk-idx", type=int, default=0, help="which shard this process runs, 0-based")
    _add(g, "--merge", action="store_true", help="merge OUT/shards/* into OUT/answers.jsonl and write the reports")
    _add(g, "--allow-partial", action="store_true", help="with --merge: report even if some questions are unanswered")
    _add(g, "--max-questions", type=int, default=None, help="stop after answering this many (smoke runs)")
    _add(g, "--no-plots", action="store_true", help="skip roc.png and qualitative.png")
    _add(parser, "--shots", type=int, default=1, help="reference images per question (MMAD: first k templates)")
    _add(parser, "--seeds", default="0", help="comma-separated seeds (repeats; mean ± std in the report)")
    _add(parser, "--baseline", choices=["knn"], default=None, help="also score the plain nearest-neighbour baseline")
    _add(parser, "--out", default="eval_out", help="output folder")
    _add(parser, "--device", default=None, help="device for the model (default: config)")
    if "--config" not in parser._option_string_actions:
        add_config_arguments(parser)


def wants_questions(args: argparse.Namespace) -> bool:
    """True when the evaluate command should run here (question sets or a merge) rather than on folders."""
    return bool(getattr(args, "mmad", None) or getattr(args, "jsonl", None) or getattr(args, "merge", False))


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _seeds(text) -> list[int]:
    if isinstance(text, (list, tuple)):
        return [int(s) for s in text]
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds expects comma-separated integers like 0,1,2, got {text!r}") from None


def run_meta(args: argparse.Namespace) -> dict:
    """What defines a run: answers from a different run must never be mixed in."""
    if bool(args.mmad) == bool(args.jsonl):
        raise ValueError("give exactly one of --mmad FILE or --jsonl FILE")
    src = Path(args.mmad or args.jsonl).resolve()
    if not src.is_file():
        raise FileNotFoundError(f"{src}: question file not found")
    if args.mmad and not args.data_root:
        raise ValueError("--mmad needs --data-root (the folder holding MVTec-AD/, VisA/, ...)")
    root = Path(args.data_root).resolve() if args.data_root else src.parent
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: --data-root is not a folder")
    return {
        "mode": "mmad" if args.mmad else "jsonl", "source": str(src), "source_sha1": _sha1(src),
        "data_root": str(root), "templates": args.templates if args.mmad else None, "shots": int(args.shots),
        "seeds": _seeds(args.seeds), "shuffle_options": bool(args.shuffle_options) if args.mmad else False,
        "config": str(args.config), "overrides": list(getattr(args, "overrides", []) or []),
        "baseline": args.baseline,
    }


def load_items(meta: dict) -> dict[int, list]:
    if meta["mode"] == "mmad":
        from assistant.evaluation.mmad import load_mmad

        return {s: load_mmad(meta["source"], meta["data_root"], templates=meta["templates"], shots=meta["shots"],
                             shuffle_seed=s if meta["shuffle_options"] else None) for s in meta["seeds"]}
    from assistant.evaluation.jsonl_data import load_jsonl

    items = load_jsonl(meta["source"], meta["data_root"])
    return {s: items for s in meta["seeds"]}


def seed_everything(seed: int = 0) -> None:
    """Same weights in every process: any randomly initialised part (untrained heads, new token rows) and
    sampling then agree between a run, its resumption and its shards."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_answerer(meta: dict, device: str | None):
    from assistant.model import Assistant

    seed_everything(0)
    return Assistant.from_pretrained(meta["config"], overrides=meta["overrides"], device=device)


def build_baseline(meta: dict, device: str | None):
    if meta["baseline"] is None:
        return None
    from assistant.evaluation.baselines import build_knn_baseline

    return build_knn_baseline(meta["config"], meta["overrides"], device=device)


def finish(out: Path, records: list[dict], meta: dict, plots: bool = True) -> dict:
    from assistant.evaluation.qa_report import build_report, write_plots, write_report

    report = build_report(records, {k: meta[k] for k in ("mode", "source", "config", "shots", "templates", "baseline")})
    paths = write_report(report, out)
    if plots:
        write_plots(records, out, meta["data_root"])
    print(paths["md"].read_text())
    return report


def run(args: argparse.Namespace, answerer=None, baseline=None) -> int:
    """Run (or resume) one shard, or merge; `answerer`/`baseline` may be injected (tests)."""
    out = Path(args.out)
    if getattr(args, "data", None):
        raise ValueError("give either --data DIR ... (folders) or --mmad/--jsonl/--merge (question sets), not both")
    if args.merge and not (args.mmad or args.jsonl):
        if not (out / "run.json").exists():
            raise FileNotFoundError(f"{out}/run.json not found: nothing to merge (wrong --out?)")
        meta = json.loads((out / "run.json").read_text())
    else:
        meta = run_meta(args)
        check_run_file(out, meta)
    units = make_units(load_items(meta))
    order = run_order(units)
    if args.merge:
        records = merge_shards(out, order)
        missing = len(order) - len(records)
        if missing and not args.allow_partial:
            raise StoreError(f"{out}/shards: {missing} of {len(order)} questions unanswered; rerun the unfinished "
                             "shard(s) or pass --allow-partial")
        write_answers(out / "answers.jsonl", records)
        print(f"merged {len(records)} answers into {out / 'answers.jsonl'}")
        finish(out, records, meta, plots=not args.no_plots)
        return 0
    chunk = resolve_chunk(args.num_chunks, args.chunk_idx)
    device = args.device
    if chunk.distributed and device is None:
        from accelerate import PartialState

        device = str(PartialState().device)
    if answerer is None:
        t0 = time.perf_counter()
        answerer = build_answerer(meta, device)
        print(f"model loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if baseline is None:
        seed_everything(0)
        baseline = build_baseline(meta, device)
    stats = run_units(units, answerer, out, chunk, data_root=meta["data_root"], baseline=baseline,
                      max_questions=args.max_questions, progress=sys.stderr.isatty() or bool(os.environ.get("TQDM_FORCE")))
    per_q = stats.seconds / stats.answered if stats.answered else 0.0
    print(f"chunk {chunk.index}/{chunk.count}: answered {stats.answered}, resumed past {stats.skipped}"
          f"{' (dropped a torn last line)' if stats.dropped_partial else ''} in {stats.seconds:.1f} s "
          f"({per_q:.2f} s/question)", file=sys.stderr)
    if chunk.distributed:  # every process reaches the barrier, even one stopped by --max-questions
        from accelerate import PartialState

        state = PartialState()
        state.wait_for_everyone()
        if state.is_main_process:
            records = merge_shards(out, order)
            if len(records) < len(order):
                print(f"{len(order) - len(records)} questions still unanswered; rerun to continue", file=sys.stderr)
                return 0
            write_answers(out / "answers.jsonl", records)
            finish(out, records, meta, plots=not args.no_plots)
        return 0
    if args.max_questions is not None and stats.answered >= args.max_questions:
        print("stopped at --max-questions; rerun to continue", file=sys.stderr)
        return 0
    if chunk.count > 1:
        print(f"shard {chunk.index} of {chunk.count} done; when all are, run the same command with --merge", file=sys.stderr)
        return 0
    finish(out, read_answers(out / "answers.jsonl"), meta, plots=not args.no_plots)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
