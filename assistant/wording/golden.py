"""Golden-template words: polarity (missing / extra / altered), defect types and shapes, registration, and the
sentences of answers the evidence gives itself (assistant/grounded.py)."""

from __future__ import annotations

import re

from assistant.wording.defects import plain
from assistant.wording.grid import position_phrase

PCB_TYPES = {"open": "missing", "mousebite": "missing", "pin_hole": "missing", "short": "extra", "spur": "extra",
             "spurious_copper": "extra"}  # DeepPCB defect type -> polarity
DEFECT_CHANGES = {**PCB_TYPES, "missing_print": "missing", "missing_part": "missing", "extra_print": "extra",
                  "debris": "extra"}  # every aligned-pair defect type -> polarity (labels and plates too)
TYPE_NAMES = {"open": "open circuit", "mousebite": "mouse bite", "pin_hole": "pin hole", "short": "short circuit",
              "spur": "spur", "spurious_copper": "spurious copper", "missing_print": "missing print",
              "extra_print": "extra print", "missing_part": "missing part", "debris": "debris"}
TYPE_PHRASES = {
    "open": "the trace is cut", "mousebite": "a bite is taken out of a trace edge",
    "pin_hole": "there is a pin hole in the copper", "short": "a short between two traces",
    "spur": "a spur sticks out of a trace", "spurious_copper": "an isolated blob of spurious copper",
    "missing_print": "part of a printed mark is gone", "extra_print": "a stray ink mark",
    "missing_part": "a piece of the plate is gone", "debris": "a piece of debris",
}  # what each type is, said after the change (no position or size words: texts state those from the mask)
MATERIAL_NOUNS = {"board": "copper", "label": "print", "plate": "material"}  # what a golden part is made of
SHAPE_PHRASES = {
    "cut": "the material is cut through", "gone": "a whole piece of material is gone",
    "hole": "there is a hole inside the material",
    "bite": "a bite is taken out of an edge", "bridge": "two separate pieces of material are joined",
    "isolated": "an isolated blob of material lies where there was none",
    "protrusion": "material sticks out of an edge",
}  # Box.shape (expert/shape.py) in words, for any part
PCB_SHAPES = {"cut": "open", "hole": "pin_hole", "bite": "mousebite", "bridge": "short", "isolated": "spurious_copper",
              "protrusion": "spur"}  # Box.shape -> the printed-circuit-board defect type it is (PCB_TYPES)
TYPE_SHAPES = {t: shape for shape, t in PCB_SHAPES.items()}  # PCB defect type -> the shape it is (training texts)


def type_name(defect_type: str) -> str:
    """The words for a defect type ("pin_hole" -> "pin hole"); other types are already words."""
    return TYPE_NAMES.get(defect_type, defect_type)


def change_sentence(change: str, material_noun: str, position: str | None, defect_type: str | None = None) -> str:
    """The polarity of a golden-template difference in one sentence: "Compared with the golden sample, copper is
    missing at the top left: the trace is cut." `position` is a grid word (None: not said)."""
    where = f" {position_phrase(position)}" if position else ""
    if change == "missing":
        text = f"Compared with the golden sample, {material_noun} is missing{where}"
    elif change == "extra":
        text = f"Compared with the golden sample, there is extra {material_noun}{where}"
    else:
        text = f"Compared with the golden sample, the {material_noun} is altered{where}"
    phrase = TYPE_PHRASES.get(defect_type or "")
    return f"{text}: {phrase}." if phrase else f"{text}."


_NEGATED_CHANGE = re.compile(r"\b(?:nothing|not|no|none)\b(?:\s+\w+){0,2}?\s+(?:missing|extra|altered)"
                             r"(?:\s+or\s+(?:missing|extra|altered))?")


def parse_change(answer: str) -> str | None:
    """The polarity an answer states: "missing", "extra", "altered" (the first said), None when none is."""
    text = _NEGATED_CHANGE.sub(" ", " ".join(str(answer).lower().split()))  # "nothing is missing" states none
    found = [(m.start(), w) for w in CHANGE_WORDS if (m := re.search(rf"\b{w}\b", text))]
    return min(found)[1] if found else None


# ------------------------------------------------------------------ golden-template comparison (aligned path)
CHANGE_WORDS = {
    "missing": "material of the golden sample is absent here",
    "extra": "material the golden sample does not have",
    "altered": "changed from the golden sample, neither clearly missing nor extra",
}  # Box.change -> what it means, said to people (overlay legend, detect)
CHANGE_TAGS = {"missing": "-", "extra": "+", "altered": "~"}  # one-character tag next to a region's number


def change_label(change: str) -> str:
    """Short legend entry of a region's polarity: '- missing', '+ extra', '~ altered' ('' for a free-path region)."""
    return f"{CHANGE_TAGS[change]} {change}" if change in CHANGE_TAGS else ""


