"""Every user-facing word about the expert's evidence, and every parser that reads words back.

One place for (grid.py) the 3x3 position grid and size words, percentages; (golden.py) the golden-template words:
polarity, defect types and shapes, registration; and (here) suspicion (severity) words, the evidence
sentence the LM is conditioned on, the verdict sentences said outside the LM, and the parsers that turn free-text
answers into a verdict, a position, an option letter or yes/no. data_synth writes its texts with these words,
training and evaluation grade answers with these parsers, so what is said and what is checked cannot drift apart.
"""

from __future__ import annotations

import re
from difflib import get_close_matches

import numpy as np

from assistant.wording.defects import evidence_looks
from assistant.wording.golden import (  # noqa: F401 (re-exported: one place for every word)
    CHANGE_TAGS,
    CHANGE_WORDS,
    DEFECT_CHANGES,
    MATCHES_GOLDEN,
    MATERIAL_NOUNS,
    NOT_NAMED,
    NOTHING_CHANGED,
    PCB_SHAPES,
    PCB_TYPES,
    PCB_WORDS,
    SHAPE_PHRASES,
    TYPE_ALIASES,
    TYPE_NAMES,
    TYPE_PHRASES,
    TYPE_SHAPES,
    alignment_sentence,
    change_label,
    change_phrase,
    change_sentence,
    golden_sentence,
    parse_change,
    polarity_lead,
    registration_figures,
    type_choice_answer,
    type_name,
    type_option,
)
from assistant.wording.grid import (  # noqa: F401 (re-exported: one place for every word)
    POSITION_WORDS,
    SIZE_WORDS,
    article,
    mask_position,
    percent,
    position_phrase,
    position_word,
    size_word,
)
from assistant.wording.review import (  # noqa: F401 (re-exported: one place for every word)
    BORDERLINE_MARK,
    borderline_note,
    review_words,
    says_borderline,
    why_words,
)

DETECT_QUESTION = "Is there any anomaly in the image?"


def yes_no_option(options: dict[str, str], yes: bool) -> str | None:
    """The letter of the option whose text opens with "Yes" (`yes`) or "No", None when none does."""
    want = "yes" if yes else "no"
    return next((k for k, v in options.items() if re.match(rf"\s*{want}\b", v, re.I)), None)
WHERE_QUESTION = "Where is it?"


def count_sentence(regions: int) -> str:
    """The answer to "How many defects are there?" for a number of flagged regions (0: none)."""
    if regions <= 0:
        return "There are no defects."
    return "There is one defective region." if regions == 1 else f"There are {regions} defective regions."

SUSPICION = {"minor": "slightly suspicious", "moderate": "moderately suspicious", "severe": "highly suspicious"}
SUSPICION_RATIOS = ((1.15, "minor"), (1.5, "moderate"))  # score / threshold upper bounds of each level


def suspicion_word(score: float, threshold: float) -> str:
    """How far an anomalous score sits above its threshold, in words ("slightly suspicious", ...)."""
    r = score / max(abs(threshold), 1e-8)
    level = next((lv for bound, lv in SUSPICION_RATIOS if r < bound), "severe")
    return SUSPICION[level]


def evidence_text(
    anomalous: bool,
    suspicion: str | None = None,
    position: str | None = None,
    size: str | None = None,
    area_fraction: float | None = None,
    regions: int | None = None,
    change: str | None = None,
    looks: str | None = None,
) -> str:
    """The expert's verdict in words: one sentence the LM can copy truthful facts from. `change`: the strongest
    golden-template region's change in words (`change_words`), said only by configs with lvlm.evidence_changes;
    `looks`: the strongest region's measured look and type (`defects.evidence_looks`), only with
    lvlm.evidence_looks."""
    if not anomalous:
        return "Expert evidence: no suspicious features."
    parts = [f"Expert evidence: {suspicion or 'suspicious'} features"]
    if position:
        parts.append(f"location: {position}")
    if size:
        parts.append(f"size: {size}" + (f", about {percent(area_fraction)} of the image" if area_fraction else ""))
    if regions:
        parts.append(f"regions: {regions}")
    if change:
        parts.append(f"golden sample: {change}")
    if looks:
        parts.append(looks)
    return "; ".join(parts) + "."


