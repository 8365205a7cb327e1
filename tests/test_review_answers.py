"""A borderline verdict carried into every answer (assistant/grounded.py, wording/review.py): detection and
accept/reject questions on a borderline result are answered from the evidence, deciding nothing and holding the part
for a person, with a reason and remedy that fit why it is borderline; "Why do you think so?" is answered from the
evidence on every verdict; chat appends the borderline note only where the answer did not say it."""
import re
from types import SimpleNamespace

import pytest

from assistant.chat import ChatSession
from assistant.evaluation.data.mmad import build_prompt
from assistant.grounded import grounded_answer
from assistant.wording import REFERENCE_CAUTION, borderline_note, parse_choice, parse_verdict
from assistant.wording.review import REVIEW_LEAD, says_borderline
from tests.test_grounded_defects import box, desc, result

DETECT = ["Is there any anomaly?", "Is there any anomaly in the image?", "Is anything wrong?",
          "Is anything wrong with this bottle?", "Is it defective?", "Do you see any defect?",
          "Check this part for defects.", "Any anomalies here?", "Inspect this image. Are there any defects?",
          "Does the image show any anomaly?", "Is there a problem with it?", "Anything wrong?",
          "What is wrong with this board?", "Is it broken?"]
DECIDE = ["Is it safe to ship?", "Would you reject this part?", "Is this part good?", "Can this part be used?",
          "Should it be thrown away?", "What should I do with this part?", "Can we ship it?", "Is this part OK?",
          "Should this part pass inspection?", "Can this bottle be accepted?", "Does this part look normal?",
          "Should this part be rejected?", "Should this bottle be scrapped?", "Does this part need rework?",
          "Should we discard it?", "Should I keep it?", "What do you recommend?"]
WHY = ["Why do you think so?", "Why?", "What makes you say that?", "How sure are you?", "How confident are you?",
       "Are you sure?", "Why is it defective?"]
ASPECTS = ["Where is it?", "How large is it?", "Is the defect large?", "What kind of defect is it?",
           "Describe it.", "What colour is it?", "Is it a scratch or a crack?", "How many defects are there?"]
DECIDED = r"looks? normal|\bis defective\b|\bno defect|\bi would (?:accept|reject)\b|^\W*(?:yes|no)\b"


def borderline(over: bool = True, reason: str = "threshold", coverage: float | None = None):
    """A borderline result just over (a flagged region) or just under (a peak) the threshold 1."""
    r = result(box(desc(""))) if over else result(anomalous=False, peak=box(desc(""), x=40, y=40))
    r.pred_score, r.verdict, r.confidence = (1.03 if over else 0.97), "borderline", 0.62
    r.threshold_low, r.threshold_high, r.shots = 0.952, 1.06, 1
    r.review_reason, r.coverage = reason, coverage
    return r


def clear(anomalous: bool):
    r = result(box(desc("scratch")), box(desc(""), x=70, y=70, score=1.0)) if anomalous else \
        result(anomalous=False, peak=box(desc("scratch"), x=70, y=70, area=0.001))
    r.threshold_low, r.threshold_high, r.shots, r.confidence = 0.952, 1.06, 1, 0.999
    return r


@pytest.mark.parametrize("question", DETECT + DECIDE)
def test_a_borderline_part_is_held_for_a_person_whatever_the_wording(question):
    said = grounded_answer(borderline(), question)
    assert said is not None and said.startswith(REVIEW_LEAD), question
    assert "Its score, 1.03, is just over the threshold 1, within the threshold's uncertainty (review band 0.952 " \
           "to 1.06)" in said and "only 62% sure" in said
    assert "It differs in the top left: a dark thin line about 40 px long" in said
    assert "3-5 more good parts" in said and said.count("borderline") == 1
    assert not re.search(DECIDED, said, re.I) and parse_verdict(said) is None  # decides nothing, parses as nothing


