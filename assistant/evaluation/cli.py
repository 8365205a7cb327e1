"""`python -m assistant evaluate ...`: one parser; the options pick the mode.

    --data DIR [DIR ...] --shots K --seeds 0,1,2 [--mutual] [--lot] [--baseline knn]   expert metrics (default)
    --data DIR [DIR ...] --shots K --feedback G,D [--cost-ratio R]       before/after G good + D defective labels
    --data DIR [DIR ...] --profile NAME                                   judged with an inspection profile
    --mode vqa --data DIR [DIR ...] --shots K --seeds 0,1,2                              answers on folders
    --mmad mmad.json --data-root ROOT [--templates similar|random] [--shuffle-options]    MMAD questions
    --jsonl questions.jsonl [--data-root ROOT]                                            JSONL questions
    --num-chunks N --chunk-idx I   one shard of a question run (or `accelerate launch`: one shard per process)
    --merge                        combine OUT/shards/* into OUT/answers.jsonl + reports
Every mode writes under --out; rerunning an answer-level command continues an interrupted run (OUT/run.json
guards against mixing runs). The work is done by assistant.evaluation.{data, expert, answers}; this module only
reads the options.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from assistant.cli_args import parse_int_list, seeds_arg
from assistant.config import UsageError, add_config_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, default=None)  # None: the --profile's config, else offline-small
    p.add_argument("--out", required=True, help="output folder (report.json, report.md, report.csv, roc.png, ...)")
    p.add_argument("--shots", type=int, default=1,
                   help="reference normals per seed drawn from train/good (0 = zero-shot); MMAD: first k templates")
    p.add_argument("--seeds", type=seeds_arg, default=[0],
                   help="comma-separated seeds (reference draws; mean ± std in the report)")
    p.add_argument("--baseline", choices=["knn"], default=None, help="also score the plain nearest-neighbour baseline")
    _add_folder_arguments(p.add_argument_group("folders (MVTec layout or VisA roots)"))
    _add_question_arguments(p.add_argument_group("question sets (answer-level)"))


def _add_folder_arguments(g) -> None:
    g.add_argument("--data", nargs="+", metavar="DIR",
                   help="MVTec-layout category folder(s) or folder(s) of categories")
    g.add_argument("--mode", default="expert", choices=["expert", "vqa"],
                   help="expert = anomaly maps and verdicts; vqa = answers to 'Is there any anomaly in the image?' "
                        "and 'Where is it?'")
    g.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    g.add_argument("--no-pixel", action="store_true", help="skip pixel metrics (faster)")
    g.add_argument("--feature-budget-mb", type=float, default=None, metavar="MB",
                   help="keep a category's test features across seeds up to this size, else encode them again per "
                        "seed (default 2048; offline-small needs 1.8 MiB per image)")
    g.add_argument("--mutual", action="store_true",
                   help="with --shots 0: score each test image against the category's other test images, unlabeled "
                        "(batch zero-shot, MuSc-style mutual scoring) instead of the single-image zero-shot head")
    g.add_argument("--feedback", type=feedback_arg, default=None, metavar="G,D",
                   help="simulate a user who labels G good and D defective test images (seeded, left out of "
                        "scoring): metrics before and after the labels refine the references and the threshold")
    g.add_argument("--profile", metavar="NAME", default=None,
                   help="judge every test image with an inspection profile's references and labels (its config "
                        "unless --config is given) instead of references drawn from train/good")
    g.add_argument("--cost-ratio", type=float, default=1.0, metavar="R",
                   help="with --feedback: cost of a miss / cost of a false reject for the labelled threshold")
    g.add_argument("--lot", action="store_true",
                   help="with references: each category's test folder is one lot inspected together; the lot's own "
                        "score distribution joins the references' threshold (expert.lot_decide)")


def _add_question_arguments(g) -> None:
    g.add_argument("--mmad", metavar="FILE", help="MMAD mmad.json question file")
    g.add_argument("--jsonl", metavar="FILE",
                   help="JSONL questions: {image, references?, question, answer?, options?, mask?, label?}")
    g.add_argument("--data-root", metavar="ROOT", help="folder the question file's image paths are relative to")
    g.add_argument("--templates", choices=["similar", "random"], default="similar",
                   help="MMAD reference list (default similar)")
    g.add_argument("--shuffle-options", action="store_true",
                   help="shuffle MMAD options per question (seeded by --seeds)")
    g.add_argument("--num-chunks", type=int, default=1, help="split the run into N shards (default 1)")
    g.add_argument("--chunk-idx", type=int, default=0, help="which shard this process runs, 0-based")
    g.add_argument("--merge", action="store_true",
                   help="merge OUT/shards/* into OUT/answers.jsonl and write the reports")
    g.add_argument("--allow-partial", action="store_true",
                   help="with --merge: report even if some questions are unanswered")
    g.add_argument("--max-questions", type=int, default=None, help="stop after answering this many (smoke runs)")
    g.add_argument("--no-plots", action="store_true", help="skip roc.png and qualitative.png")
    g.add_argument("--device", default=None, help="device for the model (default: config)")


def run(args: argparse.Namespace, answerer=None, baseline=None) -> int:
    """Dispatch on the options; `answerer`/`baseline` may be injected into question runs (tests)."""
    if args.config is None:
        from assistant.profile_fit import open_profile

        profile = open_profile(getattr(args, "profile", None))
        args.config = profile.config if profile else "offline-small"
    if getattr(args, "profile", None) and (args.mmad or args.jsonl or args.merge or args.mode == "vqa"):
        raise UsageError("--profile judges MVTec-layout folders with the expert: expected --data DIR ... in expert "
                         "mode, got a question file or --mode vqa")
    if args.mmad or args.jsonl or args.merge:  # MMAD / JSONL questions: answer-level, resumable, sharded
        return run_questions(args, answerer, baseline)
    from assistant.config import load_config

    cfg = load_config(args.config, args.overrides)
    return run_vqa(args, cfg) if args.mode == "vqa" else run_expert(args, cfg)


# ------------------------------------------------------------------------------------------ folders: expert
def check_expert_args(args: argparse.Namespace) -> None:
    if not args.data:
        raise FileNotFoundError("evaluate --mode expert: expected --data DIR [DIR ...] (MVTec-layout folders)")
    if args.shots < 0:
        raise UsageError(f"--shots: expected k >= 0, got {args.shots}")
    if args.mutual and args.shots != 0:
        raise UsageError(f"--mutual is a zero-shot mode: expected --shots 0, got --shots {args.shots}")
    if args.lot and (args.shots == 0 or args.mutual):
        raise UsageError("--lot joins the references with the lot: expected --shots 1 or more, got "
                         f"--shots {args.shots}" + (" --mutual" if args.mutual else "")
                         + " (without references use --shots 0 --mutual)")
    if args.baseline == "knn" and args.shots == 0 and not args.mutual:
        raise UsageError("--baseline knn is a nearest-neighbour detector: it needs references (--shots 1 or more) "
                         "or the other test images (--shots 0 --mutual)")


def feedback_arg(text: str) -> tuple[int, int]:
    """'2,2' -> (2, 2): labelled good and defective images."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected G,D (two counts, e.g. 2,2), got {text!r}")
    return int(parts[0]), int(parts[1])


