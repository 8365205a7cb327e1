"""MMAD benchmark format: question loading, prompts, answer parsing and per-type accuracy.

`mmad.json` is a dict keyed by the query image path relative to the data root
("MVTec-AD/bottle/test/broken_large/000.png"). Each value holds
  "conversation": [{"Question", "Options": {"A": .., "B": ..}, "Answer": "B", "type"}, ...],
  "mask_path" (relative to the category folder, e.g. "ground_truth/broken_large/000_mask.png"),
  "similar_templates" / "random_templates" (normal images relative to the data root; the 1-shot reference),
  optionally "golden": true (the templates are golden samples of the part's design in the same fixture: fitted
  with alignment "golden"; absent: the config's expert.alignment).

Scoring follows the benchmark's summary script: "Object Structure"/"Object Details" count as
"Object Analysis"; Anomaly Detection accuracy is balanced, (acc on normal + acc on anomalous) / 2,
an image being normal when "good" is in its path; a group's average is the mean over its types, and
overall figures are means over groups. One deliberate difference: an answer that cannot be parsed
counts as wrong (the benchmark drops it), and the count is reported.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assistant.evaluation.data.jsonl import QAItem, QuestionFileError, golden_flag
from assistant.evaluation.expert.metrics import graded_balanced_accuracy
from assistant.wording import yes_no_option

MMAD_TYPES = [
    "Anomaly Detection", "Defect Classification", "Defect Localization", "Defect Description",
    "Defect Analysis", "Object Classification", "Object Analysis",
]  # column order of the MMAD paper
TYPE_ALIASES = {"Object Structure": "Object Analysis", "Object Details": "Object Analysis"}
DETECTION = "Anomaly Detection"
INSTRUCTION = "Answer with the option's letter from the given choices directly."


def normalize_type(qtype: str) -> str:
    return TYPE_ALIASES.get(qtype, qtype)


def _mask_path(root: Path, image_id: str, mask_rel: str) -> str:
    """mask_path is relative to the category folder (first two parts of the key); fall back to three."""
    parts = image_id.split("/")
    candidates = [root.joinpath(*parts[:2], mask_rel), root.joinpath(*parts[:3], mask_rel)]
    for c in candidates:
        if c.exists():
            return str(c)
    return str(candidates[0])


def load_mmad(path: str | Path, data_root: str | Path, templates: str = "similar", shots: int = 1,
              shuffle_seed: int | None = None) -> list[QAItem]:
    """MMAD questions as QAItems, one per conversation turn; keys are `image#turn`.

    templates: "similar" or "random" (which template list gives the references); shots: how many of
    them (0 = no reference). shuffle_seed: shuffle each question's options deterministically (per
    image and turn), re-lettering them A, B, ... as the benchmark's open-model scripts do; None keeps
    the file's order.
    """
    path, root = Path(path), Path(data_root)
    if templates not in ("similar", "random"):
        raise ValueError(f"templates must be 'similar' or 'random', got {templates!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MMAD question file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise QuestionFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not data:
        raise QuestionFileError(f"{path}: expected a non-empty JSON object keyed by image path, "
                                f"got {type(data).__name__}")
    items: list[QAItem] = []
    for image_id, value in data.items():
        where = f"{path}: {image_id!r}"
        if not isinstance(value, dict) or not isinstance(value.get("conversation"), list):
            raise QuestionFileError(f"{where}: expected an object with a 'conversation' list")
        tlist = value.get(f"{templates}_templates") or []
        if len(tlist) < shots:
            raise QuestionFileError(f"{where}: {shots} shot(s) asked but '{templates}_templates' has {len(tlist)}")
        refs, golden = [str(root / t) for t in tlist[:shots]], golden_flag(value.get("golden"), where)
        mask = _mask_path(root, image_id, value["mask_path"]) if value.get("mask_path") else None
        parts = image_id.split("/")
        category = "/".join(parts[:2]) if len(parts) > 2 else (parts[0] if len(parts) > 1 else "all")
        label = 0 if "good" in image_id else 1  # the benchmark's normal_flag rule
        for turn, qa in enumerate(value["conversation"]):
            for req in ("Question", "Options", "Answer"):
                if req not in qa:
                    raise QuestionFileError(f"{where} turn {turn}: missing field {req!r} (has {sorted(qa)})")
            options = {str(k): str(v) for k, v in qa["Options"].items()}
            answer = str(qa["Answer"])
            if answer not in options:
                raise QuestionFileError(f"{where} turn {turn}: answer {answer!r} not among options {sorted(options)}")
            if shuffle_seed is not None:
                options, answer = shuffle_options(options, answer, random.Random(f"{shuffle_seed}|{image_id}|{turn}"))
            items.append(QAItem(
                key=f"{image_id}#{turn}", image=str(root / image_id), image_id=image_id, golden=golden,
                question=str(qa["Question"]).strip(), references=refs, options=options, answer=answer,
                qtype=normalize_type(str(qa.get("type", "Question"))), category=category, label=label, mask=mask,
            ))
    return items


def shuffle_options(options: dict[str, str], answer: str, rng: random.Random) -> tuple[dict[str, str], str]:
    """Shuffle option texts and re-letter them A, B, ...; returns (options, new answer letter)."""
    pairs = list(options.items())
    rng.shuffle(pairs)
    new = {chr(65 + i): text for i, (_, text) in enumerate(pairs)}
    return new, chr(65 + [k for k, _ in pairs].index(answer))


def build_prompt(question: str, options: dict[str, str] | None) -> str:
    """The benchmark's layout: question, one "X. text" line per option, then the instruction."""
    if not options:
        return question
    lines = "\n".join(f"{k}. {v}" for k, v in options.items())
    return f"{question}\n{lines}\n{INSTRUCTION}"