@pytest.mark.parametrize("question", DETECT + DECIDE)
def test_clear_verdicts_leave_detection_and_decisions_to_the_lm(question):
    assert grounded_answer(clear(True), question) is None
    assert grounded_answer(clear(False), question) is None


def test_a_part_just_under_the_threshold_says_where_it_differs_most():
    said = grounded_answer(borderline(over=False), "Is it safe to ship?")
    assert "Its score, 0.97, is just under the threshold 1" in said
    assert "The strongest difference is in the center: a dark thin line" in said and "stays under the" in said


def test_poor_coverage_asks_for_more_good_parts_not_for_a_finer_threshold():
    r = borderline(reason="coverage", coverage=1.9)
    r.reference_median, r.reference_mismatch_cut = 4.4, 2.31
    r.pred_score, r.confidence = 1.8, 0.97  # far over the threshold, but the good part cannot judge it
    said = grounded_answer(r, "What should I do with this part?")
    assert said.startswith(REVIEW_LEAD)
    assert ("The good part you gave differs from this one almost everywhere (its typical patch lies 4.40 units from "
            "its nearest patches, beyond the 2.31 that parts of one kind reach), so I cannot tell its differences "
            "from defects.") in said
    assert "Add 3-5 good parts of this same part, view and lighting, or inspect the lot together" in said
    assert "review band" not in said and "It differs most in the top left" in said
    r.shots = 3
    assert "The 3 good parts you gave differ from this one" in grounded_answer(r, "Is anything wrong?")


@pytest.mark.parametrize("question", ASPECTS)
def test_questions_about_one_aspect_of_a_borderline_part_are_not_review_answers(question):
    said = grounded_answer(borderline(), question)
    assert said is None or not said.startswith(REVIEW_LEAD), question


def test_multiple_choice_detection_on_a_borderline_part_still_picks_an_option():
    yes_no = {"A": "Yes.", "B": "No."}
    prompt = build_prompt("Is there any defect in the object?", yes_no)
    assert parse_choice(grounded_answer(borderline(over=True), prompt), yes_no) == "A"  # the binary decision
    assert parse_choice(grounded_answer(borderline(over=False), prompt), yes_no) == "B"
    ship = build_prompt("Is it safe to ship?", yes_no)  # a choice the evidence does not answer: the LM picks
    assert grounded_answer(borderline(), ship) is None


@pytest.mark.parametrize("question", WHY)
def test_why_is_answered_from_the_evidence_on_every_verdict(question):
    normal = grounded_answer(clear(False), question)
    assert normal.startswith("I judged it normal. Its score, 0.5, is under the threshold 1, clear of the review "
                             "band 0.952 to 1.06")
    assert "I am over 99% sure" in normal and "The strongest difference is in the bottom right" in normal
    assert "I compared it with the good part you gave." in normal and "borderline" not in normal
    flagged = grounded_answer(clear(True), question)
    assert flagged.startswith("I judged it anomalous (highly suspicious). Its score, 3, is over the threshold 1")
    assert "It differs in the top left: a dark thin line about 40 px long" in flagged
    assert "(it looks like a scratch); 1 more region differs" in flagged
    border = grounded_answer(borderline(), question)
    assert border.startswith(REVIEW_LEAD) and "only 62% sure" in border and "person" in border
    cover = grounded_answer(borderline(reason="coverage", coverage=1.9), question)
    assert "almost everywhere" in cover and "Its score, 1.03, is over the threshold 1" in cover


def test_why_says_what_a_part_without_references_was_judged_against():
    r = clear(False)
    r.shots, r.path, r.calibration = 0, "zero-shot", "lowest score of 8 anomalies synthesized on this image"
    said = grounded_answer(r, "Why do you think so?")
    assert ("No good part was given: I judged it against the rest of its own image, by how rare each patch is "
            "within it; threshold rule: lowest score of 8 anomalies synthesized on this image.") in said
    assert "3-5 good parts to compare with would make it surer" in said
    r.threshold_low = r.threshold_high = 1.0  # no known uncertainty: no band, no confidence figure
    said = grounded_answer(r, "How sure are you?")
    assert "Its score, 0.5, is under the threshold 1." in said and "No uncertainty is known" in said


