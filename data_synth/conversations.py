"""Multi-turn LLaVA-format conversations: detect -> locate -> size/type -> compare -> follow-up.

Questions vary widely; answers keep a short, fixed shape a small LM can learn:
  anomalous: "Yes, there is an anomaly: a <type> <in the top left> of the image."
  normal:    "No, the object looks normal. ..."
Location answers contain exactly one 3x3 grid word; sizes and percentages come from the mask.
The first human turn starts with the IMAGE_TOKEN line; reference normals are listed in "references".
Answers name the object ("washer") only once a question has named it; before that they say "object", so a
trained model does not invent a noun for a user's part. Accept/reject questions, whichever way they are worded,
get the verdict and a recommendation ("It looks normal, so I would accept it."), not a leading yes/no.
"""
from __future__ import annotations

import numpy as np

from assistant.constants import IMAGE_TOKEN
from assistant.wording import (
    TYPE_PHRASES,
    article,
    change_sentence,
    count_sentence,
    percent,
    position_phrase,
    type_name,
)
from assistant.wording.defects import colour_sentence, describe_sentence, either_sentence, type_sentence
from data_synth.looks import descriptor_of, method_word, other_type
from data_synth.text import describe, material_noun, pick

DETECT_Q = [
    "Is there any anomaly in the image?", "Is anything wrong with this {noun}?", "Do you see any defect?",
    "Is this {noun} defective?", "Check this {noun} for defects.", "Does the image show any anomaly?",
    "Inspect this image. Are there any defects?", "Is there a defect on the {noun}?",
    "Any anomalies here?", "Please inspect the {noun}. Is it defective?",
]  # all ask "is something wrong?": "Yes, there is an anomaly" answers them (positive ones are in ACCEPT_Q)
DETECT_REF_Q = [
    "Compared with the {ref}, is anything wrong with this {noun}?",
    "Given the normal {ref}, is the query {noun} anomalous?",
    "The {ref} show a good {noun}. Is there any defect in the query?",
    "Does the query differ from the normal {ref}?",
]
LOCATE_Q = ["Where is it?", "Where is the defect located?", "Which part of the image is affected?",
            "Can you point out where the anomaly is?", "Where exactly?", "Where on the image is the problem?"]
SIZE_Q = ["How big is it?", "What kind of defect is it and how large is it?", "How large is the defect?",
          "What type of defect is this?", "Describe its size and type.", "What is it, and how big?"]
COMPARE_REF_Q = ["Compare it with the {ref}.", "How does it differ from the {ref}?",
                 "What is different from the normal sample?", "Compare the query with the {ref}."]
COMPARE_ZERO_Q = ["How does it differ from a normal {noun}?", "What would a normal {noun} look like?",
                  "Compare it with what a good {noun} should look like."]
# accept/reject questions in both polarities: "yes" means normal for ACCEPT_Q, anomalous for REJECT_Q
ACCEPT_Q = ["Is it safe to ship?", "Should this part pass inspection?", "Can this {noun} be accepted?",
            "Is this part good?", "Is this part OK?", "Does this {noun} look normal?", "Can we ship it?"]
REJECT_Q = ["Would you reject this part?", "Should this part be rejected?", "Should this {noun} be scrapped?",
            "Should this part fail inspection?", "Does this {noun} need rework?", "Should we discard it?"]
SHIP_Q = ACCEPT_Q + REJECT_Q
# ...all answered by the verdict first, then a recommendation, never a leading yes/no: whether "yes" is right
# depends on the verdict AND on how the question is worded, and a small LM tuned on yes/no answers learned the
# wording of the questions it saw ("Yes, it looks normal and should be thrown away" on a good part). The verdict
# and the recommendation depend on the verdict alone, so any wording of the question gets a truthful answer.
# The verdict comes first: a form that opens with the decision ("I would accept it: ...") gave "I would accept it:
# it is defective, so I would reject it." on flagged parts.
RECOMMEND = {
    True: ["It is defective ({sev_a} {sev} {t}), so I would reject it.",
           "It is defective, with {sev_a} {sev} {t}, so I would reject it."],
    False: ["It looks normal, so I would accept it.", "It looks normal: I would accept it."],
}
COUNT_Q = ["How many defects are there?", "How many defective regions do you see?",
           "How many separate anomalies are visible?"]
DESCRIBE_Q = ["Describe the defect.", "What does it look like?", "Can you describe what you see?"]
SEVERITY_Q = ["How severe is it?", "How serious is the problem?"]
TYPE_Q = ["What kind of defect is it?", "Which type of defect is this?", "What kind of difference is it?"]
COLOUR_Q = ["What colour is it?", "What color is the defect?", "Which colour does the mark have?"]
EITHER_Q = ["Is it {a_art} {a} or {b_art} {b}?", "Is this {a_art} {a} or {b_art} {b}?",
            "Would you call it {a_art} {a} or {b_art} {b}?"]
MISSING_Q = ["Is something missing?", "Is anything missing compared with the golden sample?",
             "Is any material missing?"]  # aligned samples only: the answer states the polarity either way


