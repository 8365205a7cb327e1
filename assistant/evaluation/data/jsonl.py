"""Question items for answer-level evaluation, and the generic JSONL question format.

One JSON object per line:
    {"image": "rel/or/abs.png", "references": ["good1.png"], "question": "Is there any anomaly?",
     "answer": "yes", "options": {"A": "Yes.", "B": "No."}, "mask": "gt.png", "label": 1,
     "category": "bottle", "type": "Anomaly Detection", "golden": true}
Only "image" and "question" are required. Relative paths are resolved against `data_root`. "golden": true says the
references are golden samples of the part's design shot in the same fixture: they are fitted with alignment
"golden" for this item (without it, the config's expert.alignment).
With "options", "answer" is the option letter and answers are parsed like MMAD; without, a
yes/no gold answer is compared to the yes/no word of the response, any other gold answer to the
normalised response text.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class QAItem:
    key: str  # stable unique id of this question (resume/shard/merge key)
    image: str  # absolute path of the query image
    image_id: str  # path as written in the question file (relative to the data root)
    question: str  # the question text, without options
    references: list[str] = field(default_factory=list)  # absolute paths of reference-normal images
    options: dict[str, str] | None = None  # {"A": text, ...} for multiple choice, else None
    answer: str | None = None  # gold answer: option letter, or free text; None = unknown
    qtype: str = "Question"  # question type (MMAD types, or "Question")
    category: str = "all"  # report group, e.g. "MVTec-AD/bottle"
    label: int | None = None  # 1 anomalous, 0 normal, None unknown
    mask: str | None = None  # absolute path of the ground-truth mask, if any
    golden: bool = False  # the references are golden samples (fitted with alignment "golden")

    @property
    def group(self) -> tuple:
        """Items sharing a group share one expert analysis (same image, same references, same golden flag)."""
        return (self.image_id, tuple(self.references)) + (("golden",) if self.golden else ())


class QuestionFileError(ValueError):
    """A question file (JSONL or MMAD JSON) is malformed; the message names file, line/key and field."""


def _resolve(root: Path, p: str) -> str:
    q = Path(p)
    return str(q if q.is_absolute() else root / q)


def _label(value, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "normal", "good", "anomalous", "anomaly"):
        return 0 if value.strip().lower() in ("0", "normal", "good") else 1
    raise QuestionFileError(f"{where}: 'label' must be 0/1 or normal/anomalous, got {value!r}")


def golden_flag(value, where: str) -> bool:
    """The optional "golden" field: true/false (absent: false); QuestionFileError naming `where` otherwise."""
    if value is None or isinstance(value, bool):
        return bool(value)
    raise QuestionFileError(f"{where}: 'golden' must be true or false, got {value!r}")


def guess_category(image_id: str) -> str:
    """Category of an MVTec-style path: the folders before "test" ("a/bottle/test/x/0.png" -> "a/bottle")."""
    parts = Path(image_id).parts
    if "test" in parts[:-1] and parts.index("test") > 0:
        return "/".join(parts[: parts.index("test")])
    return Path(image_id).parent.name or "all"


def load_jsonl(path: str | Path, data_root: str | Path | None = None) -> list[QAItem]:
    """Parse a JSONL question file into QAItems (file order; keys are `image#n` per image)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: JSONL question file not found")
    root = Path(data_root) if data_root else path.parent
    items: list[QAItem] = []
    seen: dict[str, int] = {}
    for ln, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{ln}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise QuestionFileError(f"{where}: expected one JSON object per line ({e.msg})") from None
        if not isinstance(obj, dict):
            raise QuestionFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        for req in ("image", "question"):
            if not isinstance(obj.get(req), str) or not obj[req].strip():
                raise QuestionFileError(f"{where}: expected a non-empty string field {req!r}, got {obj.get(req)!r}")
        refs = obj.get("references", [])
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise QuestionFileError(f"{where}: 'references' must be a list of paths, got {refs!r}")
        options = obj.get("options")
        if options is not None and (not isinstance(options, dict) or not options):
            raise QuestionFileError(f"{where}: 'options' must be a non-empty object like {{\"A\": ...}}, "
                                    f"got {options!r}")
        answer = obj.get("answer")
        if answer is not None:
            answer = str(answer)
            if options is not None and answer not in options:
                raise QuestionFileError(f"{where}: answer {answer!r} is not one of the options {sorted(options)}")
        image_id = obj["image"]
        n = seen.get(image_id, 0)
        seen[image_id] = n + 1
        category = obj.get("category") or guess_category(image_id)
        items.append(QAItem(
            key=f"{image_id}#{n}", image=_resolve(root, image_id), image_id=image_id,
            question=obj["question"].strip(), references=[_resolve(root, r) for r in refs],
            options={str(k): str(v) for k, v in options.items()} if options else None,
            answer=answer, qtype=str(obj.get("type") or "Question"), category=str(category),
            label=_label(obj.get("label"), where),
            mask=_resolve(root, obj["mask"]) if obj.get("mask") else None, golden=golden_flag(obj.get("golden"), where),
        ))
    if not items:
        raise QuestionFileError(f"{path}: no questions found (expected JSON lines with 'image' and 'question')")
    return items
