"""Answer-level evaluation (`python -m assistant evaluate --mode vqa --data DIR ... --shots K --seeds 0,1,2`).

For every test image (k references drawn per seed as in the expert evaluation) the assistant is asked
"Is there any anomaly in the image?" and then, as a follow-up, "Where is it?". Answers are parsed into a
yes/no verdict and a 3x3 position word. Writes OUT/answers.jsonl (one line per question) and adds to every
category of OUT/report.json (created or merged): answer_accuracy, answer_balanced_accuracy, answer_overkill,
answer_miss, location_accuracy (answer position == cell of the ground-truth mask centroid, anomalous images
with masks), consistency (answer verdict == expert pred_label), plus answer_unparsed and expert_balanced_accuracy.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from assistant.wording import DETECT_QUESTION, WHERE_QUESTION, mask_position, parse_position, parse_verdict

ANSWER_KEYS = ["answer_accuracy", "answer_balanced_accuracy", "answer_overkill", "answer_miss", "location_accuracy",
               "consistency", "answer_unparsed", "expert_balanced_accuracy"]


def answer_metrics(records: list[dict]) -> dict:
    """Metrics over detection records {gt_label, answer_label (bool|None), pred_label, gt_position, answer_position}."""
    from sklearn.metrics import balanced_accuracy_score

    gt = np.array([int(r["gt_label"]) for r in records])
    ans = np.array([int(bool(r["answer_label"])) for r in records])  # unparsed counts as "normal"
    exp = np.array([int(r["pred_label"]) for r in records])
    both = len(set(gt.tolist())) == 2
    out = {
        "answer_accuracy": float((ans == gt).mean()) if len(gt) else None,
        "answer_balanced_accuracy": float(balanced_accuracy_score(gt, ans)) if both else None,
        "answer_overkill": float(ans[gt == 0].mean()) if (gt == 0).any() else None,
        "answer_miss": float(1 - ans[gt == 1].mean()) if (gt == 1).any() else None,
        "consistency": float((ans == exp).mean()) if len(gt) else None,
        "answer_unparsed": float(np.mean([r["answer_label"] is None for r in records])) if records else None,
        "expert_balanced_accuracy": float(balanced_accuracy_score(gt, exp)) if both else None,
    }
    loc = [r for r in records if r["gt_label"] and r.get("gt_position")]
    out["location_accuracy"] = (float(np.mean([r.get("answer_position") == r["gt_position"] for r in loc]))
                                if loc else None)
    return out


def _summarise(runs: list[dict]) -> dict:
    out, std = {}, {}
    for k in ANSWER_KEYS:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            out[k], std[k] = float(np.mean(vals)), float(np.std(vals))
    out["std"] = std
    return out


def evaluate_vqa(assistant, categories, shots: int, seeds, out_dir: str | Path, batch_size: int = 8,
                 max_new_tokens: int = 32, settings: dict | None = None) -> dict:
    """Run the two questions on every test image of every category and seed; returns {category: summary}.

    Answers go to OUT/answers.jsonl through an AnswerStore (one fsynced line per answer): a run that was
    stopped resumes where it stopped, answering only images not yet answered. `settings` (shots, config,
    checkpoint) are kept in OUT/run.json and must match on resume (store.check_run_file)."""
    from tqdm import tqdm

    from assistant.evaluation.datasets import sample_references, skip_reason
    from assistant.evaluation.store import AnswerStore, check_run_file
    from assistant.imaging import load_image, load_mask

    out = Path(out_dir)
    check_run_file(out, {"mode": "vqa", "shots": shots, "max_new_tokens": max_new_tokens, **(settings or {})})
    summaries = {}
    with AnswerStore(out / "answers.jsonl") as store:
        done = {(r["category"], r["seed"], r["image"]): r for r in store.records if r["question"] == WHERE_QUESTION}
        if done:
            print(f"resuming: {len(done)} image(s) already answered in {out / 'answers.jsonl'}")
        for cat in categories:
            reason = skip_reason(cat, shots)
            if reason:  # as in the expert evaluation: noted, and the other categories still run
                tqdm.write(reason)
                continue
            imgs: dict[int, object] = {}
            q_outs: dict[int, object] = {}
            gt_pos = [mask_position(load_mask(it.mask)) if (it.label and it.mask) else None for it in cat.items]
            runs = []
            for seed in seeds:
                todo = [i for i, it in enumerate(cat.items) if (cat.name, seed, it.image) not in done]
                for i in todo:  # encode lazily: a resumed run skips finished images
                    if i not in imgs:
                        imgs[i] = load_image(cat.items[i].image)
                        q_outs[i] = assistant.tower.encode([imgs[i]])
                ref_paths = sample_references(cat.train_good, shots, seed)
                refs = [load_image(p) for p in ref_paths]
                state = r_out = None
                if todo:
                    r_out = assistant.tower.encode(refs) if refs else None
                    state = assistant.expert.fit_references(assistant.tower, refs, r_out, seed=seed)
                bar = tqdm(total=len(cat.items), initial=len(cat.items) - len(todo), desc=f"{cat.name} seed {seed}",
                           leave=False)
                for b in range(0, len(todo), batch_size):
                    idx = todo[b:b + batch_size]
                    side = assistant.tower.image_size  # maps at the tower's size, as in the expert evaluation
                    evs = [assistant.evidence_from_features(imgs[i], q_outs[i], refs, r_out, seed=seed, state=state,
                                                            map_size=(side, side)) for i in idx]
                    a1 = assistant.answer_batch(evs, [DETECT_QUESTION] * len(idx), max_new_tokens=max_new_tokens)
                    a2 = assistant.answer_batch(evs, [WHERE_QUESTION] * len(idx), [[(DETECT_QUESTION, a)] for a in a1],
                                                max_new_tokens=max_new_tokens)
                    for i, ev, x1, x2 in zip(idx, evs, a1, a2):
                        it, res = cat.items[i], ev.result
                        rec = {"category": cat.name, "seed": seed, "image": it.image, "references": ref_paths,
                               "gt_label": int(it.label), "defect": it.defect, "pred_label": bool(res.pred_label),
                               "expert_score": float(res.pred_score), "threshold": float(res.threshold),
                               "expert_position": res.position, "gt_position": gt_pos[i],
                               "answer_label": parse_verdict(x1), "answer_position": parse_position(x2)}
                        base = f"{cat.name}|{seed}|{it.image}|"
                        if base + "detect" not in store:  # (a run stopped between the two lines wrote this one)
                            store.add({**rec, "key": base + "detect", "question": DETECT_QUESTION, "answer": x1,
                                       "parsed_label": rec["answer_label"]})
                        where = {**rec, "key": base + "where", "question": WHERE_QUESTION, "answer": x2,
                                 "parsed_position": rec["answer_position"]}
                        store.add(where)
                        done[(cat.name, seed, it.image)] = where
                    bar.update(len(idx))
                bar.close()
                runs.append(answer_metrics([done[(cat.name, seed, it.image)] for it in cat.items]))
            summaries[cat.name] = {**_summarise(runs), "n_normal": cat.n_normal, "n_anomalous": cat.n_anomalous}
    return summaries


def summarize_answers(path: str | Path) -> dict:
    """{category: summary} recomputed from an answers.jsonl (complete (category, seed) runs only count whole)."""
    runs: dict[tuple, dict[str, dict]] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        rec = runs.setdefault((r["category"], r["seed"]), {}).setdefault(r["image"], dict(r))
        if r["question"] == WHERE_QUESTION:
            rec["answer_position"] = r.get("parsed_position")
    out: dict = {}
    for cat in sorted({c for c, _ in runs}):
        seeds = sorted(s for c, s in runs if c == cat)
        summ = _summarise([answer_metrics(list(runs[(cat, s)].values())) for s in seeds])
        out[cat] = {**summ, "seeds": seeds, "n_images": [len(runs[(cat, s)]) for s in seeds]}
    return out


def merge_report(out_dir: str | Path, summaries: dict, meta: dict) -> dict:
    """Add answer metrics to OUT/report.json (creating it when absent) and write report_vqa.md."""
    out = Path(out_dir)
    path = out / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else {"shots": meta.get("shots"), "seeds": meta.get("seeds"),
                                                                   "config": meta.get("config"), "categories": {}}
    for name, s in summaries.items():
        cat = report["categories"].setdefault(name, {})
        std = cat.setdefault("std", {})
        for k, v in s.items():
            if k == "std":
                std.update(v)
            else:
                cat[k] = v
    mean = report.setdefault("mean", {})
    for k in ANSWER_KEYS:
        vals = [c[k] for c in report["categories"].values() if c.get(k) is not None]
        if vals:
            mean[k] = float(np.mean(vals))
    report["vqa"] = {"questions": [DETECT_QUESTION, WHERE_QUESTION], **{k: v for k, v in meta.items() if k != "config"}}
    path.write_text(json.dumps(report, indent=1))
    cols = ["answer_balanced_accuracy", "location_accuracy", "consistency", "answer_overkill", "answer_miss",
            "answer_unparsed", "expert_balanced_accuracy"]
    lines = ["| category | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    for name, c in report["categories"].items():
        lines.append(f"| {name} | " + " | ".join(fmt(c.get(k)) for k in cols) + " |")
    lines.append("| **mean** | " + " | ".join(fmt(mean.get(k)) for k in cols) + " |")
    (out / "report_vqa.md").write_text("\n".join(lines) + "\n")
    return report


def run(args, cfg) -> int:
    """Entry point for `evaluate --mode vqa` (registered in assistant.evaluation.cli.EXTRA_MODES)."""
    from assistant.evaluation.datasets import discover
    from assistant.model import Assistant

    if not args.data:
        raise FileNotFoundError("evaluate --mode vqa: expected --data DIR [DIR ...] (MVTec-layout folders)")
    cats = discover(args.data)
    t0 = time.perf_counter()
    asst = Assistant.from_pretrained(args.config, overrides=args.overrides)
    settings = {"config": asst.cfg.to_dict(), "lvlm_checkpoint": asst.cfg.lvlm.checkpoint}
    summaries = evaluate_vqa(asst, cats, args.shots, args.seeds, args.out, batch_size=min(args.batch_size, 8),
                             settings=json.loads(json.dumps(settings, default=str)))
    meta = {"shots": args.shots, "seeds": args.seeds, "config": cfg.to_dict(), "lvlm_checkpoint": asst.cfg.lvlm.checkpoint,
            "seconds": round(time.perf_counter() - t0, 1)}
    merge_report(args.out, summaries, meta)
    print((Path(args.out) / "report_vqa.md").read_text())
    print(f"answers: {Path(args.out) / 'answers.jsonl'}; report: {Path(args.out) / 'report.json'}")
    return 0 if summaries else 1
