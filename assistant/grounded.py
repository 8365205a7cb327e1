"""Questions the expert's evidence answers outright: what a golden-template comparison found missing or extra, and
which defect type the shape of that change is; "How many defects are there?" (the regions the evidence counts); on
a borderline result every detection and accept/reject question (held for a person); "Why?" on any result; and, on
any part, what kind of defect a flagged region is and what it looks like, from its measured descriptor
(expert/describe.py) and type estimate (expert/defect_type.py).

The LM is conditioned on the verdict, position and size (wording.result_evidence); the aligned path adds each
region's polarity (`Box.change`) and shape (`Box.shape`), which the shipped adapter was not trained to read. So a
type question ("What kind of defect is it?", a multiple-choice type question) or a polarity question ("Is
something missing?") about an aligned result is answered here, in fixed words from that evidence; every other
question, and any of these the evidence cannot settle, goes to the LM. Domain words (printed circuit boards:
open, mousebite, pin hole, short, spur, spurious copper) are used when the conversation or the options speak of
boards; otherwise the shape is said in plain words. A region whose change is neither clearly missing nor extra is
said to be so: the type is not guessed.

Without an aligned reference, "What kind of defect is it?", "Describe it.", "What colour is it?" and "Is it a
scratch or a crack?" about a flagged part are answered from the strongest region's descriptor: the type is named
only when the classifier cleared its threshold, else what was measured is said with the closest type. A
multiple-choice question (MMAD) picks the option the evidence supports: "Is there any defect?" the verdict's yes or
no; a type question the option naming the type the classifier named (none named: the LM answers, as a ranking it is
unsure of picks whichever offered word maps to the vocabulary at all); position and size the expert's words (the
nearest offered grid word when the expert's is not offered). When the verdict is normal, type, position and size
are answered about the strongest deviation (`AnomalyResult.peak`), saying that it does not clear the threshold.

On a borderline result, a free-form detection or accept/reject question ("Is anything wrong?", "Is it safe to
ship?", "What should I do with this part?") is answered here too (wording.review_words): the LM only knows the binary
verdict at the threshold and would answer as if sure; the evidence says it cannot decide, to hold the part for a
person, why (the score within the threshold's uncertainty, or good parts that do not cover this part) and what would
settle it. A multiple-choice detection question still picks the option of the binary verdict (evaluation needs a
letter). "Why do you think so?" and "How sure are you?" are answered from the evidence on every verdict
(wording.why_words): the score against the threshold, where the part differs, what it was judged against, how sure.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from assistant.expert.result import AnomalyResult, Box
from assistant.wording import (
    CHANGE_WORDS,
    NOT_NAMED,
    PCB_SHAPES,
    PCB_WORDS,
    POSITION_WORDS,
    TYPE_ALIASES,
    count_sentence,
    golden_sentence,
    polarity_lead,
    position_phrase,
    review_words,
    size_word,
    type_choice_answer,
    type_option,
    why_words,
    yes_no_option,
)
from assistant.wording.defects import (
    between_sentence,
    colour_sentence,
    describe_sentence,
    looks,
    option_type,
    plain,
    type_sentence,
    type_words_in,
)
from assistant.wording.review import kind_note, region_position, strongest, under_sentence

TYPE_QUESTION = re.compile(r"\b(?:what|which)\s+(?:kind|type|sort|class)\b|\bclassify\b|\bwhat\s+defect\b", re.I)
MISSING_QUESTION = re.compile(r"\b(?:missing|absent|lost|gone)\b", re.I)
EXTRA_QUESTION = re.compile(r"\b(?:extra|added|excess|surplus)\b", re.I)
OBJECT_QUESTION = re.compile(r"\b(?:kind|type|sort|class)\s+of\s+(?:object|part|product|item)\b", re.I)
DETECT_QUESTION = re.compile(r"^\s*(?:is|are|does|do|has)\b.*\b(?:defects?|defective|anomal\w*|damaged?|flaws?)\b",
                             re.I | re.S)  # a yes/no question about the part having a defect
WHERE_QUESTION = re.compile(r"\bwhere\b|\blocat|\bposition\b", re.I)
SIZE_QUESTION = re.compile(r"\bhow\s+(?:large|big)\b|\bsize\b|\barea\b|\bextent\b", re.I)
DESCRIBE_QUESTION = re.compile(r"\bdescribe\b|\blook\s+like\b|\bappearance\b", re.I)
COLOUR_QUESTION = re.compile(r"\bcolou?rs?\b", re.I)
COUNT_QUESTION = re.compile(r"\bhow\s+many\s+(?:\w+\s+)?(?:defects?|defective|regions?|anomal\w*|flaws?|faults?|spots?|"
                            r"scratch\w*|cracks?|problems?|issues?)\b", re.I)
COMPARE_QUESTION = re.compile(r"\bcompare\b|\bdiffer(?:s|ent|ence|ences)?\b", re.I)
# a free-form yes/no question whether the part has a defect ("Is anything wrong?", "Check this part for defects.")
DETECT_FREE = re.compile(r"^\W*(?:please\s+)?(?:is|are|does|do|did|has|have|can|could|any|anything|something|check|"
                         r"inspect)\b.*\b(?:anomal\w*|defect\w*|damaged?|flaws?|faults?|faulty|problems?|issues?|wrong|"
                         r"broken)\b|^\W*what(?:'s|\s+is)\s+wrong\b", re.I | re.S)
# an accept/reject question in any polarity ("Is it safe to ship?", "Should it be thrown away?", "What should I do
# with this part?")
DECIDE_QUESTION = re.compile(
    r"\b(?:ship\w*|reject\w*|accept\w*|scrap\w*|discard\w*|rework|repair\w*|usable|safe|trash\w*|verdict)\b"
    r"|\b(?:pass|fail)(?:es|s)?\s+(?:the\s+)?inspection\b|\bthrown?\s+(?:it\s+|this\s+)?(?:away|out)\b"
    r"|\bbe\s+used\b|\b(?:use|keep)\s+(?:it|this)\b|\bwhat\s+(?:should|shall|do|would|must|can)\s+(?:i|we|you)\s+"
    r"do\b|\brecommend\w*\b"
    r"|^\W*(?:is|are|does|do|can|would|will)\b.*\b(?:good|ok|okay|fine|normal|acceptable|alright|all\s+right)\b",
    re.I | re.S)
# questions about one aspect of the defect (where, how big, which type, how many, what it looks like): not a
# decision, even when they name the defect ("Is the defect large?")
ASPECT_QUESTION = re.compile(r"\bwhere\b|\blocat|\bposition\b|\bhow\s+(?:large|big|many)\b|\b(?:size|area|extent|"
                             r"large|big|small|tiny)\b|\b(?:what|which)\s+(?:kind|type|sort|class)\b|\bdescribe\b|"
                             r"\blook\s+like\b|\bcolou?rs?\b", re.I)
# why the verdict, and how sure ("Why do you think so?", "What makes you say that?", "How confident are you?")
WHY_QUESTION = re.compile(r"^\W*why\b|\bwhat\s+makes\s+you\s+(?:say|think)\b|\bhow\s+(?:sure|confident|certain)\b"
                          r"|\bhow\s+do\s+you\s+know\b|\bare\s+you\s+(?:sure|certain|confident)\b"
                          r"|\b(?:based|basis)\s+(?:on|for)\b", re.I)
GRID_CELLS = {w: (r, c) for r, row in enumerate(POSITION_WORDS) for c, w in enumerate(row)}  # word -> (row, col)
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


def grounded_answer(result: AnomalyResult, question: str, history: Sequence[tuple[str, str]] = ()) -> str | None:
    """The answer the evidence gives to `question`, or None when the LM should answer it."""
    if not question:
        return None
    options = prompt_options(question)
    ask = OPTION_LINE.sub(" ", question)  # the question without its option lines
    if OBJECT_QUESTION.search(ask):  # what the part is, not its defect: the LM's
        return None
    if options and DETECT_QUESTION.search(ask):
        return detection_choice(result, options)
    if not options and WHY_QUESTION.search(ask):
        return why_words(result)
    if not options and result.borderline and review_question(ask):
        return review_words(result)
    if not options and COUNT_QUESTION.search(ask):  # the regions the evidence counts (the LM miscounts many)
        return count_sentence((len(result.boxes) or (1 if result.size else 0)) if result.pred_label else 0)
    if result.alignment == "aligned":
        pcb = speaks_of_boards(ask, history, options)
        if TYPE_QUESTION.search(ask):
            return type_answer(result, options, pcb)
        if not options and MISSING_QUESTION.search(ask):
            return polarity_answer(result, "missing", pcb)
        if not options and EXTRA_QUESTION.search(ask):
            return polarity_answer(result, "extra", pcb)
    return defect_answer(result, ask, options)


def review_question(ask: str) -> bool:
    """A free-form detection or accept/reject question: on a borderline result the evidence answers it (hold the
    part for a person, and why), not the LM, which states the binary verdict at the threshold as if sure."""
    if ASPECT_QUESTION.search(ask) or len(type_words_in(ask) if re.search(r"\bor\b", ask, re.I) else []) >= 2:
        return False
    return bool(DETECT_FREE.search(ask) or DECIDE_QUESTION.search(ask))


def type_answer(result: AnomalyResult, options: dict[str, str], pcb: bool) -> str | None:
    """The type of the strongest region from its shape; None when there is no flagged region or (multiple
    choice) no option names that type."""
    if not result.pred_label or not result.boxes:
        return None
    top = max(result.boxes, key=lambda b: b.score)
    pos = region_position(top, result)
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
    said = [golden_sentence(b.change, b.shape, region_position(b, result), pcb) for b in boxes]
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
    return golden_sentence(top.change, top.shape, region_position(top, result), pcb)


def detection_choice(result: AnomalyResult, options: dict[str, str]) -> str | None:
    """'Is there any defect?' with Yes / No options: the option of the expert's verdict (None without such options)."""
    letter = yes_no_option(options, result.pred_label)
    if letter is None:
        return None
    where = f" {position_phrase(result.position)}" if result.position else ""
    return type_choice_answer(letter, options[letter], f"There is a defect{where}." if result.pred_label
                              else "I find no defect.")


