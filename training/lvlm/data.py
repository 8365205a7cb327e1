"""Training samples of the LVLM: data_synth folders joined into `Sample`s, conversations encoded to fit
train.max_len, and the deterministic order in which the batches draw them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from assistant.constants import IMAGE_TOKEN
from assistant.wording import SUSPICION, TYPE_SHAPES, change_words, evidence_text
from assistant.wording.defects import evidence_looks
from data_synth.build import read_manifest
from data_synth.looks import descriptor_of

if TYPE_CHECKING:
    from assistant.lvlm import LVLM, VisualInputs


@dataclass
class Sample:
    id: str  # manifest id
    root: Path  # data folder
    image: str  # image path relative to root
    mask: str | None  # mask path relative to root (anomalous samples)
    label: int  # 1 = anomalous
    refs: list[str]  # reference normal paths relative to root (the conversation's k-shot)
    pool: list[str]  # the category's reference pool
    turns: list[tuple[str, str]]  # (question, answer) pairs
    evidence: str  # the verdict in words


def load_samples(root: str | Path, max_refs: int, changes: bool = False, looks: bool = False) -> list[Sample]:
    """Join manifest.jsonl and conversations.json of one data_synth folder. `changes` / `looks`:
    lvlm.evidence_changes / lvlm.evidence_looks (the latter needs a build with --descriptor-answers)."""
    root = Path(root)
    man, conv = root / "manifest.jsonl", root / "conversations.json"
    if not man.is_file() or not conv.is_file():
        raise FileNotFoundError(f"{root}: expected manifest.jsonl and conversations.json from "
                                "`python -m data_synth build`")
    recs = {r["id"]: r for r in read_manifest(root, absolute=False)}
    out = []
    for c in json.loads(conv.read_text()):
        r = recs.get(c["id"])
        if r is None:
            raise ValueError(f"{conv}: conversation {c['id']} has no manifest record")
        turns = _turns(c, conv)
        label = int(r["label"])
        change = change_words(r.get("change") or "", TYPE_SHAPES.get(r.get("defect_type") or "", "")) \
            if changes and r.get("aligned") else None  # lvlm.evidence_changes: the golden-sample change too
        ev = evidence_text(bool(label), SUSPICION.get(r.get("severity") or "", "suspicious"), r.get("position"),
                           r.get("size"), r.get("area_fraction"), r.get("n_components") or None, change,
                           _looks_words(r, root) if looks and label else None)
        out.append(Sample(c["id"], root, r["image"], r.get("mask"), label, list(c.get("references", []))[:max_refs],
                          r["references"], turns, ev))
    return out


def _looks_words(record: dict, root: Path) -> str | None:
    """The evidence's looks clause of an anomalous record (None when its mask was empty)."""
    if "looks" not in record:
        raise ValueError(f"{root}: lvlm.evidence_looks needs the measured looks of every defect; rebuild the "
                         "conversations with `python -m data_synth build ... --descriptor-answers` (same --out)")
    return evidence_looks(descriptor_of(record["looks"])) if record["looks"] else None


def _turns(conversation: dict, path: Path) -> list[tuple[str, str]]:
    """(question, answer) pairs of a LLaVA conversation (human/gpt alternating), without the image token."""
    msgs = conversation["conversations"]
    turns = []
    for i in range(0, len(msgs) - 1, 2):
        if msgs[i]["from"] != "human" or msgs[i + 1]["from"] != "gpt":
            raise ValueError(f"{path}: conversation {conversation['id']} is not human/gpt alternating at turn {i}")
        turns.append((msgs[i]["value"].replace(IMAGE_TOKEN, "").strip(), msgs[i + 1]["value"].strip()))
    return turns


def encode_sample(model: LVLM, vis: VisualInputs, s: Sample, max_len: int):
    """(ids, labels) of the conversation, dropping trailing turns until it fits max_len."""
    turns = list(s.turns)
    while True:
        ids, _ = model.tokenize(model.messages(vis.refs.shape[0], vis.evidence, turns))
        if ids.numel() <= max_len or len(turns) == 1:
            return model.tokenize(model.messages(vis.refs.shape[0], vis.evidence, turns), max_len=max_len)
        turns = turns[:-1]


def batch_order(n: int, seed: int, total: int) -> list[int]:
    """Deterministic sample order over epochs (each epoch a fresh permutation)."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    while len(out) < total:
        out.extend(rng.permutation(n).tolist())
    return out[:total]


def split_samples(n: int, max_samples: int, heldout: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    """(used, held-out, training) sample indices: the first max_samples + heldout samples in file order (all with
    max_samples 0; the feature cache is built only for these), shuffled by `seed`, the first `heldout` kept out."""
    import random

    use = list(range(min(n, max_samples + heldout) if max_samples else n))
    order = list(use)
    random.Random(seed).shuffle(order)
    return use, sorted(order[:heldout]), order[heldout:]
