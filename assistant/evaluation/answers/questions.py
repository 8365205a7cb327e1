"""Question files (MMAD JSON, generic JSONL) through the answer runner: resumable, sharded, mergeable.

Questions about the same image with the same references form one unit: the expert analyses the image
once, then the assistant answers each question. Units are sorted by (seed, image) and sharded
round-robin; every answer is one durable line in answers.jsonl (see store.py), so a killed run
restarts where it stopped and shards merge into exactly the records of a single run.

The answerer is anything with `analyze(query, references) -> evidence` (evidence.result is an
AnomalyResult) and `answer(evidence, question) -> str`: the Assistant facade, or a fake in tests. An item marked
golden (its references are golden samples) is analysed with `analyze(..., golden=True)`.
A free-text Anomaly Detection answer that holds the part for a person (a borderline result) is recorded as held
(`held`) and graded wrong; the report gives its share and the accuracy of the decided answers beside it.
An optional baseline detector `detect(query, references) -> AnomalyResult` answers the Anomaly
Detection questions from its verdict alone, so the report shows the gap.

`meta` (OUT/run.json) defines a run: mode (mmad | jsonl), source, data_root, templates, shots, seeds,
shuffle_options, config, overrides, baseline.
"""
from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from assistant.evaluation.answers.runner import RunStats, Unit, run_units
from assistant.evaluation.answers.store import (
    Chunk,
    StoreError,
    answers_path,
    merge_shards,
    shard,
    write_answers,
)
from assistant.evaluation.data.jsonl import QAItem
from assistant.evaluation.data.mmad import DETECTION, build_prompt, detection_choice
from assistant.wording import held_answer, parse_choice, parse_yes_no

MAP_SIDE = 96  # side of the downsized anomaly maps kept for plots


class Answerer(Protocol):
    def analyze(self, query, references=()): ...  # -> evidence with .result (AnomalyResult)
    def answer(self, evidence, question: str) -> str: ...


def record_key(seed: int, item: QAItem) -> str:
    return f"s{seed}/{item.key}"


def make_units(items_by_seed: dict[int, list[QAItem]]) -> list[Unit]:
    """Group questions by (seed, image, references, golden); keys get an `s<seed>/` prefix. Sorted run order (a
    golden unit's sort key ends in "|golden"; the others keep theirs, so earlier runs resume unchanged)."""
    units: dict[tuple, Unit] = {}
    for seed, items in items_by_seed.items():
        for it in items:
            key = (seed, *it.group)
            if key not in units:
                sort_key = f"{seed:08d}|{it.image_id}|{'|'.join(it.references)}" + ("|golden" if it.golden else "")
                units[key] = Unit(seed, it.image_id, [], [], sort_key=sort_key)
            units[key].items.append(it)
            units[key].keys.append(record_key(seed, it))
    return sorted(units.values(), key=lambda u: u.sort_key)


def run_order(units: list[Unit]) -> list[str]:
    return [k for u in units for k in u.keys]


def grade(item: QAItem, response: str) -> tuple[str | None, bool | None]:
    """(parsed answer, correct) for a response; correct is None when the gold answer is unknown."""
    if item.options:
        parsed = parse_choice(response, item.options)
    elif item.answer is not None and parse_yes_no(item.answer) is not None and len(item.answer.split()) <= 2:
        # a held answer (borderline: for a person to check) says neither: wrong, whatever "no" its reasons contain
        parsed = None if held_answer(response) else parse_yes_no(response)
        return parsed, (parsed == parse_yes_no(item.answer))
    else:
        parsed = " ".join((response or "").lower().split())
    if item.answer is None:
        return parsed, None
    if item.options:
        return parsed, parsed == item.answer
    gold = " ".join(item.answer.lower().split()).rstrip(".")
    return parsed, bool(gold) and gold in parsed


def relative_path(p: str, root: str | None) -> str:
    """`p` relative to `root` when it can be (records keep paths portable), else as given."""
    if root:
        try:
            return os.path.relpath(p, root)
        except ValueError:
            pass
    return p


def map_path(out: Path, unit: Unit) -> Path:
    return out / "maps" / (hashlib.sha1(unit.sort_key.encode()).hexdigest()[:16] + ".npy")


