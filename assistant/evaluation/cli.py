"""`python -m assistant evaluate --data DIR [DIR ...] --config C --shots K --seeds 0,1,2 --out OUT`.

Expert-level evaluation on MVTec-layout folders: image/pixel metrics per category and their mean,
written to OUT/report.json, OUT/report.md and OUT/roc.png. Other modes (answer-level VQA, MMAD/JSONL
question files) register extra arguments through `EXTRA_MODES` and share the loading code here.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from assistant.cli import UsageError, add_config_arguments

# name -> (module, help): other evaluation modes plug in here with add_arguments(parser) / run(args, cfg)
EXTRA_MODES: dict[str, tuple[str, str]] = {
    "vqa": ("assistant.evaluation.vqa", "answer-level: ask 'Is there any anomaly in the image?' and 'Where is it?'"),
}


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds: expected comma-separated integers like 0,1,2, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds: expected at least one seed")
    return seeds


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", metavar="DIR", help="MVTec-layout category folder(s) or folder(s) of categories")
    add_config_arguments(p)
    p.add_argument("--shots", type=int, default=1, help="reference normals per seed drawn from train/good (0 = zero-shot)")
    p.add_argument("--seeds", type=parse_seeds, default=[0], help="comma-separated reference-sampling seeds")
    p.add_argument("--out", required=True, help="output folder for report.json, report.md, roc.png")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--no-pixel", action="store_true", help="skip pixel metrics (faster)")
    p.add_argument("--feature-budget-mb", type=float, default=None, metavar="MB",
                   help="keep a category's test features across seeds up to this size, else encode them again per "
                        "seed (default 2048; offline-small needs 1.8 MiB per image)")
    p.add_argument("--mutual", action="store_true",
                   help="with --shots 0: score each test image against the category's other test images, unlabeled "
                        "(batch zero-shot, MuSc-style mutual scoring) instead of the single-image zero-shot head")
    p.add_argument("--lot", action="store_true",
                   help="with references: each category's test folder is one lot inspected together; the lot's own "
                        "score distribution joins the references' threshold (expert.lot_decide)")
    p.add_argument("--mode", default="expert", choices=["expert", *EXTRA_MODES],
                   help="expert = anomaly maps and verdicts; other modes are added by later modules")
    from assistant.evaluation import qa_cli  # --mmad/--jsonl question sets, shards, --merge, --baseline knn

    qa_cli.add_arguments(p)


def load_expert(cfg):
    """(tower, expert) for a config: tower from cfg.vision, expert heads from cfg.expert.checkpoint."""
    from assistant.expert import build_expert
    from assistant.vision.base import build_vision_tower

    tower = build_vision_tower(cfg.vision)
    return tower, build_expert(cfg, tower).eval()


def run(args) -> int:
    from assistant.config import load_config
    from assistant.evaluation import qa_cli

    if qa_cli.wants_questions(args):  # MMAD / JSONL questions: answer-level, resumable, sharded
        return qa_cli.run(args)
    cfg = load_config(args.config, args.overrides)
    if args.mode != "expert":
        import importlib

        return int(importlib.import_module(EXTRA_MODES[args.mode][0]).run(args, cfg) or 0)
    if not args.data:
        raise FileNotFoundError("evaluate --mode expert: expected --data DIR [DIR ...] (MVTec-layout folders)")
    if args.shots < 0:
        raise UsageError(f"--shots: expected k >= 0, got {args.shots}")
    if args.mutual and args.shots != 0:
        raise UsageError(f"--mutual is a zero-shot mode: expected --shots 0, got --shots {args.shots}")
    if getattr(args, "lot", False) and (args.shots == 0 or args.mutual):
        raise UsageError(f"--lot joins the references with the lot: expected --shots 1 or more, got --shots {args.shots}"
                         + (" --mutual" if args.mutual else "") + " (without references use --shots 0 --mutual)")
    if getattr(args, "baseline", None) == "knn" and args.shots == 0 and not args.mutual:
        raise UsageError("--baseline knn is a nearest-neighbour detector: it needs references (--shots 1 or more) "
                         "or the other test images (--shots 0 --mutual)")
    from assistant.evaluation.datasets import discover
    from assistant.evaluation.report import write_reports
    from assistant.evaluation.runner import evaluate

    cats = discover(args.data)
    tower, expert = load_expert(cfg)
    t0 = time.perf_counter()
    budget = {} if args.feature_budget_mb is None else {"feature_budget_mb": args.feature_budget_mb}
    results = evaluate(expert, tower, cats, args.shots, args.seeds, args.batch_size, pixel=not args.no_pixel,
                       mutual=args.mutual, lot=getattr(args, "lot", False), **budget)
    done = {r.name for r in results}
    cats = [c for c in cats if c.name in done]  # categories skipped for lack of references drop out here
    mode = "mutual" if args.mutual else "self" if expert.self_calibrated() else "head"
    report = write_reports(results, args.out, args.shots, args.seeds, cfg.to_dict(), zero_shot_mode=mode)
    from assistant.evaluation.plots import expert_grid  # best/worst images: image, ground truth, map, verdict

    expert_grid(expert, tower, cats, results, args.shots, Path(args.out) / "qualitative.png", mutual=args.mutual)
    from assistant.evaluation.qa_report import write_csv  # report.csv: one row per category + mean

    write_csv(report, Path(args.out) / "report.csv")
    if getattr(args, "baseline", None) == "knn":  # plain nearest-neighbour detector beside ours
        from assistant.evaluation.baselines import add_knn_baseline

        report = add_knn_baseline(args, cfg, cats, tower)
    print((Path(args.out) / "report.md").read_text())
    print(f"{len(cats)} categories in {time.perf_counter() - t0:.1f} s -> {args.out}/report.json")
    return 0 if report["categories"] else 1