# ------------------------------------------------------------------ any part: measured descriptors and type
def focus(result: AnomalyResult) -> Box | None:
    """The region a defect question is about: the strongest flagged one, else the strongest deviation (peak)."""
    return strongest(result)


def defect_answer(result: AnomalyResult, ask: str, options: dict[str, str]) -> str | None:
    """Type / description / colour / comparison questions (and multiple-choice type, position, size) from the
    descriptors; None for every other question, and for a free-form one about a part judged normal (the LM says it
    is normal), but for a borderline one just under the threshold: its type, look or colour is its strongest
    difference, said to stay under the threshold."""
    box = focus(result)
    if box is None or box.descriptor is None:
        return None
    where = position_phrase(region_position(box, result))
    if options:
        return choice_answer(result, box, ask, options, where)
    if not result.pred_label:  # borderline under the threshold: the answers before described its strongest difference
        said = TYPE_QUESTION.search(ask) or DESCRIBE_QUESTION.search(ask) or COLOUR_QUESTION.search(ask)
        return under_sentence(box.descriptor, where) if result.borderline and said else None
    d = box.descriptor
    asked = type_words_in(ask) if re.search(r"\bor\b", ask, re.I) else []
    if len(asked) >= 2:
        return between_sentence(d, asked, where)
    if TYPE_QUESTION.search(ask):
        return type_sentence(d, where)
    if DESCRIBE_QUESTION.search(ask):
        return describe_answer(result)
    if COLOUR_QUESTION.search(ask):
        return colour_sentence(d)
    if COMPARE_QUESTION.search(ask) and result.shots > 0:
        return compare_answer(result, box)
    return None


