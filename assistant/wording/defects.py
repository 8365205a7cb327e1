"""Defect words: what a region looks like (its measured Descriptor, expert/describe.py) and what kind of defect
it is (the type vocabulary, expert/defect_type.py), in sentences; and which vocabulary word a question or a
multiple-choice option names.
"""

from __future__ import annotations

import math
import re

from assistant.wording.grid import article

TYPE_WORDS = {
    "crack": ("crack", "cracked", "fissure", "fracture"),
    "scratch": ("scratch", "scratches", "scratched", "cut", "scrape", "abrasion", "line", "thread"),
    "hole": ("hole", "holes", "blowhole", "pinhole", "pin hole", "poke", "pit", "pore", "puncture"),
    "dent": ("dent", "dented", "squeeze", "squeezed", "bent", "dimple", "depression"),
    "stain": ("stain", "stains", "contamination", "contaminated", "spot", "spots", "dirt", "glue", "oil",
              "liquid", "print", "smudge", "residue"),
    "missing part": ("missing", "missing part", "broken", "break", "chip", "chipped", "fray", "frayed", "damaged",
                     "torn", "tear", "gap"),
    "discolouration": ("discolouration", "discoloration", "color", "colour", "uneven", "faded", "burn", "burnt",
                       "rust", "oxidation", "tint"),
    "deformation": ("deformation", "deformed", "misplaced", "warped", "bend", "flip", "rough"),
    "foreign object": ("foreign object", "foreign", "debris", "particle", "extra", "fabric", "hair", "fiber",
                       "fibre", "metal contamination"),
}  # vocabulary word -> words of option texts and questions that name it (also MVTec/VisA folder names)

FORM_NOUNS = {"line": "thin line", "elongated": "elongated mark", "compact": "compact spot"}
TONE_ADJECTIVES = {"darker": "dark", "brighter": "bright", "similar": ""}
NEUTRAL_COLOURS = ("black", "dark grey", "grey", "light grey", "white", "dark brown")
MAX_PIECES = 4  # more pieces than this are said as "many small marks" (a count that high is not worth stating)
ORIENTATION_ADVERBS = {"horizontal": "horizontally", "vertical": "vertically", "diagonal": "diagonally"}


