"""Questions the expert's evidence answers outright: what a golden-template comparison found missing or extra, and
which defect type the shape of that change is.

The LM is conditioned on the verdict, position and size (wording.result_evidence); the aligned path adds each
region's polarity (`Box.change`) and shape (`Box.shape`), which the shipped adapter was not trained to read. So a
type question ("What kind of defect is it?", a multiple-choice type question) or a polarity question ("Is
something missing?") about an aligned result is answered here, in fixed words from that evidence; every other
question, and any of these the evidence cannot settle, goes to the LM. Domain words (printed circuit boards:
open, mousebite, pin hole, short, spur, spurious copper) are used when the conversation or the options speak of
boards; otherwise the shape is said in plain words. A region whose change is neither clearly missing nor extra is
said to be so: the type is not guessed.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from assistant.expert.result import AnomalyResult, Box
from assistant.wording import (
    NOT_NAMED,
    PCB_SHAPES,
    PCB_WORDS,
    TYPE_ALIASES,
    golden_sentence,
    polarity_lead,
    position_phrase,
    position_word,
    type_choice_answer,
    type_option,
)

TYPE_QUESTION = re.compile(r"\b(?:what|which)\s+(?:kind|type|sort|class)\b|\bclassify\b|\bwhat\s+defect\b", re.I)
MISSING_QUESTION = re.compile(r"\b(?:missing|absent|lost|gone)\b", re.I)
EXTRA_QUESTION = re.compile(r"\b(?:extra|added|excess|surplus)\b", re.I)
OPTION_LINE = re.compile(r"^\s*([A-Z])\.\s+(.+?)\s*$", re.M)  # "F. short" lines of a multiple-choice prompt


def prompt_options(question: str) -> dict[str, str]:
    """The options of a multiple-choice prompt (evaluation.data.mmad.build_prompt's "X. text" lines)."""
    return dict(OPTION_LINE.findall(question))


def speaks_of_boards(question: str, history: Sequence[tuple[str, str]], options: dict[str, str]) -> bool:
    """True when the question, the conversation so far or an option speaks of circuit boards."""
    said = [question, *(q for q, _ in history)]
    if any(PCB_WORDS.search(t) for t in said):
        return True
    names = {a for aliases in TYPE_ALIASES.values() for a in aliases}
    return any(" ".join(v.lower().replace("_", " ").split()) in names for v in options.values())


def box_position(box: Box, result: AnomalyResult) -> str:
    """Grid word of a region's centre."""
    h, w = result.anomaly_map.shape[:2]
    cy, cx = box.center
    return position_word(cy / max(h, 1), cx / max(w, 1))


def grounded_answer(result: AnomalyResult, question: str, history: Sequence[tuple[str, str]] = ()) -> str | None:
    """The answer the evidence gives to `question`, or None when the LM should answer it."""
    if result.alignment != "aligned" or not question:
        return None
    options = prompt_options(question)
    ask = OPTION_LINE.sub(" ", question)  # the question without its option lines
    pcb = speaks_of_boards(ask, history, options)
    if TYPE_QUESTION.search(ask):
        return type_answer(result, options, pcb)
    if options:
        return None
    if MISSING_QUESTION.search(ask):
        return polarity_answer(result, "missing", pcb)
    if EXTRA_QUESTION.search(ask):
        return polarity_answer(result, "extra", pcb)
    return None


def type_answer(result: AnomalyResult, options: dict[str, str], pcb: bool) -> str | None:
    """The type of the strongest region from its shape; None when there is no flagged region or (multiple
    choice) no option names that type."""
    if not result.pred_label or not result.boxes:
        return None
    top = max(result.boxes, key=lambda b: b.score)
    pos = box_position(top, result)
    if top.change not in ("missing", "extra") or not top.shape:
        return None if options else NOT_NAMED.format(where=position_phrase(pos))
    sentence = golden_sentence(top.change, top.shape, pos, pcb)
    if not options:
        return sentence
    pcb_type = PCB_SHAPES.get(top.shape)
    letter = type_option(pcb_type, options) if pcb_type else None
    return type_choice_answer(letter, options[letter], sentence) if letter else None


def polarity_answer(result: AnomalyResult, asked: str, pcb: bool) -> str:
    """'Is something missing?' (asked "missing") or '... extra?' ("extra"): whether a flagged region has that
    change, then up to three regions' changes, those of the asked polarity first."""
    if not result.pred_label or not result.boxes:
        return polarity_lead(asked, False, False)
    boxes = sorted(result.boxes, key=lambda b: (b.change != asked, b.change == "altered", -b.score))[:3]
    said = [golden_sentence(b.change, b.shape, box_position(b, result), pcb) for b in boxes]
    return " ".join([polarity_lead(asked, boxes[0].change == asked, True), *said])


def golden_note(result: AnomalyResult, question: str, history: Sequence[tuple[str, str]] = ()) -> str | None:
    """The change of the strongest region, said after an LM answer (the LM does not state it): None when the
    evidence answered the question itself, the result is not aligned or not anomalous, or the region is altered."""
    if result.alignment != "aligned" or not result.pred_label or not result.boxes:
        return None
    if grounded_answer(result, question, history) is not None:
        return None
    top = max(result.boxes, key=lambda b: b.score)
    if top.change not in ("missing", "extra"):
        return None
    pcb = speaks_of_boards(question, history, {})
    return golden_sentence(top.change, top.shape, box_position(top, result), pcb)
