"""Reports for answer-level runs. Question files: report.json, report.md, report.csv, roc.png, qualitative.png;
folder VQA (`--mode vqa`): answer_metrics per category and seed, merged into report.json, and report_vqa.md.

report.json follows the expert report's schema ({"shots", "seeds", "config", "categories": {NAME:
{metric: mean over seeds, "std": {...}, "n_normal", "n_anomalous"}}, "mean": {...}}), with answer
metrics per category and, for MMAD-style typed questions,
"mmad": {"per_type": {TYPE: accuracy}, "average": accuracy, "table": {CATEGORY: {TYPE: accuracy}},
"per_dataset": {DATASET: {TYPE: accuracy}}} (per_type/average are means over categories).
Every number is a fraction in [0, 1] and depends only on the answer records, so a resumed or merged
run gives the same report as an uninterrupted one.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from assistant.evaluation.data.mmad import DETECTION, MMAD_TYPES, mmad_scores
from assistant.evaluation.expert.metrics import balanced_accuracy, graded_balanced_accuracy
from assistant.evaluation.expert.report import write_csv
from assistant.evaluation.plots import Case, plot_roc, qualitative_grid
from assistant.wording import DETECT_QUESTION, WHERE_QUESTION


def _snake(t: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", t.lower()).strip("_")


def _images(recs: list[dict]) -> list[dict]:
    """One record per image (the first question's), for image-level metrics."""
    seen, out = set(), []
    for r in recs:
        if r["image"] not in seen:
            seen.add(r["image"])
            out.append(r)
    return out


def category_metrics(recs: list[dict]) -> dict[str, float]:
    """Answer and expert metrics of one category and seed (fractions; absent when undefined)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    m: dict[str, float] = {}
    graded = [r["correct"] for r in recs if r.get("correct") is not None]
    if graded:
        m["answer_accuracy"] = float(np.mean(graded))
    m["unparsed_rate"] = float(np.mean([r.get("parsed") is None and not r.get("held") for r in recs]))
    det = [r for r in recs if r["qtype"] == DETECTION and r.get("correct") is not None]
    if det:  # balanced over normal and anomalous images; a class without images counts 0 (the MMAD rule)
        m["answer_balanced_accuracy"] = graded_balanced_accuracy(det, absent=0.0)  # a held answer is wrong
        m.update(held_metrics(det))
        cons = [r["parsed"] == r["expert_choice"] for r in det if r.get("expert_choice")]
        if cons:
            m["consistency"] = float(np.mean(cons))
        base = [r for r in det if r.get("baseline_correct") is not None]
        if base:
            m["baseline_answer_balanced_accuracy"] = graded_balanced_accuracy(base, "baseline_correct", absent=0.0)
    imgs = [r for r in _images(recs) if r.get("label") is not None]
    labels = np.array([r["label"] for r in imgs])
    if len(imgs) and len(np.unique(labels)) == 2:
        scores = np.array([r["pred_score"] for r in imgs])
        m["image_auroc"] = float(roc_auc_score(labels, scores))
        m["image_ap"] = float(average_precision_score(labels, scores))
        m["balanced_accuracy"] = balanced_accuracy(labels, [int(r["pred_label"]) for r in imgs])
        if all("baseline_score" in r for r in imgs):
            m["baseline_image_auroc"] = float(roc_auc_score(labels, [r["baseline_score"] for r in imgs]))
    typed = [r for r in recs if r["qtype"] in MMAD_TYPES and r.get("correct") is not None]
    if typed:
        row = mmad_scores(typed).table[recs[0]["category"]]
        for t, v in row.items():
            m[f"mmad_{_snake(t)}"] = v
    return m


def held_metrics(det: list[dict]) -> dict[str, float]:
    """Free-text detection records (they carry "held"): answer_review_rate, the share of answers that held the part
    for a person (a borderline result), and answer_balanced_accuracy_decided, the balanced accuracy of the others
    (left out when a class has no decided answer); {} for multiple-choice records, which always pick a letter."""
    free = [r for r in det if "held" in r]
    if not free:
        return {}
    out = {"answer_review_rate": float(np.mean([bool(r["held"]) for r in free]))}
    decided = graded_balanced_accuracy([r for r in free if not r["held"]], absent=None)
    if decided is not None:
        out["answer_balanced_accuracy_decided"] = decided
    return out


def build_report(records: list[dict], meta: dict) -> dict:
    """report.json content from all answer records of a run (any order)."""
    if not records:
        raise ValueError("no answers to report on")
    records = sorted(records, key=lambda r: r["key"])
    seeds = sorted({r["seed"] for r in records})
    cats = sorted({r["category"] for r in records})
    categories: dict[str, dict] = {}
    for c in cats:
        per_seed = [category_metrics([r for r in records if r["category"] == c and r["seed"] == s]) for s in seeds]
        per_seed = [p for p in per_seed if p]
        names = sorted({k for p in per_seed for k in p})
        entry: dict = {k: float(np.mean([p[k] for p in per_seed if k in p])) for k in names}
        entry["std"] = {k: float(np.std([p[k] for p in per_seed if k in p])) for k in names}
        imgs = _images([r for r in records if r["category"] == c and r["seed"] == seeds[0]])
        entry["n_normal"] = sum(r.get("label") == 0 for r in imgs)
        entry["n_anomalous"] = sum(r.get("label") == 1 for r in imgs)
        entry["n_questions"] = sum(r["category"] == c and r["seed"] == seeds[0] for r in records)
        categories[c] = entry
    metric_names = sorted({k for e in categories.values() for k, v in e.items() if isinstance(v, float)})
    mean = {k: float(np.mean([e[k] for e in categories.values() if k in e])) for k in metric_names}
    report = {**meta, "seeds": seeds, "categories": categories, "mean": mean,
              "n_questions": sum(r["seed"] == seeds[0] for r in records),
              "n_unparsed": sum(r.get("parsed") is None for r in records)}
    typed = [r for r in records if r["qtype"] in MMAD_TYPES and r.get("correct") is not None]
    if typed:
        per_seed = [mmad_scores([r for r in typed if r["seed"] == s]) for s in seeds]
        types = list(per_seed[0].per_type)
        mm = {
            "per_type": {t: float(np.mean([p.per_type[t] for p in per_seed])) for t in types},
            "average": float(np.mean([p.average for p in per_seed])),
            "table": {g: {t: float(np.mean([p.table[g][t] for p in per_seed])) for t in row}
                      for g, row in per_seed[0].table.items()},
            "counts": per_seed[0].counts,
        }
        # the benchmark's own grouping: by dataset, the first part of the image path ("MVTec-AD", "VisA", ...)
        per_ds = [mmad_scores([{**r, "dataset": r["image"].split("/")[0]} for r in typed if r["seed"] == s],
                              group_key="dataset") for s in seeds]
        mm["per_dataset"] = {g: {t: float(np.mean([p.table[g][t] for p in per_ds])) for t in row}
                             for g, row in per_ds[0].table.items()}
        if len(seeds) > 1:
            mm["std"] = {t: float(np.std([p.per_type[t] for p in per_seed])) for t in types}
            mm["average_std"] = float(np.std([p.average for p in per_seed]))
        report["mmad"] = mm
    return report


def _fmt(v) -> str:
    return f"{100 * v:.1f}" if isinstance(v, float) else str(v)


def write_report(report: dict, out: str | Path) -> dict[str, Path]:
    """report.json, report.md (tables in %, mean ± std over seeds) and report.csv (one row per category)."""
    out = Path(out)
    paths = {"json": out / "report.json", "md": out / "report.md", "csv": out / "report.csv"}
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    cats = report["categories"]
    cols = write_csv(report, paths["csv"])
    lines = [f"# Answer-level evaluation ({report.get('mode', 'questions')})", "",
             (f"source `{report.get('source', '')}`, config `{report.get('config', '')}`, shots {report.get('shots')}, "
              f"seeds {report['seeds']}, {report['n_questions']} questions per seed, "
              f"{report['n_unparsed']} unparsed answers. Figures in %, mean ± std over seeds."), ""]
    if "mmad" in report:
        mm = report["mmad"]
        types = list(mm["per_type"])
        lines += ["## MMAD accuracy: category × question type", "",
                  "| category | " + " | ".join(types) + " | Average |",
                  "|---" * (len(types) + 2) + "|"]
        for g, row in mm["table"].items():
            lines.append(f"| {g} | " + " | ".join(_fmt(row[t]) if t in row else "–" for t in types)
                         + f" | {_fmt(row['Average'])} |")
        lines.append("| **mean** | " + " | ".join(_fmt(mm["per_type"][t]) for t in types)
                     + f" | **{_fmt(mm['average'])}** |")
        lines.append("")
    show = [c for c in ("answer_accuracy", "answer_balanced_accuracy", "answer_review_rate",
                        "answer_balanced_accuracy_decided", "consistency", "image_auroc", "image_ap",
                        "balanced_accuracy", "baseline_answer_balanced_accuracy", "baseline_image_auroc") if c in cols]
    lines += ["## Per category", "", "| category | normal | anomalous | questions | " + " | ".join(show) + " |",
              "|---" * (len(show) + 4) + "|"]
    for name, e in cats.items():
        spread = len(report["seeds"]) > 1
        cells = [(_fmt(e[c]) + (f" ± {100 * e['std'][c]:.1f}" if spread else "")) if c in e else "–" for c in show]
        lines.append(f"| {name} | {e['n_normal']} | {e['n_anomalous']} | {e['n_questions']} | "
                     + " | ".join(cells) + " |")
    mean = report["mean"]
    lines.append("| **mean** | | | | " + " | ".join(_fmt(mean[c]) if c in mean else "–" for c in show) + " |")
    if "answer_review_rate" in show:
        lines += ["", "answer_review_rate: share of free-text detection answers held for a person to check (a "
                  "borderline result); answer_accuracy and answer_balanced_accuracy count each held answer as wrong; "
                  "answer_balanced_accuracy_decided is over the other answers."]
    paths["md"].write_text("\n".join(lines) + "\n")
    return paths


def write_plots(records: list[dict], out: str | Path, data_root: str | None, n_cases: int = 4) -> list[Path]:
    """roc.png (expert score per image, per category, + baseline) and qualitative.png (best and worst images)."""

    out = Path(out)
    root = Path(data_root) if data_root else None
    written = []
    seed0 = min(r["seed"] for r in records)
    recs = sorted((r for r in records if r["seed"] == seed0), key=lambda r: r["key"])
    imgs = [r for r in _images(recs) if r.get("label") is not None]
    curves = {}
    for c in sorted({r["category"] for r in imgs}):
        sub = [r for r in imgs if r["category"] == c]
        curves[c] = ([r["label"] for r in sub], [r["pred_score"] for r in sub])
        if all("baseline_score" in r for r in sub):
            curves[f"{c} (knn baseline)"] = ([r["label"] for r in sub], [r["baseline_score"] for r in sub])
    p = plot_roc(curves, out / "roc.png")
    if p:
        written.append(p)
    by_image: dict[str, list[dict]] = {}
    for r in recs:
        by_image.setdefault(r["image"], []).append(r)
    scored = []
    for img, rs in by_image.items():
        graded = [r["correct"] for r in rs if r.get("correct") is not None]
        if not graded:
            continue
        r0 = rs[0]
        agree = r0.get("label") is None or int(r0["pred_label"]) == r0["label"]
        scored.append((float(np.mean(graded)), agree, img, rs))
    if not scored:
        return written
    scored.sort(key=lambda x: (x[0], x[1], x[2]))
    worst = scored[:n_cases]
    best = [s for s in scored[::-1] if s not in worst][:n_cases]
    cases = []
    for tag, group in (("best", best), ("worst", worst)):
        for frac, _, img, rs in group:
            r0 = rs[0]
            mp = out / "maps" / r0["map"] if r0.get("map") else None
            amap = np.load(mp).astype(np.float32) if mp is not None and mp.exists() else None
            qa = "\n".join(f"[{r['qtype']}] {r['question']} -> {str(r['response'])[:80]!r} "
                           f"({'ok' if r['correct'] else 'wrong'}, gold {r['gold']})" for r in rs[:4])
            text = f"{frac * 100:.0f}% correct, expert score {r0['pred_score']:.3g} (thr {r0['threshold']:.3g})\n{qa}"
            def resolve(p, root=root):
                return str(root / p) if root and p and not Path(p).is_absolute() else p

            cases.append(Case(image=resolve(img), mask=resolve(r0.get("mask")), anomaly_map=amap,
                              threshold=float(r0["threshold"]), text=text,
                              title=f"{tag}: {'/'.join(Path(img).parts[-3:])}"))
    written.append(qualitative_grid(cases, out / "qualitative.png"))
    return written


ANSWER_KEYS = ["answer_accuracy", "answer_balanced_accuracy", "answer_overkill", "answer_miss", "answer_review_rate",
               "answer_balanced_accuracy_decided", "location_accuracy", "consistency", "answer_unparsed",
               "expert_balanced_accuracy"]


def answer_metrics(records: list[dict]) -> dict:
    """Folder VQA metrics over detection records {gt_label, answer_label (bool|None), answer_held, pred_label,
    expert_verdict, gt_position, answer_position}. A held answer (a borderline result: "hold it for a person to
    check") decides nothing: answer_review_rate is their share, answer_balanced_accuracy_decided the balanced
    accuracy of the other answers, and answer accuracy, balanced accuracy, overkill and miss count every held
    answer as wrong, so nothing is hidden. Also: location accuracy (answer position == cell of the ground-truth mask
    centroid), consistency (the answer agrees with the expert: its verdict, or held on a borderline one), the share
    of other unparsed answers (counted as "normal") and the expert's balanced accuracy."""
    gt = np.array([int(r["gt_label"]) for r in records])
    held = np.array([bool(r.get("answer_held")) for r in records], dtype=bool)
    ans = np.array([int(bool(r["answer_label"])) for r in records])  # unparsed counts as "normal"
    graded = np.where(held, 1 - gt, ans)  # a held answer is wrong on either class
    exp = np.array([int(r["pred_label"]) for r in records])
    out = {
        "answer_accuracy": float((graded == gt).mean()) if len(gt) else None,
        "answer_balanced_accuracy": balanced_accuracy(gt, graded),
        "answer_overkill": float(graded[gt == 0].mean()) if (gt == 0).any() else None,
        "answer_miss": float(1 - graded[gt == 1].mean()) if (gt == 1).any() else None,
        "answer_review_rate": float(held.mean()) if len(gt) else None,
        "answer_balanced_accuracy_decided": balanced_accuracy(gt[~held], ans[~held]),
        "consistency": float(np.mean([agrees(r, h, a, e) for r, h, a, e in zip(records, held, ans, exp)]))
        if len(gt) else None,
        "answer_unparsed": float(np.mean([r["answer_label"] is None and not h for r, h in zip(records, held)]))
        if records else None,
        "expert_balanced_accuracy": balanced_accuracy(gt, exp),
    }
    loc = [r for r in records if r["gt_label"] and r.get("gt_position")]
    out["location_accuracy"] = (float(np.mean([r.get("answer_position") == r["gt_position"] for r in loc]))
                                if loc else None)
    return out


def agrees(record: dict, held: bool, answer: int, expert: int) -> bool:
    """The answer agrees with the expert: held on a borderline verdict, else the same binary verdict."""
    if held or record.get("expert_verdict") == "borderline":
        return held and record.get("expert_verdict", "borderline") == "borderline"
    return answer == expert


def summarise(runs: list[dict]) -> dict:
    """{metric: mean over seeds, "std": {metric: std}} of per-seed answer_metrics."""
    out, std = {}, {}
    for k in ANSWER_KEYS:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            out[k], std[k] = float(np.mean(vals)), float(np.std(vals))
    out["std"] = std
    return out


HELD_NOTE = ("answer_review_rate: share of detection answers held for a person to check (a borderline result); "
             "answer_balanced_accuracy, answer_overkill and answer_miss count each held answer as wrong; "
             "answer_balanced_accuracy_decided is over the other answers.")


def merge_report(out_dir: str | Path, summaries: dict, meta: dict) -> dict:
    """Folder VQA: add answer metrics to OUT/report.json (creating it when absent) and write report_vqa.md."""
    out = Path(out_dir)
    path = out / "report.json"
    new = {"shots": meta.get("shots"), "seeds": meta.get("seeds"), "config": meta.get("config"), "categories": {}}
    report = json.loads(path.read_text()) if path.is_file() else new
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
    cols = ["answer_balanced_accuracy", "answer_review_rate", "answer_balanced_accuracy_decided", "location_accuracy",
            "consistency", "answer_overkill", "answer_miss", "answer_unparsed", "expert_balanced_accuracy"]
    lines = ["| category | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    for name, c in report["categories"].items():
        lines.append(f"| {name} | " + " | ".join(fmt(c.get(k)) for k in cols) + " |")
    lines.append("| **mean** | " + " | ".join(fmt(mean.get(k)) for k in cols) + " |")
    lines += ["", HELD_NOTE]
    (out / "report_vqa.md").write_text("\n".join(lines) + "\n")
    return report