def plain(text: str) -> str:
    """Lower-case words without punctuation: how option texts and questions are compared ('Top-left.' ->
    'top left')."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", str(text).lower()).split())


def type_words_in(text: str) -> list[str]:
    """Vocabulary words a text names, in the order they first appear ('is it a scratch or a crack?' ->
    ['scratch', 'crack']); a longer alias wins over a word inside it ('metal contamination')."""
    t = f" {plain(text)} "
    spans = [(i, i + len(a), word) for word, aliases in TYPE_WORDS.items() for a in aliases
             if (i := t.find(f" {a} ")) >= 0]
    taken: list[tuple[int, int, str]] = []
    for start, end, word in sorted(spans, key=lambda s: s[0] - s[1]):  # longest first
        if all(end <= s or start >= e for s, e, _ in taken):
            taken.append((start, end, word))
    return list(dict.fromkeys(w for _, _, w in sorted(taken)))


def option_type(text: str) -> str | None:
    """The vocabulary word a multiple-choice option names: the one its text is most specifically about (the
    longest alias found); None when it names none."""
    t = f" {plain(text)} "
    best, length = None, 0
    for word, aliases in TYPE_WORDS.items():
        for a in aliases:
            if f" {a} " in t and len(a) > length:
                best, length = word, len(a)
    return best


def length_words(d) -> str:
    """'about 40 px long' (line/elongated) or 'about 12 px across' (compact) of a Descriptor."""
    n = max(1, int(round(d.length_px if d.form != "compact" else math.sqrt(d.length_px * d.width_px))))
    return f"about {n} px {'long' if d.form != 'compact' else 'across'}"


def looks(d) -> str:
    """A Descriptor in words: 'a dark thin line about 40 px long, running diagonally, with a sharp edge'."""
    tone = "" if d.colour in NEUTRAL_COLOURS else TONE_ADJECTIVES.get(d.tone, "")  # "black" already says "dark"
    adjectives = [a for a in (tone, d.colour) if a]
    noun = " ".join([*adjectives, FORM_NOUNS.get(d.form, "mark")])
    said = f"{article(noun)} {noun} {length_words(d)}"
    if d.orientation in ORIENTATION_ADVERBS:
        said += f", running {ORIENTATION_ADVERBS[d.orientation]}"
    if 1 < d.count <= MAX_PIECES:
        said += f", in {d.count} pieces"
    elif d.count > MAX_PIECES:
        said += ", broken up into many small marks"
    return f"{said}, with a {d.edge} edge"


def colour_sentence(d) -> str:
    """'It is red and darker than the surface around it.' / 'It has no distinct colour; it is darker ...'."""
    tone = {"darker": "darker than", "brighter": "brighter than", "similar": "about as light as"}[d.tone]
    if d.colour:
        return f"It is {d.colour} and {tone} the surface around it."
    return f"It has no distinct colour of its own; it is {tone} the surface around it."


def type_sentence(d, where: str) -> str:
    """What kind of defect a measured region is, with abstention: the classifier's word when it named one, else
    what was measured and the best guess with its probability. `where` is a position phrase ('in the top left')."""
    if d.defect_type:
        return f"It looks like {article(d.defect_type)} {d.defect_type} {where}: {looks(d)}."
    guess = max(d.type_probs, key=d.type_probs.get) if d.type_probs else ""
    hint = f" (closest: {d.type_probs[guess]:.0%} {guess})" if guess else ""
    return f"I cannot name the type with confidence{hint}; {where} I measured {looks(d)}."


def between_sentence(d, asked: list[str], where: str) -> str:
    """'Is it a scratch or a crack?': which of the asked words the region is closer to, and how sure."""
    p = {w: float(d.type_probs.get(w, 0.0)) for w in asked}
    best = max(p, key=p.get)
    if d.defect_type and d.defect_type not in asked:
        return (f"Neither, it looks more like {article(d.defect_type)} {d.defect_type} {where}: "
                f"{looks(d)}.")
    if d.defect_type == best:
        return f"It looks like {article(best)} {best} {where}: {looks(d)}."
    odds = " vs ".join(f"{p[w]:.0%} {w}" for w in asked)
    top = max(d.type_probs, key=d.type_probs.get) if d.type_probs else best
    if top not in asked and p[best] < d.type_probs[top] / 2:  # the asked words are both far from the closest type
        return (f"Neither looks likely ({odds}); the closest type is {article(top)} {top} "
                f"({d.type_probs[top]:.0%}), but I am not confident; {where} I measured {looks(d)}.")
    return (f"It is closer to {article(best)} {best} ({odds}), but I am not confident; {where} I measured "
            f"{looks(d)}.")


NOT_NAMED_TYPE = "not named"  # the evidence's type when the classifier abstained


def evidence_looks(d) -> str:
    """The evidence clause of a measured region (lvlm.evidence_looks): 'looks: a dark thin line about 40 px long,
    running vertically, with a sharp edge; type: crack' ('type: not named' when the classifier abstained)."""
    return f"looks: {looks(d)}; type: {d.defect_type or NOT_NAMED_TYPE}"


def describe_sentence(d, where: str, note: str = "") -> str:
    """'Describe it.': 'In the top left there is a dark thin line about 40 px long, ...'; `note` goes before the
    full stop (' (it looks like a crack)')."""
    return f"{where[:1].upper()}{where[1:]} there is {looks(d)}{note}."


def either_sentence(d, asked: list[str], where: str) -> str:
    """'Is it a scratch or a crack?' answered from the evidence's words alone (the type it names, or none):
    the form a trained LM learns (between_sentence also weighs the classifier's probabilities)."""
    if d.defect_type in asked:
        return f"It looks like {article(d.defect_type)} {d.defect_type} {where}: {looks(d)}."
    if d.defect_type:
        return f"Neither, it looks more like {article(d.defect_type)} {d.defect_type} {where}: {looks(d)}."
    said = " or ".join(f"{article(w)} {w}" for w in asked)
    return f"I cannot tell with confidence whether it is {said}; {where} I measured {looks(d)}."


def descriptor_words(d) -> str:
    """One line for logs and the detect CLI: what was measured, and the type (or that none was named)."""
    kind = f"type {d.defect_type} ({d.type_confidence:.0%})" if d.defect_type else (
        f"type not named (closest {max(d.type_probs, key=d.type_probs.get)}, {d.type_confidence:.0%})"
        if d.type_probs else "type not estimated")
    colour = f"; colour {d.colour}" if d.colour else ""
    tone = {"darker": "darker than", "brighter": "brighter than"}.get(d.tone, "about as light as")
    return f"{looks(d)}; {tone} around it (contrast {d.contrast:+.0f} L*){colour}; {kind}"