def _aligned_turns(m: dict, rng) -> list[tuple[str, str]]:
    """The polarity turns of an aligned sample (golden shown): what kind of difference, and whether something is
    missing ("Nothing is missing, but there is extra copper ..." for an extra one)."""
    if m["label"] != 1:
        matches = "No, nothing is missing or extra: it matches the golden sample."
        return [("missing", matches)] if rng.random() < 0.5 else []
    t, change, mat = m["defect_type"], m["change"], material_noun(m)
    pos, phrase = position_phrase(m["position"]), TYPE_PHRASES[t]
    turns = []
    if rng.random() < 0.6:
        with_change = f"{mat} missing" if change == "missing" else f"extra {mat}"
        turns.append(("type", f"The defect type is {type_name(t)}: {phrase}, with {with_change} compared with the "
                              "golden sample."))
    if rng.random() < 0.6:
        turns.append(("missing", f"Yes, {mat} is missing {pos} of the image: {phrase}." if change == "missing"
                      else f"Nothing is missing, but there is extra {mat} {pos} of the image: {phrase}."))
    return turns


def _ref_word(k: int) -> str:
    return "reference" if k == 1 else "references"


def _count_answer(m: dict) -> str:
    return count_sentence(m["n_components"] if m["label"] == 1 else 0)


def _open_with(turns: list[tuple[str, str]], kind: str, record: dict) -> list[tuple[str, str]]:
    """Move the `kind` turn to the front (adding it for count and ship, whose answers need no earlier turn;
    a locate/size/severity turn that was not drawn falls back to count). The detection turn follows later."""
    if not any(t[0] == kind for t in turns):
        if kind not in ("count", "ship"):
            kind = "count"
        if not any(t[0] == kind for t in turns):
            turns = turns + [(kind, _count_answer(record) if kind == "count" else None)]
    first = next(t for t in turns if t[0] == kind)
    return [first] + [t for t in turns if t is not first]


def _looks_turns(m: dict, pos: str, rng) -> dict:
    """The follow-ups a measured sample's evidence answers (build --descriptor-answers): describe it, what kind,
    what colour, and an either-or question of its type (half the time) and another word, or two other words."""
    d = descriptor_of(m["looks"])
    truth = m["looks"]["type"] or method_word(m) or "defect"
    a = truth if rng.random() < 0.5 else other_type(rng, truth)
    b = other_type(rng, a)
    asked = [a, b] if rng.random() < 0.5 else [b, a]
    fields = {"a": asked[0], "b": asked[1], "a_art": article(asked[0]), "b_art": article(asked[1])}
    return {"describe": describe_sentence(d, pos), "type": type_sentence(d, pos), "colour": colour_sentence(d),
            "either": (either_sentence(d, asked, pos), fields)}


def _measured(m: dict) -> bool:
    """A non-aligned anomalous record with measured looks: its answers say the type only as the evidence does."""
    return bool(m.get("looks")) and not m.get("aligned")


def said_type(m: dict) -> str:
    """The defect's name in answers: the evidence's type ("defect" when it names none) for a measured record,
    else the synthesis type's name."""
    return (m["looks"]["type"] or "defect") if _measured(m) else type_name(m["defect_type"])


def _anomalous_turns(m: dict, noun: str, k: int, rng) -> list[tuple]:
    measured = _measured(m)
    t, pos = said_type(m), position_phrase(m["position"])
    size, pct, sev = m["size"], percent(m["area_fraction"]), m["severity"]
    turns = [("detect", f"Yes, there is an anomaly: {article(t)} {t} {pos} of the image.")]
    if rng.random() < 0.9:
        turns.append(("locate", pick(rng, [f"It is {pos} of the image.", f"The {t} is {pos} of the image."])))
    if rng.random() < 0.8:
        turns.append(("size", f"It is {article(size)} {size} {t}, covering about {pct} of the image."))
    if k > 0 and (rng.random() < 0.8 or m.get("aligned")):  # (the draw first: other records keep their bytes)
        has = "has" if k == 1 else "have"
        turns.append(("compare", (f"Compared with the {_ref_word(k)}, this {noun} has {article(t)} {t} {pos} of the "
                                  f"image; the {_ref_word(k)} {has} none, and the rest matches.")
                      if not m.get("aligned") else
                      change_sentence(m["change"], material_noun(m), m["position"], m["defect_type"])
                      + " The rest matches."))
    elif k == 0 and rng.random() < 0.4:
        turns.append(("compare", f"A normal {noun} has no {t}; here there is {article(t)} {t} {pos} of the image."))
    if m.get("aligned"):
        turns += _aligned_turns(m, rng)
    extra = {
        "ship": None,  # answered once the question is drawn (RECOMMEND)
        "count": _count_answer(m),
        "describe": describe(m, noun, rng),
        "severity": f"It is {article(sev)} {sev} defect: {size}, about {pct} of the image.",
    }
    if measured:
        extra.update(_looks_turns(m, pos, rng))
    for key in rng.permutation(list(extra))[: int(rng.integers(2, 6 if measured else 4))]:
        said = extra[str(key)]
        turns.append((str(key), *said) if isinstance(said, tuple) else (str(key), said))
    return turns


