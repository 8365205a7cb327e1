"""AnswerStore durability (torn lines, duplicates, locking), deterministic sharding and shard merging."""
import json

import pytest

from assistant.evaluation.answers.store import (
    AnswerStore,
    Chunk,
    StoreError,
    answers_path,
    merge_shards,
    read_answers,
    resolve_chunk,
    shard,
    write_answers,
)


def test_store_appends_and_reopens(tmp_path):
    p = tmp_path / "answers.jsonl"
    with AnswerStore(p) as s:
        s.add({"key": "a", "v": 1})
        s.add({"key": "b", "v": 2})
        with pytest.raises(StoreError, match="already answered"):
            s.add({"key": "a", "v": 3})
        with pytest.raises(StoreError, match="needs a 'key'"):
            s.add({"v": 3})
    with AnswerStore(p) as s:
        assert "a" in s and "b" in s and len(s) == 2 and not s.dropped_partial
    assert [r["key"] for r in read_answers(p)] == ["a", "b"]


def test_store_drops_a_torn_last_line(tmp_path):
    p = tmp_path / "answers.jsonl"
    p.write_bytes(b'{"key": "a"}\n{"key": "b"}\n{"key": "c", "resp')  # killed mid-write
    with AnswerStore(p) as s:
        assert s.dropped_partial and len(s) == 2 and "c" not in s
        s.add({"key": "c", "v": 1})
    lines = p.read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["a", "b", "c"]


def test_store_rejects_corruption_inside_and_duplicates(tmp_path):
    p = tmp_path / "answers.jsonl"
    p.write_text('{"key": "a"}\ngarbage\n{"key": "b"}\n')
    with pytest.raises(StoreError, match=r"answers.jsonl:2: not a JSON line"):
        AnswerStore(p)
    p.write_text('{"key": "a"}\n{"key": "a"}\n')
    with pytest.raises(StoreError, match="appears twice"):
        AnswerStore(p)


def test_store_lock_refuses_a_second_writer(tmp_path):
    p = tmp_path / "answers.jsonl"
    with AnswerStore(p), pytest.raises(StoreError, match="another process"):
        AnswerStore(p)
    AnswerStore(p).close()  # free again


def test_shards_are_a_deterministic_partition():
    units = [f"u{i:02d}" for i in range(11)]
    parts = [shard(list(reversed(units)), Chunk(i, 3)) for i in range(3)]
    assert sorted(u for p in parts for u in p) == units  # cover, no overlap
    assert parts[0] == ["u00", "u03", "u06", "u09"]
    assert parts == [shard(units, Chunk(i, 3)) for i in range(3)]  # input order does not matter
    with pytest.raises(ValueError, match=r"--chunk-idx must be in \[0, 2\)"):
        Chunk(2, 2)


def test_resolve_chunk_flags_and_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    c = resolve_chunk(4, 1)
    assert (c.index, c.count, c.distributed) == (1, 4, False)


def test_merge_shards(tmp_path):
    for i in range(2):
        with AnswerStore(answers_path(tmp_path, Chunk(i, 2))) as s:
            for k in ("a", "b", "c", "d")[i::2]:
                s.add({"key": k, "v": k})
    assert [r["key"] for r in merge_shards(tmp_path)] == ["a", "b", "c", "d"]
    assert [r["key"] for r in merge_shards(tmp_path, order=["d", "c", "b", "a"])] == ["d", "c", "b", "a"]
    with pytest.raises(StoreError, match="not in this run"):
        merge_shards(tmp_path, order=["a", "b"])
    # a conflicting duplicate across shards is an error; an identical one is tolerated
    with open(answers_path(tmp_path, Chunk(1, 2)), "a") as f:
        f.write(json.dumps({"key": "a", "v": "other"}) + "\n")
    with pytest.raises(StoreError, match="answered differently"):
        merge_shards(tmp_path)
    # missing shard / mixed shard counts
    answers_path(tmp_path, Chunk(1, 2)).unlink()
    with pytest.raises(StoreError, match=r"missing chunk\(s\) \[1\]"):
        merge_shards(tmp_path)
    with AnswerStore(answers_path(tmp_path, Chunk(0, 3))):
        pass
    with pytest.raises(StoreError, match="different --num-chunks"):
        merge_shards(tmp_path)


def test_write_answers_roundtrip(tmp_path):
    recs = [{"key": "x", "a": [1, 2]}, {"key": "y", "a": None}]
    write_answers(tmp_path / "m.jsonl", recs)
    assert read_answers(tmp_path / "m.jsonl") == recs
    with pytest.raises(FileNotFoundError, match="answers file not found"):
        read_answers(tmp_path / "none.jsonl")