def compare_answer(result: AnomalyResult, box: Box) -> str:
    """'Compare it with the reference.' on a flagged part: where it differs (the mask's position, as the evidence
    says it), then the strongest difference in measured words, and the change of material when aligned."""
    where = position_phrase(result.position or region_position(box, result))
    said = f"Compared with the reference, this part differs {where}: {looks(box.descriptor)}"
    if box.change in CHANGE_WORDS:
        said += f" ({box.change}: {CHANGE_WORDS[box.change]})"
    more = len(result.boxes) - 1
    tail = f"; {more} more region{'s' if more > 1 else ''} differ{'' if more > 1 else 's'}" if more > 0 else ""
    return f"{said}{tail}. The rest matches."


def describe_answer(result: AnomalyResult) -> str:
    """Up to three flagged regions, strongest first, each in measured words with its type when named."""
    boxes = sorted((b for b in result.boxes if b.descriptor is not None), key=lambda b: -b.score)
    if not boxes and (top := focus(result)) is not None:  # a flagged mask too small for a box: its peak region
        boxes = [top]
    said = []
    for b in boxes[:3]:
        d, where = b.descriptor, position_phrase(region_position(b, result))
        said.append(describe_sentence(d, where, kind_note(b)))  # aligned: the change of material, else the type
    more = max(0, len(result.boxes) - len(said))
    return " ".join(said + ([f"{more} smaller region{'s' if more > 1 else ''} not described."] if more > 0 else []))


def choice_answer(result: AnomalyResult, box: Box, ask: str, options: dict[str, str], where: str) -> str | None:
    """A multiple-choice type, position or size question: the letter the evidence supports, then why."""
    def said(sentence: str) -> str:
        if result.pred_label:
            return sentence
        return f"I find no defect that clears the threshold. Of the strongest deviation: {sentence}"

    if TYPE_QUESTION.search(ask):  # only a named type: an unsure ranking picks whichever option maps at all
        named = box.descriptor.defect_type
        letter = next((k for k, v in options.items() if named and option_type(v) == named), None)
        return type_choice_answer(letter, options[letter], said(type_sentence(box.descriptor, where))) \
            if letter else None
    if WHERE_QUESTION.search(ask):
        letter = nearest_position(region_position(box, result), options)
        if letter is None:
            return None
        exact = plain(options[letter]) == region_position(box, result)
        note = "" if exact else f" (closest offered: {options[letter]})"
        return type_choice_answer(letter, options[letter], said(f"It is {where}{note}."))
    if SIZE_QUESTION.search(ask):
        want = size_word(result.area_fraction if result.pred_label else box.area_fraction)
        letter = next((k for k, v in options.items() if plain(v) == want), None)
        return type_choice_answer(letter, options[letter], said(f"It is {want}.")) if letter else None
    return None


def nearest_position(want: str, options: dict[str, str]) -> str | None:
    """The letter of the grid-word option nearest to `want` (the same word first); None when no option is one."""
    target = GRID_CELLS.get(want)
    cells = {k: GRID_CELLS[plain(v)] for k, v in options.items() if plain(v) in GRID_CELLS}
    if target is None or not cells:
        return None
    return min(cells, key=lambda k: (abs(cells[k][0] - target[0]) + abs(cells[k][1] - target[1]), k))
