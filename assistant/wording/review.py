"""How sure a verdict is, in words: why a borderline part is held for a person (its score lies within the
threshold's uncertainty, or the good parts given do not cover it), and the answer to "Why do you think so?" on any
verdict: the score against the threshold and its review band, where the part differs and what was measured there,
what it was judged against, how sure the verdict is and what would settle it.

The sentences avoid the words a verdict parser reads as a decision ("looks normal", "is defective"): a borderline
answer decides nothing, and says so.
"""

from __future__ import annotations

from assistant.wording.defects import looks
from assistant.wording.golden import CHANGE_WORDS
from assistant.wording.grid import article, position_phrase, position_word

BORDERLINE_MARK = "It is borderline:"  # opens every sentence that states a borderline verdict
REVIEW_LEAD = (f"{BORDERLINE_MARK} I cannot decide with confidence whether to accept or reject this part, so I "
               "would hold it for a person to check.")
MORE_PARTS = "3-5"  # good parts to add: enough for their own variation to say what a good part may look like
HOLD = "I would hold the part for a person to check"
# result.path -> what a part without references is judged against
SOURCES = {"zero-shot": "the rest of its own image, by how rare each patch is within it",
           "mutual": "the other parts inspected with it"}


def says_borderline(answer: str) -> bool:
    """True when an answer already states the borderline verdict (a review or why answer): chat then appends no
    borderline note, which would say it twice."""
    return BORDERLINE_MARK in (answer or "")


def figures(*values: float) -> list[str]:
    """Scores in 3 significant digits, more when that would make the first two read the same."""
    for digits in range(3, 7):
        said = [f"{v:.{digits}g}" for v in values]
        if len(said) < 2 or said[0] != said[1]:
            break
    return said


def good_parts(result) -> str:
    """'the good part you gave' / 'the 4 good parts you gave' / 'the parts it was judged against' (no reference)."""
    if result.shots <= 0:
        return "the parts it was judged against"
    return "the good part you gave" if result.shots == 1 else f"the {result.shots} good parts you gave"


def has_band(result) -> bool:
    """True when the threshold's uncertainty is known (a review band around it)."""
    return result.threshold_high > result.threshold_low


def band_words(result) -> str:
    """'review band 0.952 to 1.06' (scores in it are borderline)."""
    low, high = figures(result.threshold_low, result.threshold_high)
    return f"review band {low} to {high}"


def score_sentence(result) -> str:
    """The score against the threshold: 'Its score, 3, is over the threshold 1, clear of the review band 0.952 to
    1.06 ...'; a borderline one 'just over the threshold 1, within the threshold's uncertainty (...)'."""
    score, thr = figures(result.pred_score, result.threshold)
    side = "over" if result.pred_label else "under"
    if result.borderline and result.review_reason != "coverage":
        band = f" ({band_words(result)})" if has_band(result) else ""
        return f"Its score, {score}, is just {side} the threshold {thr}, within the threshold's uncertainty{band}."
    if not has_band(result):
        return f"Its score, {score}, is {side} the threshold {thr}."
    if result.borderline:  # poor coverage: the score may lie anywhere
        return f"Its score, {score}, is {side} the threshold {thr} ({band_words(result)})."
    band = band_words(result)
    return f"Its score, {score}, is {side} the threshold {thr}, clear of the {band} where I would be unsure."


def coverage_sentence(result) -> str:
    """Why good parts that differ from the query everywhere cannot judge it."""
    parts = good_parts(result)
    verb = "differs" if result.shots == 1 else "differ"
    own = "its" if result.shots == 1 else "their"
    med, cut = result.reference_median, result.reference_mismatch_cut
    times = (f" (its typical patch lies {med:.2f} units from {own} nearest patches, beyond the {cut:.2f} that parts of "
             "one kind reach)") if med is not None and cut else ""
    return (f"{parts[:1].upper()}{parts[1:]} {verb} from this one almost everywhere{times}, so I cannot tell its "
            "differences from defects.")


def confidence_sentence(result) -> str:
    """How sure the verdict is: the probability that the decision would not flip under the threshold's
    uncertainty."""
    if result.borderline and result.review_reason != "coverage":
        return f"So I am only {result.confidence:.0%} sure which side of the threshold it belongs on."
    if not has_band(result):
        return "No uncertainty is known for this threshold."
    sure = "over 99%" if result.confidence >= 0.995 else f"{result.confidence:.0%}"
    return f"I am {sure} sure of this verdict."


def strongest(result):
    """The region a question about the part is about: the strongest flagged one, else the strongest deviation
    (the peak), None when neither is known."""
    if result.pred_label and result.boxes:
        return max(result.boxes, key=lambda b: b.score)
    return result.peak


def region_position(box, result) -> str:
    """Grid word of a region's centre."""
    h, w = result.anomaly_map.shape[:2]
    cy, cx = box.center
    return position_word(cy / max(h, 1), cx / max(w, 1))


def kind_note(box) -> str:
    """' (it looks like a scratch)' when the type was named; an aligned region's change of material instead."""
    if box.change in CHANGE_WORDS:
        return f" ({box.change}: {CHANGE_WORDS[box.change]})"
    d = box.descriptor
    return f" (it looks like {article(d.defect_type)} {d.defect_type})" if d is not None and d.defect_type else ""