def save_map(path: Path, amap: np.ndarray) -> None:
    """Downsized float16 copy of an anomaly map, written atomically (shards may race on one image)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = amap.shape
    s = MAP_SIDE / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = cv2.resize(amap.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, small.astype(np.float16))
    os.replace(tmp, path)


class QuestionAsker:
    """Answers one unit at a time: the expert analyses the image once, then every question about it is answered
    (one left-padded batch when the answerer has answer_batch, so an answer never depends on resume or shard
    boundaries); the baseline detector, when given, judges the same image."""

    def __init__(self, answerer: Answerer, out: Path, data_root: str | None = None, baseline: Callable | None = None):
        self.answerer, self.out, self.data_root, self.baseline = answerer, Path(out), data_root, baseline
        params = inspect.signature(answerer.analyze).parameters
        self.seeded, self.takes_golden = "seed" in params, "golden" in params

    def __call__(self, units: list[Unit]) -> list[list[dict]]:
        return [self.ask(u) for u in units]

    def analyze_kwargs(self, unit: Unit) -> dict:
        """The expert's calibration seed and, for an item marked golden, golden=True (items without the field are
        analysed as before: the config's alignment)."""
        kw = {"seed": unit.seed} if self.seeded else {}
        if unit.items[0].golden:
            if not self.takes_golden:
                raise TypeError(f"{unit.image_id}: the item says its references are golden samples, but the "
                                "answerer's analyze() takes no 'golden' argument")
            kw["golden"] = True
        return kw

    def ask(self, unit: Unit) -> list[dict]:
        first = unit.items[0]
        evidence = self.answerer.analyze(first.image, list(first.references), **self.analyze_kwargs(unit))
        result = evidence.result
        save_map(map_path(self.out, unit), np.asarray(result.anomaly_map))
        base = self.baseline(first.image, list(first.references)) if self.baseline is not None else None
        prompts = [build_prompt(it.question, it.options) for it in unit.items]
        if hasattr(self.answerer, "answer_batch") and len(prompts) > 1:
            responses = list(self.answerer.answer_batch([evidence] * len(prompts), prompts))
        else:
            responses = [self.answerer.answer(evidence, p) for p in prompts]
        return [self.record(unit, it, response, result, base) for it, response in zip(unit.items, responses)]

    def record(self, unit: Unit, it: QAItem, response: str, result, base) -> dict:
        parsed, correct = grade(it, response)
        rec = {
            "key": record_key(unit.seed, it), "seed": unit.seed, "image": it.image_id, "category": it.category,
            "references": [relative_path(r, self.data_root) for r in it.references], "qtype": it.qtype,
            "question": it.question, "options": it.options, "gold": it.answer, "response": response,
            "parsed": parsed, "correct": correct, "label": it.label,
            "mask": relative_path(it.mask, self.data_root) if it.mask else None,
            "pred_score": float(result.pred_score), "pred_label": bool(result.pred_label),
            "threshold": float(result.threshold), "map": map_path(self.out, unit).name,
        }
        if it.qtype == DETECTION and not it.options:  # free text: a borderline result's answer is held
            rec["held"] = held_answer(response)
        if it.golden:  # only on golden items: the records of other items stay as they were
            rec.update(golden=True, alignment=getattr(result, "alignment", ""),
                       alignment_reason=getattr(result, "alignment_reason", ""))
        if it.qtype == DETECTION and it.options:
            ec = detection_choice(it.options, bool(result.pred_label))
            rec["expert_choice"] = ec
            rec["expert_correct"] = (ec == it.answer) if ec is not None else None
        if base is not None:
            rec["baseline_score"] = float(base.pred_score)
            rec["baseline_label"] = bool(base.pred_label)
            if it.qtype == DETECTION and it.options:
                bc = detection_choice(it.options, bool(base.pred_label))
                rec["baseline_correct"] = (bc == it.answer) if bc is not None else None
        return rec


def load_items(meta: dict) -> dict[int, list[QAItem]]:
    """Questions per seed (MMAD options are shuffled per seed when the run asks for it)."""
    if meta["mode"] == "mmad":
        from assistant.evaluation.data.mmad import load_mmad

        return {s: load_mmad(meta["source"], meta["data_root"], templates=meta["templates"], shots=meta["shots"],
                             shuffle_seed=s if meta["shuffle_options"] else None) for s in meta["seeds"]}
    from assistant.evaluation.data.jsonl import load_jsonl

    items = load_jsonl(meta["source"], meta["data_root"])
    return {s: items for s in meta["seeds"]}


def seed_everything(seed: int = 0) -> None:
    """Same weights in every process: any randomly initialised part (untrained heads, new token rows) and
    sampling then agree between a run, its resumption and its shards."""
    import random

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
    from assistant.evaluation.expert.baselines import build_knn_baseline

    return build_knn_baseline(meta["config"], meta["overrides"], device=device)


def answer_shard(units: list[Unit], meta: dict, out: Path, chunk: Chunk, answerer: Answerer,
                 baseline: Callable | None = None, max_questions: int | None = None, progress: bool = True) -> RunStats:
    """Run (or resume) this chunk's share of the run's units (make_units) into its answers file."""
    mine = shard(units, chunk, key=lambda u: u.sort_key)
    ask = QuestionAsker(answerer, out, meta["data_root"], baseline)
    desc = f"answers {chunk.index + 1}/{chunk.count}" if chunk.count > 1 else "answers"
    return run_units(mine, ask, answers_path(out, chunk), max_questions=max_questions, progress=progress, desc=desc)


class UnansweredError(StoreError):
    """Some questions of the run have no answer in any shard yet; `missing` says how many."""

    def __init__(self, message: str, missing: int):
        super().__init__(message)
        self.missing = missing


def merge_run(out: Path, units: list[Unit], allow_partial: bool = False) -> list[dict]:
    """OUT/answers.jsonl from the shards' records, in the run's order; returns them. UnansweredError when some
    questions are still unanswered, unless `allow_partial`."""
    order = run_order(units)
    records = merge_shards(out, order)
    missing = len(order) - len(records)
    if missing and not allow_partial:
        raise UnansweredError(f"{out}/shards: {missing} of {len(order)} questions unanswered; rerun the unfinished "
                              "shard(s) or pass --allow-partial", missing)
    write_answers(out / "answers.jsonl", records)
    return records


def finish(out: Path, records: list[dict], meta: dict, plots: bool = True) -> dict:
    """report.json, report.md, report.csv (and roc.png, qualitative.png) of a complete run; prints report.md."""
    from assistant.evaluation.answers.report import build_report, write_plots, write_report

    report = build_report(records, {k: meta[k] for k in ("mode", "source", "config", "shots", "templates", "baseline")})
    paths = write_report(report, out)
    if plots:
        write_plots(records, out, meta["data_root"])
    print(paths["md"].read_text())
    return report
