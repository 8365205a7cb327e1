"""The one answer-level runner: folder VQA, MMAD and JSONL questions go through `run_units`.

A source turns its questions into `Unit`s, one query image (with its references and seed) each, that name the
answer records they write; an asker answers a batch of units and returns their records. The runner keeps the
crash-safe answers file (store.py): it skips units whose records are all there, adds only missing records (a unit
half-written by a killed run is answered again, its written records kept), and can stop after `max_questions`.

    folder.py     MVTec-layout folders: "Is there any anomaly in the image?" then "Where is it?" (k references
                  drawn per seed); units of one category and seed are answered in batches
    questions.py  MMAD / JSONL question files: all questions about one image with its references, one unit each;
                  sharded round-robin, merged by store.merge_shards
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from assistant.evaluation.answers.store import AnswerStore


@dataclass
class Unit:
    seed: int  # reference draw, expert calibration and option shuffle seed
    image_id: str  # the query image as its source names it
    keys: list[str]  # the answer records this unit writes, in answer order
    items: list = field(default_factory=list)  # what the asker needs: QAItems (question files), an EvalItem (folders)
    batch: tuple = ()  # units with the same batch tuple, one after another, may be answered together
    sort_key: str = ""  # shard order (question files) and the name of the unit's saved map


Asker = Callable[[list[Unit]], list[list[dict]]]  # units -> records per unit, each record with its "key"


@dataclass
class RunStats:
    answered: int = 0  # questions answered in this call
    skipped: int = 0  # questions already in the store (resumed)
    seconds: float = 0.0  # wall time of this call
    dropped_partial: bool = False  # a torn last line was removed on resume


def batches(units: Sequence[Unit], size: int) -> Iterator[list[Unit]]:
    """Runs of consecutive units with the same `batch` tuple, at most `size` long."""
    run: list[Unit] = []
    for u in units:
        if run and (len(run) == size or u.batch != run[0].batch):
            yield run
            run = []
        run.append(u)
    if run:
        yield run


def run_units(units: Sequence[Unit], ask: Asker, path: str | Path, batch_size: int = 1,
              max_questions: int | None = None, progress: bool = True, desc: str = "answers") -> RunStats:
    """Answer the units not yet answered in the answers file `path`, in order, `batch_size` units per call of `ask`.

    max_questions: stop after adding this many records (smoke runs, crash tests); None = all.
    """
    stats = RunStats()
    t0 = time.perf_counter()
    with AnswerStore(path) as store:
        stats.dropped_partial = store.dropped_partial
        todo = [u for u in units if any(k not in store for k in u.keys)]
        missing = sum(k not in store for u in todo for k in u.keys)
        stats.skipped = sum(len(u.keys) for u in units) - missing
        bar = tqdm(total=len(units), initial=len(units) - len(todo), unit="img", disable=not progress, desc=desc)
        for batch in batches(todo, batch_size):
            if _add_answers(store, ask(batch), stats, bar, max_questions):
                break
        bar.close()
    stats.seconds = time.perf_counter() - t0
    return stats


def _add_answers(store: AnswerStore, records: list[list[dict]], stats: RunStats, bar,
                 max_questions: int | None) -> bool:
    """Add the records that are not in the store yet; True when `max_questions` is reached."""
    for recs in records:
        for rec in recs:
            if rec["key"] in store:
                continue
            if max_questions is not None and stats.answered >= max_questions:
                break
            store.add(rec)
            stats.answered += 1
        bar.update(1)
        if max_questions is not None and stats.answered >= max_questions:
            return True
    return False