def detection_choice(options: dict[str, str], anomalous: bool) -> str | None:
    """The option a detector's verdict picks for an Anomaly Detection question ("Yes"/"No" texts)."""
    return yes_no_option(options, anomalous)


@dataclass
class MMADScores:
    table: dict[str, dict[str, float]]  # group -> type -> accuracy, plus "Average"
    per_type: dict[str, float]  # type -> mean over groups
    average: float  # mean of per_type
    counts: dict[str, dict[str, int]]  # group -> type -> questions

    def to_dict(self) -> dict:
        return {"per_type": self.per_type, "average": self.average, "table": self.table, "counts": self.counts}


def mmad_scores(records: list[dict], group_key: str = "category") -> MMADScores:
    """Per-group x per-type accuracy from answer records (fields: qtype, correct, label, group_key).

    Anomaly Detection is balanced over normal (label 0) and anomalous (label 1) images; a class with
    no images contributes 0, as in the benchmark.
    """
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        groups.setdefault(r[group_key], {}).setdefault(normalize_type(r["qtype"]), []).append(r)
    if not groups:
        raise ValueError("no answer records to score")
    types_present = [t for t in MMAD_TYPES if any(t in g for g in groups.values())]
    types_present += sorted({t for g in groups.values() for t in g} - set(types_present))
    table: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for name in sorted(groups):
        row: dict[str, float] = {}
        for t, recs in groups[name].items():
            if t == DETECTION:
                row[t] = graded_balanced_accuracy(recs, absent=0.0)
            else:
                row[t] = float(np.mean([r["correct"] for r in recs]))
        ordered = {t: row[t] for t in types_present if t in row}
        ordered["Average"] = float(np.mean(list(ordered.values())))
        table[name] = ordered
        counts[name] = {t: len(groups[name][t]) for t in types_present if t in groups[name]}
    per_type = {t: float(np.mean([table[g][t] for g in table if t in table[g]])) for t in types_present}
    return MMADScores(table=table, per_type=per_type, average=float(np.mean(list(per_type.values()))), counts=counts)
