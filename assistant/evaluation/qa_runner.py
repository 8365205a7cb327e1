"""Answer-level evaluation over question sets (MMAD JSON, generic JSONL): resumable, sharded, mergeable.

Questions about the same image with the same references form one unit: the expert analyses the image
once, then the assistant answers each question. Units are sorted by (seed, image) and sharded
round-robin; every answer is one durable line in answers.jsonl (see store.py), so a killed run
restarts where it stopped and shards merge into exactly the records of a single run.

The answerer is anything with `analyze(query, references) -> evidence` (evidence.result is an
AnomalyResult) and `answer(evidence, question) -> str`: the Assistant facade, or a fake in tests.
An optional baseline detector `detect(query, references) -> AnomalyResult` answers the Anomaly
Detection questions from its verdict alone, so the report shows the gap.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from assistant.evaluation.jsonl_data import QAItem
from assistant.evaluation.mmad import DETECTION, build_prompt, detection_choice
from assistant.evaluation.store import AnswerStore, Chunk, answers_path, shard
from assistant.wording import parse_choice, parse_yes_no

MAP_SIDE = 96  # side of the downsized anomaly maps kept for plots


class Answerer(Protocol):
    def analyze(self, query, references=()): ...  # -> evidence with .result (AnomalyResult)
    def answer(self, evidence, question: str) -> str: ...


@dataclass
class Unit:
    seed: int  # seed these questions belong to
    image_id: str  # query image as named in the question file
    items: list[QAItem] = field(default_factory=list)  # questions about this image, file order

    @property
    def sort_key(self) -> str:
        return f"{self.seed:08d}|{self.image_id}|{'|'.join(self.items[0].references)}"


def make_units(items_by_seed: dict[int, list[QAItem]]) -> list[Unit]:
    """Group questions by (seed, image, references); keys get an `s<seed>/` prefix. Sorted run order."""
    units: dict[tuple, Unit] = {}
    for seed, items in items_by_seed.items():
        for it in items:
            u = units.setdefault((seed, it.image_id, tuple(it.references)), Unit(seed, it.image_id))
            u.items.append(it)
    return sorted(units.values(), key=lambda u: u.sort_key)


def record_key(seed: int, item: QAItem) -> str:
    return f"s{seed}/{item.key}"


def run_order(units: list[Unit]) -> list[str]:
    return [record_key(u.seed, it) for u in units for it in u.items]


def grade(item: QAItem, response: str) -> tuple[str | None, bool | None]:
    """(parsed answer, correct) for a response; correct is None when the gold answer is unknown."""
    if item.options:
        parsed = parse_choice(response, item.options)
    elif item.answer is not None and parse_yes_no(item.answer) is not None and len(item.answer.split()) <= 2:
        parsed = parse_yes_no(response)
        return parsed, (parsed == parse_yes_no(item.answer))
    else:
        parsed = " ".join((response or "").lower().split())
    if item.answer is None:
        return parsed, None
    if item.options:
        return parsed, parsed == item.answer
    gold = " ".join(item.answer.lower().split()).rstrip(".")
    return parsed, bool(gold) and gold in parsed


def _rel(p: str, root: str | None) -> str:
    if root:
        try:
            return os.path.relpath(p, root)
        except ValueError:
            pass
    return p


def map_path(out: Path, unit: Unit) -> Path:
    return out / "maps" / (hashlib.sha1(unit.sort_key.encode()).hexdigest()[:16] + ".npy")


def _save_map(path: Path, amap: np.ndarray) -> None:
    """Downsized float16 copy of an anomaly map, written atomically (shards may race on one image)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = amap.shape
    s = MAP_SIDE / max(h, w)
    small = cv2.resize(amap.astype(np.float32), (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, small.astype(np.float16))
    os.replace(tmp, path)


@dataclass
class RunStats:
    answered: int = 0  # questions answered in this call
    skipped: int = 0  # questions already in the store (resumed)
    seconds: float = 0.0  # wall time of this call
    dropped_partial: bool = False  # a torn last line was removed on resume


def run_units(units: list[Unit], answerer: Answerer, out: str | Path, chunk: Chunk,
              data_root: str | None = None, baseline: Callable | None = None,
              max_questions: int | None = None, progress: bool = True) -> RunStats:
    """Answer this chunk's questions into its answers file, skipping those already answered.

    max_questions: stop after answering this many (for smoke runs and crash tests); None = all.
    """
    out = Path(out)
    mine = shard(units, chunk, key=lambda u: u.sort_key)
    stats = RunStats()
    t0 = time.perf_counter()
    with AnswerStore(answers_path(out, chunk)) as store:
        stats.dropped_partial = store.dropped_partial
        todo = [u for u in mine if any(record_key(u.seed, it) not in store for it in u.items)]
        stats.skipped = sum(len(u.items) for u in mine) - sum(
            sum(record_key(u.seed, it) not in store for it in u.items) for u in todo)
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="img", disable=not progress,
                   desc=f"answers {chunk.index + 1}/{chunk.count}" if chunk.count > 1 else "answers")
        for unit in todo:
            first = unit.items[0]
            seed_kw = {"seed": unit.seed} if "seed" in inspect.signature(answerer.analyze).parameters else {}
            evidence = answerer.analyze(first.image, list(first.references), **seed_kw)  # expert calibration seed
            result = evidence.result
            _save_map(map_path(out, unit), np.asarray(result.anomaly_map))
            base = baseline(first.image, list(first.references)) if baseline is not None else None
            # all of the image's questions are generated together (one left-padded batch when the answerer
            # has answer_batch), so an answer never depends on resume or shard boundaries
            prompts = [build_prompt(it.question, it.options) for it in unit.items]
            if hasattr(answerer, "answer_batch") and len(prompts) > 1:
                responses = list(answerer.answer_batch([evidence] * len(prompts), prompts))
            else:
                responses = [answerer.answer(evidence, p) for p in prompts]
            for it, response in zip(unit.items, responses):
                key = record_key(unit.seed, it)
                if key in store:
                    continue
                if max_questions is not None and stats.answered >= max_questions:
                    break
                parsed, correct = grade(it, response)
                rec = {
                    "key": key, "seed": unit.seed, "image": it.image_id, "category": it.category,
                    "references": [_rel(r, data_root) for r in it.references], "qtype": it.qtype,
                    "question": it.question, "options": it.options, "gold": it.answer, "response": response,
                    "parsed": parsed, "correct": correct, "label": it.label,
                    "mask": _rel(it.mask, data_root) if it.mask else None,
                    "pred_score": float(result.pred_score), "pred_label": bool(result.pred_label),
                    "threshold": float(result.threshold), "map": map_path(out, unit).name,
                }
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
                store.add(rec)
                stats.answered += 1
            bar.update(1)
            if max_questions is not None and stats.answered >= max_questions:
                break
        bar.close()
    stats.seconds = time.perf_counter() - t0
    return stats