def _normal_turns(m: dict, noun: str, k: int, rng) -> list[tuple[str, str]]:
    turns = [
        (
            "detect",
            pick(
                rng,
                [
                    f"No, the object looks normal. The {noun} shows no defects.",
                    "No, the object looks normal.",
                    f"No, the object looks normal: no scratches, cracks, stains or missing parts on the {noun}.",
                ],
            ),
        )
    ]
    if rng.random() < 0.35:
        turns.append(("locate", f"There is no defect to locate; the {noun} looks normal everywhere."))
    if rng.random() < 0.3:
        turns.append(("size", "There is no defect, so there is nothing to measure."))
    if k > 0 and rng.random() < 0.7:
        turns.append(("compare", f"It matches the {_ref_word(k)}: no differences in shape, color or texture."))
    elif k == 0 and rng.random() < 0.3:
        turns.append(("compare", f"It looks like a normal {noun}: no scratches, cracks, stains or missing parts."))
    extra = {
        "ship": None,  # answered once the question is drawn (RECOMMEND)
        "count": _count_answer(m),
        "describe": f"There is no defect to describe; the {noun} looks normal.",
        "severity": "There is no defect, so there is no severity to report.",
    }
    if "looks" in m:  # a build with descriptor answers asks its normal samples these too
        extra.update({"type": "There is no defect, so there is no type to name.",
                      "colour": f"There is no defect; the {noun} shows no off-colour mark."})
    if m.get("aligned"):
        turns += _aligned_turns(m, rng)
    for key in rng.permutation(list(extra))[: int(rng.integers(1, 4))]:
        turns.append((str(key), extra[str(key)]))
    return turns


QUESTIONS = {"locate": LOCATE_Q, "size": SIZE_Q, "ship": SHIP_Q, "count": COUNT_Q, "describe": DESCRIBE_Q,
             "severity": SEVERITY_Q, "type": TYPE_Q, "missing": MISSING_Q, "colour": COLOUR_Q, "either": EITHER_Q}


OPENERS = ("count", "locate", "ship", "size", "severity")  # follow-ups whose answers also stand as a first answer


def make_conversation(record: dict, noun: str, references: list[str], rng: np.random.Generator,
                      opener_ratio: float = 0.0, compare_last_ratio: float = 0.0) -> dict:
    """LLaVA record {"id", "image", "references", "conversations": [{"from", "value"}, ...]} for one sample.
    `record` is the manifest line (label, defect_type, position, size, area_fraction, severity, ...).
    With probability `opener_ratio` the conversation opens with a follow-up question ("How many defects are
    there?") whose answer carries the verdict itself, and the detection question moves behind it: users do not
    always ask "is anything wrong?" first. With probability `compare_last_ratio` the comparison (when drawn) is
    asked last, after the follow-ups: a chat can ask for it as its seventh question, deeper than it otherwise
    comes (at most the fifth)."""
    k = len(references)
    anomalous = record["label"] == 1
    # answers carry a "{noun}" placeholder, filled once the question is chosen
    turns = (_anomalous_turns if anomalous else _normal_turns)(record, "{noun}", k, rng)
    if opener_ratio > 0 and rng.random() < opener_ratio:  # (no draw at 0: builds without it keep their bytes)
        turns = _open_with(turns, str(rng.choice(OPENERS)), record)
    if compare_last_ratio > 0 and rng.random() < compare_last_ratio:  # (no draw at 0, as above)
        turns = [t for t in turns if t[0] != "compare"] + [t for t in turns if t[0] == "compare"]
    msgs, named = [], False
    for i, (kind, answer, *fields) in enumerate(turns):  # fields: the words an either-or question asks about
        if kind == "detect":
            pool = DETECT_Q + (DETECT_REF_Q if k > 0 else [])
        elif kind == "compare":
            pool = COMPARE_REF_Q if k > 0 else COMPARE_ZERO_Q
        else:
            pool = QUESTIONS[kind]
        template = pick(rng, pool)
        if kind == "ship":
            answer = pick(rng, RECOMMEND[anomalous])
            if anomalous:
                sev = record["severity"]
                answer = answer.format(sev_a=article(sev), sev=sev, t=said_type(record))
        named = named or "{noun}" in template
        q = template.format(noun=noun, ref=_ref_word(k), **(fields[0] if fields else {}))
        answer = answer.replace("{noun}", noun if named else "object")
        if k == 1:
            q = q.replace("reference show", "reference shows")
        if i == 0:
            q = f"{IMAGE_TOKEN}\n{q}"
        msgs.append({"from": "human", "value": q})
        msgs.append({"from": "gpt", "value": answer})
    return {"id": record["id"], "image": record["image"], "references": list(references), "conversations": msgs}