def test_why_says_how_an_aligned_part_was_compared_and_the_lot():
    r = clear(True)
    r.alignment, r.lot_size = "aligned", 7
    r.alignment_reason = "the good part registers as the same design in the same frame: compared position by position"
    r.boxes[0].change = "missing"
    said = grounded_answer(r, "Why?")
    assert "(missing: material of the golden sample is absent here)" in said
    assert f"I compared it with the good part you gave ({r.alignment_reason})." in said
    assert "the lot of 7 parts inspected together" in said and "the lot inspected together" not in said


def test_the_borderline_note_says_the_reason_briefly():
    assert borderline_note(borderline()) == ("It is borderline: the score is just over the threshold, within its "
                                             "uncertainty (confidence 62%); I would hold the part for a person to "
                                             "check.")
    cover = borderline_note(borderline(reason="coverage", coverage=1.9))
    assert cover.startswith("It is borderline: the good part you gave differs from this one almost everywhere")
    assert cover.endswith("I would hold the part for a person to check.") and says_borderline(cover)
    r = borderline()
    r.verdict, r.review_reason = "normal", ""
    assert borderline_note(r) is None


class EvidenceOnly:
    """The Assistant's interface ChatSession uses, answering from the evidence (else a fixed LM answer)."""

    cfg = SimpleNamespace(expert=SimpleNamespace(min_box_area=1))

    def stream_answer(self, evidence, question, history=()):
        yield grounded_answer(evidence.result, question, history) or "It is defective, so I would reject it."


def session_on(r) -> ChatSession:
    session = ChatSession(EvidenceOnly())
    session._evidence = SimpleNamespace(result=r)  # as evidence_from_features leaves it
    return session


def test_chat_says_borderline_once_and_not_after_an_answer_that_said_it():
    session = session_on(borderline())
    note = borderline_note(session.result)
    review = session.answer("Is it safe to ship?")
    assert review.startswith(REVIEW_LEAD) and note not in review  # the answer said it in full
    assert note not in session.answer("Where is it?")
    lm_first = session_on(borderline())
    assert lm_first.answer("Where is it?").endswith(note)  # the LM's answer: the note, once
    assert note not in lm_first.answer("How large is it?")
    mismatch = borderline()
    mismatch.reference_mismatch = True
    assert session_on(mismatch).answer("Is it defective?").endswith(REFERENCE_CAUTION)


@pytest.mark.parametrize("question", ["What kind of defect is it?", "Describe it.", "What colour is it?"])
def test_a_borderline_part_under_the_threshold_has_no_defect_to_describe(question):
    """Earlier answers described its strongest difference (review_words): asked what the defect is, the evidence
    says none clears the threshold and what the strongest difference is, instead of the LM repeating it as a defect;
    a clear normal part still goes to the LM."""
    said = grounded_answer(borderline(over=False), question)
    assert said.startswith("No defect clears the threshold; the strongest difference, under it, is in the center: "
                           "a dark thin line about 40 px long") and parse_verdict(said) is False
    assert grounded_answer(clear(False), question) is None


@pytest.mark.parametrize("question", ["How many defects are there?", "How many defective regions do you see?",
                                      "How many separate anomalies are visible?"])
def test_the_count_of_defects_is_the_evidence_count(question):
    """The regions the evidence counts, in the training answers' words; none on a part not flagged."""
    assert grounded_answer(clear(True), question) == "There are 2 defective regions."
    assert grounded_answer(result(box(desc(""))), question) == "There is one defective region."
    assert grounded_answer(clear(False), question) == "There are no defects."
    assert grounded_answer(borderline(over=False), question) == "There are no defects."
    assert grounded_answer(clear(True), "How many good parts should I add?") is None