def change_words(change: str, shape: str = "") -> str | None:
    """'missing (cut)', 'extra', ... of a region's change and shape; None when there is no change to say."""
    if change not in CHANGE_WORDS:
        return None
    return f"{change} ({shape})" if shape in SHAPE_PHRASES else change


def result_evidence(result, changes: bool = False, looks: bool = False) -> str:
    """evidence_text for an AnomalyResult; an empty mask falls back to the map maximum for the location. With
    `changes` an aligned result's strongest region's change and shape are said too; with `looks` the strongest
    measured region's look and type (the peak's when no region was flagged)."""
    if not result.pred_label:
        return evidence_text(False)
    pos = result.position
    if pos is None and result.anomaly_map.size:
        r, c = np.unravel_index(int(np.argmax(result.anomaly_map)), result.anomaly_map.shape)
        pos = position_word((r + 0.5) / result.anomaly_map.shape[0], (c + 0.5) / result.anomaly_map.shape[1])
    change = None
    top = max(result.boxes, key=lambda b: b.score) if result.boxes else result.peak
    if changes and result.alignment == "aligned" and result.boxes:
        change = change_words(top.change, top.shape)
    said = evidence_looks(top.descriptor) if looks and top is not None and top.descriptor is not None else None
    return evidence_text(
        True,
        result.severity,
        pos,
        result.size,
        result.area_fraction if result.size else None,
        len(result.boxes) or (1 if result.size else None),
        change,
        said,
    )


REFERENCE_CAUTION = (
    "Caution: most of this image differs from the reference, so this verdict is less reliable; "
    "check that the reference shows the same part, view and lighting."
)


def verdict_turn(result) -> tuple[str, str]:
    """The expert's verdict as an opening (question, answer) turn, in the form the LM was trained on. A chat
    whose first question is not the detection question ("Can we ship it?") gets it as context: the LM answers
    follow-ups truthfully, but a yes/no question asked first lost its polarity (bench/chat_truth.py --first)."""
    if not result.pred_label:
        return DETECT_QUESTION, "No, the object looks normal."
    where = f" {position_phrase(result.position)} of the image" if result.position else ""
    return DETECT_QUESTION, f"Yes, there is an anomaly: a defect{where}."


def verdict_words(result) -> str:
    """'anomalous (moderately suspicious)', 'normal', or 'borderline: just under the threshold ...'."""
    if result.borderline:
        return borderline_note(result)
    return f"{result.verdict} ({result.severity})"


_NEG = [
    r"\bno (?:visible |obvious |apparent )?(?:anomal\w*|defects?|damage|problems?|issues?|flaws?)\b",
    r"\b(?:looks|appears|seems|is) (?:completely |perfectly )?(?:normal|fine|good|flawless|defect-free|ok)\b",
    r"\bnot? (?:anomalous|defective|damaged)\b",
    r"\bfree of (?:defects|anomalies)\b",
    r"\bnothing wrong\b",
    r"\bno suspicious\b",
]

_POS = [
    (
        r"\b(?:there is|there are|i see|has|shows|contains) (?:an? |some |one |\d+ )?(?:\w+ ){0,3}"
        r"(?:anomal\w*|defects?|scratch\w*|cracks?|holes?|stains?|dents?|damage|contamination|cuts?)\b"
    ),
    r"\b(?:is|looks|appears) (?:\w+ )?(?:anomalous|defective|damaged|broken)\b",
    r"\banomal(?:y|ies|ous)\b",
    r"\bdefect(?:s|ive)?\b",
]

_POSITIONS = sorted([w for row in POSITION_WORDS for w in row], key=len, reverse=True)


def parse_verdict(answer: str) -> bool | None:
    """True = anomalous, False = normal, None = cannot tell. A leading yes/no decides; a borderline answer (it
    holds the part for a person) is None; else key phrases."""
    text = " ".join(str(answer).lower().split())
    m = re.match(r"^\W*(yes|no|yeah|nope|correct)\b", text)
    if m:
        return m.group(1) in ("yes", "yeah", "correct")
    if BORDERLINE_MARK.lower() in text:  # a borderline answer decides nothing (wording/review.py)
        return None
    if any(re.search(p, text) for p in _NEG):
        return False
    if any(re.search(p, text) for p in _POS):
        return True
    return None


