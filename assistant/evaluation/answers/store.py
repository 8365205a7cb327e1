"""Crash-safe answer store, deterministic sharding and shard merging.

`AnswerStore` appends one JSON line per answer and flushes + fsyncs it at once; reopening the file
drops a torn last line (a run killed mid-write), so a restarted run skips exactly the keys already
answered: nothing lost, nothing duplicated. An advisory lock stops two processes writing one file.

Sharding splits a list of units (e.g. images) sorted by key into `num_chunks` round-robin chunks;
under `accelerate launch` the process index picks the chunk. Each shard writes
`OUT/shards/answers.<i>-of-<n>.jsonl`; `merge_shards` checks that all n are there, that no key is
answered twice with different content, and returns the records in the run's order. `check_run_file`
keeps OUT/run.json, so answers of a run with other settings are never mixed into the same folder.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

try:
    import fcntl  # advisory file locks (POSIX)
except ImportError:  # pragma: no cover - Windows: no lock, one writer per answers file is up to the user
    fcntl = None

T = TypeVar("T")


class StoreError(RuntimeError):
    """An answers file or shard set is inconsistent; the message names the file and the problem."""


class AnswerStore:
    """Append-only JSONL of answer records, each with a unique "key"."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []
        self._keys: set[str] = set()
        self.dropped_partial = False  # True when a torn last line was removed on open
        self._fh = open(self.path, "a+b")  # noqa: SIM115 - held open for the store's lifetime
        try:
            if fcntl is not None:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise StoreError(f"{self.path}: another process is writing this answers file") from None
        self._load()

    def _load(self) -> None:
        self._fh.seek(0)
        data = self._fh.read()
        good_end = 0
        for ln, raw in enumerate(data.split(b"\n"), start=1):
            end = good_end + len(raw) + 1
            if end > len(data):  # last piece without a newline: torn write (or empty tail)
                if raw.strip():
                    self.dropped_partial = True
                break
            if raw.strip():
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError:
                    raise StoreError(f"{self.path}:{ln}: not a JSON line inside the file (only the last "
                                     "line may be torn); fix or remove the file") from None
                if "key" not in rec:
                    raise StoreError(f"{self.path}:{ln}: record without a 'key' field")
                if rec["key"] in self._keys:
                    raise StoreError(f"{self.path}:{ln}: key {rec['key']!r} appears twice")
                self._keys.add(rec["key"])
                self.records.append(rec)
            good_end = end
        if good_end < len(data):
            self._fh.truncate(good_end)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        self._fh.seek(0, os.SEEK_END)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: dict) -> None:
        """Append one record (must carry a new "key") and make it durable before returning."""
        key = record.get("key")
        if key is None:
            raise StoreError(f"{self.path}: a record needs a 'key' field, got fields {sorted(record)}")
        if key in self._keys:
            raise StoreError(f"{self.path}: key {key!r} is already answered")
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        self._fh.write(line.encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._keys.add(key)
        self.records.append(record)

    def close(self) -> None:
        if not self._fh.closed:
            if fcntl is not None:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()

    def __enter__(self) -> AnswerStore:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_run_file(out: Path, meta: dict) -> None:
    """Create OUT/run.json, or check that an existing one describes the same run."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), meta.get(k)) for k in set(old) | set(meta) if old.get(k) != meta.get(k)}
        if diff:
            what = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"{out} holds answers of a different run ({what}); use another --out or remove it")
        return
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    try:
        os.link(tmp, path)  # atomic create: concurrent shards cannot both write it
    except FileExistsError:
        check_run_file(out, meta)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class Chunk:
    index: int  # this process's chunk, 0-based
    count: int  # number of chunks
    distributed: bool = False  # True when taken from accelerate's process index

    def __post_init__(self):
        if self.count < 1 or not (0 <= self.index < self.count):
            raise ValueError(f"--chunk-idx must be in [0, {self.count}) with --num-chunks {self.count}, "
                             f"got {self.index}")


def resolve_chunk(num_chunks: int = 1, chunk_idx: int = 0) -> Chunk:
    """The chunk this process runs: --num-chunks/--chunk-idx, or accelerate's process index/count
    when launched with several processes (then the flags must be left at their defaults)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU-only machines
        if num_chunks not in (1, state.num_processes):
            raise ValueError(f"--num-chunks {num_chunks} conflicts with {state.num_processes} launched processes")
        return Chunk(state.process_index, state.num_processes, distributed=True)
    return Chunk(chunk_idx, num_chunks)


def shard(units: Sequence[T], chunk: Chunk, key=lambda u: u) -> list[T]:
    """Deterministic round-robin share of `units` (ordered by key) for this chunk."""
    ordered = sorted(units, key=key)
    return ordered[chunk.index::chunk.count]


def answers_path(out: str | Path, chunk: Chunk) -> Path:
    out = Path(out)
    if chunk.count == 1:
        return out / "answers.jsonl"
    return out / "shards" / f"answers.{chunk.index}-of-{chunk.count}.jsonl"


def read_answers(path: str | Path) -> list[dict]:
    """Records of an answers file (read-only; a torn last line is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: answers file not found")
    out = []
    lines = path.read_bytes().split(b"\n")
    for ln, raw in enumerate(lines[:-1], start=1):  # the piece after the last newline is torn or empty
        if raw.strip():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                raise StoreError(f"{path}:{ln}: not a JSON line") from None
    return out


def merge_shards(out: str | Path, order: Iterable[str] | None = None) -> list[dict]:
    """All records of OUT/shards/answers.*-of-N.jsonl, checked complete and duplicate-free.

    order: keys in the run's order; records are returned in that order (unknown keys are an error);
    without it they are sorted by key.
    """
    sdir = Path(out) / "shards"
    files = sorted(sdir.glob("answers.*-of-*.jsonl")) if sdir.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{sdir}: no shard files answers.<i>-of-<n>.jsonl to merge")
    counts, found = set(), {}
    for f in files:
        i, n = f.name[len("answers."):-len(".jsonl")].split("-of-")
        counts.add(int(n))
        found[int(i)] = f
    if len(counts) != 1:
        raise StoreError(f"{sdir}: shards from runs with different --num-chunks {sorted(counts)}; "
                         "remove the stale ones")
    n = counts.pop()
    missing = sorted(set(range(n)) - set(found))
    if missing:
        raise StoreError(f"{sdir}: {n} chunks expected, missing chunk(s) {missing}")
    by_key: dict[str, dict] = {}
    for i in range(n):
        for rec in read_answers(found[i]):
            prev = by_key.get(rec["key"])
            if prev is not None and prev != rec:
                raise StoreError(f"{found[i]}: key {rec['key']!r} also answered differently in another shard")
            by_key[rec["key"]] = rec
    if order is None:
        return [by_key[k] for k in sorted(by_key)]
    order = list(order)
    extra = set(by_key) - set(order)
    if extra:
        raise StoreError(f"{sdir}: {len(extra)} answers for questions not in this run, e.g. {sorted(extra)[:3]}")
    return [by_key[k] for k in order if k in by_key]


def write_answers(path: str | Path, records: list[dict]) -> None:
    """Write records as a fresh JSONL file atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