def run_feedback(args: argparse.Namespace, cfg) -> int:
    """--feedback G,D: before/after table per category (feedback.md, feedback.json)."""
    from assistant.evaluation.data import discover
    from assistant.evaluation.expert.feedback import feedback_category, feedback_table
    from assistant.expert import load_expert

    if args.shots < 1 or args.mutual or args.lot:
        raise UsageError(f"--feedback refines a reference set: expected --shots 1 or more without --mutual/--lot, "
                         f"got --shots {args.shots}")
    n_good, n_bad = args.feedback
    tower, expert = load_expert(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs, record = [], {}
    for cat in discover(args.data):
        before, after, cals = feedback_category(expert, tower, cat, args.shots, args.seeds, n_good, n_bad,
                                                args.cost_ratio, args.batch_size, pixel=not args.no_pixel)
        pairs.append((before, after))
        record[cat.name] = {"before": before.summary(), "after": after.summary(), "labels": cals}
    table = feedback_table(pairs, n_good, n_bad, args.shots, args.seeds, args.cost_ratio)
    (out / "feedback.md").write_text(table + "\n")
    (out / "feedback.json").write_text(json.dumps(record, indent=1, default=float))
    print(table)
    return 0


def run_profile(args: argparse.Namespace, cfg) -> int:
    """--profile NAME: every category's test images judged with the profile's fitted state (one run)."""
    from assistant.evaluation.data import discover
    from assistant.evaluation.expert.feedback import state_run
    from assistant.evaluation.expert.report import write_reports
    from assistant.evaluation.expert.runner import CategoryResult, TestFeatures, load_masks
    from assistant.expert import load_expert
    from assistant.profile_fit import fit_profile, fit_settings, open_profile

    if args.feedback is not None or args.mutual or args.lot:
        raise UsageError("--profile brings its own references and labels: expected no --feedback, --mutual or --lot")
    profile = open_profile(args.profile)
    tower, expert = load_expert(cfg)
    state = fit_profile(profile, expert, tower, save=False)
    seed, refs = fit_settings(profile)[0], [str(p) for p in profile.references()]
    results = []
    for cat in discover(args.data):
        masks = load_masks(cat.items, tower.image_size) if (not args.no_pixel and cat.has_masks) else None
        feats = TestFeatures(tower, cat.items, args.batch_size, cat.name)
        res = CategoryResult(cat.name, cat.n_normal, cat.n_anomalous)
        res.runs.append(state_run(expert, tower, cat, feats, state, refs, seed, masks, args.batch_size))
        results.append(res)
    out = Path(args.out)
    write_reports(results, out, state.n_shots, [seed], cfg.to_dict())
    print(f"profile: {profile.name} ({state.n_shots} reference image(s) with the labelled good ones, threshold "
          f"{state.threshold:.4f})")
    print((out / "report.md").read_text())
    return 0


def run_expert(args: argparse.Namespace, cfg) -> int:
    check_expert_args(args)
    if args.profile:
        return run_profile(args, cfg)
    if args.feedback is not None:
        return run_feedback(args, cfg)
    from assistant.evaluation.data import discover
    from assistant.evaluation.expert.baselines import add_knn_baseline
    from assistant.evaluation.expert.report import expert_grid, write_csv, write_reports
    from assistant.evaluation.expert.runner import evaluate
    from assistant.expert import load_expert

    cats = discover(args.data)
    tower, expert = load_expert(cfg)
    t0 = time.perf_counter()
    budget = {} if args.feature_budget_mb is None else {"feature_budget_mb": args.feature_budget_mb}
    results = evaluate(expert, tower, cats, args.shots, args.seeds, args.batch_size, pixel=not args.no_pixel,
                       mutual=args.mutual, lot=args.lot, **budget)
    done = {r.name for r in results}
    cats = [c for c in cats if c.name in done]  # categories skipped for lack of references drop out here
    mode = "mutual" if args.mutual else "self" if expert.self_calibrated() else "head"
    out = Path(args.out)
    report = write_reports(results, out, args.shots, args.seeds, cfg.to_dict(), zero_shot_mode=mode)
    expert_grid(expert, tower, cats, results, args.shots, out / "qualitative.png", mutual=args.mutual)
    write_csv(report, out / "report.csv")  # one row per category + mean
    if args.baseline == "knn":  # plain nearest-neighbour detector beside ours
        report = add_knn_baseline(args.config, args.overrides, cats, tower, out, args.shots, args.seeds,
                                  args.batch_size, pixel=not args.no_pixel, mutual=args.mutual)
    print((out / "report.md").read_text())
    print(f"{len(cats)} categories in {time.perf_counter() - t0:.1f} s -> {args.out}/report.json")
    return 0 if report["categories"] else 1


# ------------------------------------------------------------------------------------------ folders: answers
def run_vqa(args: argparse.Namespace, cfg) -> int:
    from assistant.evaluation.answers.folder import evaluate_vqa
    from assistant.evaluation.answers.report import merge_report
    from assistant.evaluation.data import discover
    from assistant.model import Assistant

    if not args.data:
        raise FileNotFoundError("evaluate --mode vqa: expected --data DIR [DIR ...] (MVTec-layout folders)")
    cats = discover(args.data)
    t0 = time.perf_counter()
    asst = Assistant.from_pretrained(args.config, overrides=args.overrides)
    settings = {"config": asst.cfg.to_dict(), "lvlm_checkpoint": asst.cfg.lvlm.checkpoint}
    summaries = evaluate_vqa(asst, cats, args.shots, args.seeds, args.out, batch_size=min(args.batch_size, 8),
                             settings=json.loads(json.dumps(settings, default=str)), max_questions=args.max_questions,
                             progress=_progress())
    if summaries is None:
        print("stopped at --max-questions; rerun to continue", file=sys.stderr)
        return 0
    meta = {"shots": args.shots, "seeds": args.seeds, "config": cfg.to_dict(),
            "lvlm_checkpoint": asst.cfg.lvlm.checkpoint, "seconds": round(time.perf_counter() - t0, 1)}
    merge_report(args.out, summaries, meta)
    print((Path(args.out) / "report_vqa.md").read_text())
    print(f"answers: {Path(args.out) / 'answers.jsonl'}; report: {Path(args.out) / 'report.json'}")
    return 0 if summaries else 1


def _progress() -> bool:
    return sys.stderr.isatty() or bool(os.environ.get("TQDM_FORCE"))


# ------------------------------------------------------------------------------------------ question sets
def question_meta(args: argparse.Namespace) -> dict:
    """What defines a question run (OUT/run.json): answers from a different run must never be mixed in."""
    if bool(args.mmad) == bool(args.jsonl):
        raise UsageError("give exactly one of --mmad FILE or --jsonl FILE")
    src = Path(args.mmad or args.jsonl).resolve()
    if not src.is_file():
        raise FileNotFoundError(f"{src}: question file not found")
    if args.mmad and not args.data_root:
        raise UsageError("--mmad needs --data-root (the folder holding MVTec-AD/, VisA/, ...)")
    root = Path(args.data_root).resolve() if args.data_root else src.parent
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: --data-root is not a folder")
    import hashlib

    return {
        "mode": "mmad" if args.mmad else "jsonl", "source": str(src),
        "source_sha1": hashlib.sha1(src.read_bytes()).hexdigest(), "data_root": str(root),
        "templates": args.templates if args.mmad else None, "shots": int(args.shots),
        "seeds": parse_int_list(args.seeds, "--seeds"),
        "shuffle_options": bool(args.shuffle_options) if args.mmad else False,
        "config": str(args.config), "overrides": list(args.overrides or []), "baseline": args.baseline,
    }


def run_questions(args: argparse.Namespace, answerer=None, baseline=None) -> int:
    """Run (or resume) one shard of a question run, or merge the shards."""
    from assistant.evaluation.answers.questions import finish, load_items, make_units, merge_run
    from assistant.evaluation.answers.store import check_run_file, resolve_chunk

    out = Path(args.out)
    if args.data:
        raise UsageError("give either --data DIR ... (folders) or --mmad/--jsonl/--merge (question sets), not both")
    if args.merge and not (args.mmad or args.jsonl):
        if not (out / "run.json").exists():
            raise FileNotFoundError(f"{out}/run.json not found: nothing to merge (wrong --out?)")
        meta = json.loads((out / "run.json").read_text())
    else:
        meta = question_meta(args)
        check_run_file(out, meta)
    units = make_units(load_items(meta))
    if args.merge:
        records = merge_run(out, units, args.allow_partial)
        print(f"merged {len(records)} answers into {out / 'answers.jsonl'}")
        finish(out, records, meta, plots=not args.no_plots)
        return 0
    chunk = resolve_chunk(args.num_chunks, args.chunk_idx)
    stats = _answer_shard(args, meta, units, chunk, answerer, baseline)
    return _after_shard(args, out, meta, units, chunk, stats)


def _answer_shard(args, meta: dict, units: list, chunk, answerer, baseline):
    from assistant.evaluation.answers.questions import (
        answer_shard,
        build_answerer,
        build_baseline,
        seed_everything,
    )

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
    stats = answer_shard(units, meta, Path(args.out), chunk, answerer, baseline, args.max_questions, _progress())
    per_q = stats.seconds / stats.answered if stats.answered else 0.0
    print(f"chunk {chunk.index}/{chunk.count}: answered {stats.answered}, resumed past {stats.skipped}"
          f"{' (dropped a torn last line)' if stats.dropped_partial else ''} in {stats.seconds:.1f} s "
          f"({per_q:.2f} s/question)", file=sys.stderr)
    return stats


def _after_shard(args, out: Path, meta: dict, units: list, chunk, stats) -> int:
    """Reports when the run is complete: at once for one chunk, by the main process under `accelerate launch`."""
    from assistant.evaluation.answers.questions import UnansweredError, finish, merge_run
    from assistant.evaluation.answers.store import read_answers

    if chunk.distributed:  # every process reaches the barrier, even one stopped by --max-questions
        from accelerate import PartialState

        state = PartialState()
        state.wait_for_everyone()
        if state.is_main_process:
            try:
                records = merge_run(out, units)
            except UnansweredError as e:
                print(f"{e.missing} questions still unanswered; rerun to continue", file=sys.stderr)
                return 0
            finish(out, records, meta, plots=not args.no_plots)
        return 0
    if args.max_questions is not None and stats.answered >= args.max_questions:
        print("stopped at --max-questions; rerun to continue", file=sys.stderr)
        return 0
    if chunk.count > 1:
        print(f"shard {chunk.index} of {chunk.count} done; when all are, run the same command with --merge",
              file=sys.stderr)
        return 0
    finish(out, read_answers(out / "answers.jsonl"), meta, plots=not args.no_plots)
    return 0