def change_phrase(change: str, shape: str = "") -> str:
    """A region's polarity (and shape) in words: 'missing: material of the golden sample is absent here; cut: the
    material is cut through (PCB: open)' ('' when the region came from the free path, which has no polarity)."""
    if change not in CHANGE_WORDS:
        return ""
    said = f"{change}: {CHANGE_WORDS[change]}"
    if shape in SHAPE_PHRASES:
        pcb = f" (PCB: {type_name(PCB_SHAPES[shape])})" if shape in PCB_SHAPES else ""
        said += f"; {shape}: {SHAPE_PHRASES[shape]}{pcb}"
    return said


def registration_figures(registration: dict, full: bool = False) -> str:
    """'shift 1.2, 0.4 px, rotation 0.1 deg, correlation 0.93' of Registration.to_dict(); `full` adds scale,
    agreement and residual (detect prints them all)."""
    dx, dy = registration["shift"]
    words = f"shift {dx:.1f}, {dy:.1f} px, rotation {registration['rotation']:.1f} deg"
    if full:
        words += f", scale {registration['scale']:.3f}"
    words += f", correlation {registration['correlation']:.2f}"
    if full:
        words += f", agreement {registration['agreement']:.0%}, residual {registration['residual']:.2f}"
    return words


def alignment_sentence(result) -> str | None:
    """How the references were compared, in one sentence; `result` is an AnomalyResult or its to_dict(). None when
    no reference was used (alignment "")."""
    if isinstance(result, dict):
        alignment, reg = result.get("alignment", ""), result.get("registration")
    else:
        alignment = result.alignment
        reg = result.registration.to_dict() if result.registration is not None else None
    if alignment == "aligned" and reg:
        return f"Compared position by position with the golden sample (registered: {registration_figures(reg)})."
    if alignment == "aligned":
        return "Compared position by position with the golden sample."
    if alignment == "free" and reg and not reg.get("good", False):
        return f"Compared as a bag of patches: the reference did not register ({reg.get('reason') or 'no reason'})."
    if alignment == "free":
        return "Compared as a bag of patches, wherever they lie in the reference."
    return None


# ------------------------------------------------------------------ golden-template answers (assistant/grounded.py)
PCB_WORDS = re.compile(r"\b(?:boards?|pcbs?|circuits?|copper|traces?|tracks?|pads?|solder)\b", re.I)
TYPE_ALIASES = {"open": ("open", "open circuit"), "short": ("short", "short circuit"),
                "mousebite": ("mousebite", "mouse bite", "mouse-bite"), "pin_hole": ("pin hole", "pinhole", "pin-hole"),
                "spur": ("spur",), "spurious_copper": ("spurious copper",)}  # option texts naming each PCB type
NOTHING_CHANGED = {"missing": "Nothing is missing", "extra": "There is nothing extra"}  # polarity question, no region
MATCHES_GOLDEN = "the part matches the golden sample."
NOT_NAMED = ("It differs from the golden sample {where}, but it is neither clearly missing nor clearly extra "
             "material, so I cannot name the type from what I measured.")


def golden_sentence(change: str, shape: str, position: str | None, pcb: bool) -> str:
    """One region's change in words: with the printed-circuit-board vocabulary "Compared with the golden sample,
    copper is missing in the top left: the trace is cut (type: open circuit)."; else the shape's plain words."""
    pcb_type = PCB_SHAPES.get(shape) if pcb else None
    if pcb_type:
        return change_sentence(change, "copper", position, pcb_type)[:-1] + f" (type: {type_name(pcb_type)})."
    text = change_sentence(change, "copper" if pcb else "material", position)
    return f"{text[:-1]}: {SHAPE_PHRASES[shape]}." if shape in SHAPE_PHRASES else text


def polarity_lead(asked: str, found: bool, anomalous: bool) -> str:
    """The opening of an answer to "Is something missing?" (asked "missing") or "... extra?" ("extra")."""
    if found:
        return "Yes."
    if not anomalous:
        return f"No, {NOTHING_CHANGED[asked][0].lower()}{NOTHING_CHANGED[asked][1:]}: {MATCHES_GOLDEN}"
    return f"{NOTHING_CHANGED[asked]}."


def type_choice_answer(letter: str, text: str, sentence: str) -> str:
    """A multiple-choice type answer from the evidence: 'Answer: F (short). Compared with ...'."""
    return f"Answer: {letter} ({text}). {sentence}"


def type_option(pcb_type: str, options: dict[str, str]) -> str | None:
    """The letter of the option that names `pcb_type` (TYPE_ALIASES), None when no option does."""
    names = {plain(a) for a in TYPE_ALIASES.get(pcb_type, ())}
    return next((letter for letter, text in options.items() if plain(text) in names), None)