def where_sentence(result) -> str | None:
    """Where the part differs and what was measured there: the mask's position for a flagged part, the strongest
    deviation's for one under the threshold; None when nothing was located."""
    box = strongest(result)
    if box is None:
        return f"It differs {position_phrase(result.position)}." if result.position else None
    what = f": {looks(box.descriptor)}{kind_note(box)}" if box.descriptor is not None else ""
    if not result.pred_label:
        return f"The strongest difference is {position_phrase(region_position(box, result))}{what}; it stays " \
               "under the threshold."
    more = len(result.boxes) - 1
    tail = f"; {more} more region{'s' if more > 1 else ''} differ{'' if more > 1 else 's'}" if more > 0 else ""
    most = " most" if result.review_reason == "coverage" else ""  # it differs almost everywhere: say where most
    return f"It differs{most} {position_phrase(result.position or region_position(box, result))}{what}{tail}."


def judged_sentence(result) -> str:
    """What the part was compared with: the good parts (and how, when registered), or without any, what set the
    threshold; the lot when its scores moved the threshold."""
    if result.shots > 0:
        how = f" ({result.alignment_reason})" if result.alignment == "aligned" and result.alignment_reason else ""
        said = f"I compared it with {good_parts(result)}{how}."
    else:
        rule = f"; threshold rule: {result.calibration}" if result.calibration else ""
        said = f"No good part was given: I judged it against {SOURCES.get(result.path, 'a trained threshold')}{rule}."
    if result.lot_size:
        said += f" The threshold also follows the lot of {result.lot_size} parts inspected together."
    return said


def remedy_sentence(result) -> str:
    """What would settle the verdict, fitted to why it is unsure (the lot only while it is not already judged)."""
    lot = "" if result.lot_size else ", or inspect the lot together"
    if result.borderline and result.review_reason == "coverage":
        return (f"Add {MORE_PARTS} good parts of this same part, view and lighting{lot}, and I can judge it; until "
                "then a person should look at it.")
    if result.borderline:
        lot = "" if result.lot_size else ", or the lot inspected together,"
        return (f"A person's look settles it; {MORE_PARTS} more good parts{lot} would narrow the threshold's "
                "uncertainty.")
    if result.shots <= 0:
        return f"{MORE_PARTS} good parts to compare with would make it surer; a person's look settles any doubt."
    lot = "" if result.lot_size else ", the lot inspected together,"
    return f"More good parts{lot} or a person's look would settle any remaining doubt."


def reason_sentence(result) -> str:
    """Why a borderline verdict is unsure: the score within the threshold's uncertainty, or poor coverage."""
    if result.review_reason == "coverage":
        return coverage_sentence(result)
    return f"{score_sentence(result)} {confidence_sentence(result)}"


def review_words(result) -> str:
    """The answer to a detection or accept/reject question about a borderline part: it decides nothing, holds the
    part for a person, says why, where the part differs and what would settle it."""
    said = [REVIEW_LEAD, reason_sentence(result), where_sentence(result), remedy_sentence(result)]
    return " ".join(s for s in said if s)


def verdict_sentence(result) -> str:
    """The verdict a why answer explains ('I judged it normal.'); a borderline one's lead (no decision)."""
    if result.borderline:
        return REVIEW_LEAD
    return f"I judged it anomalous ({result.severity})." if result.pred_label else "I judged it normal."


def why_words(result) -> str:
    """'Why do you think so?' / 'How sure are you?' on any verdict: the verdict, the score against the threshold
    and its review band, where the part differs and what was measured there, what it was judged against, how sure
    the verdict is and what would settle it."""
    if result.borderline and result.review_reason == "coverage":
        grounds = [coverage_sentence(result), score_sentence(result)]
    elif result.borderline:
        grounds = [reason_sentence(result)]
    else:
        grounds = [score_sentence(result), confidence_sentence(result)]
    if not result.pred_label and not result.borderline and strongest(result) is None:
        grounds.append("No region of it stands out.")
    said = [verdict_sentence(result), *grounds, where_sentence(result), judged_sentence(result),
            remedy_sentence(result)]
    return " ".join(s for s in said if s)


def under_sentence(descriptor, where: str) -> str:
    """What a part judged normal (or borderline just under the threshold) shows at its strongest difference, said as
    no defect: "No defect clears the threshold; the strongest difference, under it, is at the top: a ..."."""
    return f"No defect clears the threshold; the strongest difference, under it, is {where}: {looks(descriptor)}."


def borderline_note(result) -> str | None:
    """The sentence appended (not by the LM) to the first answer about a borderline result whose answer did not
    say it (the LM states the binary verdict at the threshold): the reason in brief, and to hold the part. None
    when not borderline."""
    if not result.borderline:
        return None
    if result.review_reason == "coverage":
        why = coverage_sentence(result)
        return f"{BORDERLINE_MARK} {why[:1].lower()}{why[1:-1]}; {HOLD}."
    side = "just over" if result.pred_label else "just under"
    return (f"{BORDERLINE_MARK} the score is {side} the threshold, within its uncertainty (confidence "
            f"{result.confidence:.0%}); {HOLD}.")