def held_answer(answer: str) -> bool:
    """True when a detection answer holds the part for a person (a borderline result: "It is borderline: ... hold
    it for a person to check"): it states the borderline verdict and opens with neither yes nor no. Evaluation counts
    such an answer on its own, neither normal nor anomalous."""
    return says_borderline(answer) and parse_verdict(answer) is None


def parse_position(answer: str) -> str | None:
    """The first 3x3 grid word in the answer ('top left' ... 'bottom right', 'center'/'centre'/'middle')."""
    text = " ".join(str(answer).lower().replace("-", " ").split())
    text = text.replace("centre", "center").replace("middle", "center")
    best = None
    for w in _POSITIONS:
        m = re.search(rf"\b{w}\b", text)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), w)
    return best[1] if best else None


_LETTER = r"\(?\s*(?:([A-Z])(?![A-Za-z])|([a-z])(?=\s*[\.\)\],;:!]|\s*$))"  # capital, or a lone lowercase letter

_ANSWER_TAG = re.compile(r"(?i:answer)\s*(?:(?i:is)|[:：])?\s*[:：]?\s*" + _LETTER)

_OPTION_WORD = re.compile(r"\b(?i:option|choice)\s*" + _LETTER)

_PAREN = re.compile(r"\(([A-Z])\)()")

_LONE_CAP = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])()")


def _is_article(text: str, end: int) -> bool:
    """A capital "A" followed by a lowercase word ("A crack ...") is the article, not option A."""
    m = re.match(r"\s+([a-z]+)", text[end:])
    return bool(m) and m.group(1) not in ("is", "or", "and")


def parse_choice(response: str, options: dict[str, str]) -> str | None:
    """Option letter chosen by a free-text response, or None when nothing can be recovered.

    In order: "Answer: X" / "the answer is X" (a lowercase letter only when it stands alone);
    "option X"; "(X)"; a response that is just a letter ("b", "B."); a standalone capital option
    letter (the article "A crack" excluded); a response that is the start of exactly one option's
    text; then, as the benchmark does, the option whose text is closest (difflib) to the response.
    An explicit "Answer: X" with X not among the options gives None.
    """
    text = (response or "").strip()
    if not text:
        return None
    keys = {k.upper(): k for k in options}

    def pick(pattern: re.Pattern) -> str | None:
        for m in pattern.finditer(text):
            letter = m.group(1) or m.group(2)
            if letter == "A" and _is_article(text, m.end()):
                continue
            if letter.upper() in keys:
                return keys[letter.upper()]
        return None

    for pattern in (_ANSWER_TAG, _OPTION_WORD, _PAREN):
        got = pick(pattern)
        if got:
            return got
    if any((m.group(1) or "") not in ("", "A") for m in _ANSWER_TAG.finditer(text)):
        return None  # "Answer: E." names a letter that is not an option: invalid, not a guess
    bare = re.sub(r"[\s\.\)\(:,;!]+", "", text)
    if len(bare) == 1 and bare.upper() in keys:
        return keys[bare.upper()]
    got = pick(_LONE_CAP)
    if got:
        return got
    norm = {k: v.lower().strip().rstrip(".") for k, v in options.items()}
    low = text.lower().rstrip(".")
    starts = [k for k, v in norm.items() if v and (v.startswith(low) or low.startswith(v))]
    if len(starts) == 1:
        return starts[0]
    lowered = {v: k for k, v in norm.items()}
    close = get_close_matches(low, list(lowered), n=1, cutoff=0.0)
    return lowered[close[0]] if close else None


def parse_yes_no(text: str) -> str | None:
    """The first standalone 'yes' or 'no' of a text (None when neither)."""
    m = re.search(r"\b(yes|no)\b", (text or "").lower())
    return m.group(1) if m else None


# inspection profiles: words said outside the LM and the typed-correction parser (wording/profiles.py)
from assistant.wording.profiles import (  # noqa: E402,F401 (re-exported: one place for every word)
    CANCELLED,
    LABELS,
    NO_PART,
    NO_PROFILE,
    NO_PROFILE_TERMINAL,
    confirm_prompt,
    confirm_question,
    label_ack,
    loo_words,
    parse_correction,
    profile_status,
    profile_words,
)
