"""The checks of bench/chat_truth.py: an answer is truthful when it agrees with the overlay's AnomalyResult."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from assistant.expert import AnomalyResult, Box

spec = importlib.util.spec_from_file_location(
    "chat_truth", Path(__file__).resolve().parent.parent / "bench" / "chat_truth.py"
)
ct = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ct)


def _result(anomalous: bool) -> AnomalyResult:
    mask = np.zeros((100, 100), bool)
    if anomalous:
        mask[5:15, 70:90] = True  # top right, 2% of the image
    return AnomalyResult(anomaly_map=mask.astype(np.float32), pred_score=2.0 if anomalous else 0.5,
                         pred_label=anomalous, pred_mask=mask, threshold=1.0, pixel_threshold=0.5,
                         boxes=[Box(70, 5, 90, 15, 1.0, 0.02)] if anomalous else [])


@pytest.mark.parametrize("kind,answer,ok", [
    ("detect", "Yes, there is an anomaly: a scratch at the top right of the image.", True),
    ("detect", "No, the object looks normal.", False),
    ("where", "It is at the top right of the image.", True),
    ("where", "It is in the center of the image.", False),
    ("size", "It is a small scratch, covering about 2.0% of the image.", True),
    ("size", "It is 1.9 mm in length.", False),
    ("ship", "No, it is not safe to ship: it has a moderate scratch.", True),
    ("ship", "Yes, it is safe to ship.", False),
    ("reject", "Yes, I would reject it: it has a moderate scratch.", True),
    ("reject", "No, it should be rejected.", False),
    ("count", "There is one defective region.", True),
    ("count", "There are three: a stain, a hole and a missing region.", False),
    ("count", "There are 1 defective region.", False),  # right number, broken English
    ("compare", "Compared with the reference image, this part has a scratch in the top right of the image.", True),
    ("compare", "Compared with the reference image, this part has a scratch in the center of the image.", False),
    ("compare", "It matches the reference image: no differences in shape, color or texture.", False),
    ("compare", "Compared with the reference, this part has a damaged top right region; the reference has a normal "
                "one; The object looks normal;", False),  # the right place, then a contradiction
    ("good", "No, it is defective: it has a minor scratch.", True),
    ("good", "No, the object looks normal.", False),
    ("good", "Yes, there is an anomaly: a scratch.", False),
    ("usable", "No, it has a moderate scratch.", True),
    ("usable", "Yes, it can be used.", False),
    ("scrap", "Yes, it should be discarded: it has a moderate scratch.", True),
    ("scrap", "Yes, it looks normal.", False),  # right leading word, contradicting words
    ("scrap", "No, keep it.", False),
    ("scrap", "It is defective (a moderate scratch), so I would reject it.", True),  # verdict + recommendation
    ("ship", "I would reject it: it is defective, with a moderate scratch.", True),
    ("ship", "It is defective, but I would accept it.", False),
    ("good", "It looks normal, so I would accept it.", False),
])
def test_checks_on_an_anomalous_overlay(kind, answer, ok):
    fact = ct.expected(_result(True))
    assert fact["position"] == "top right" and fact["percent"] == "2.0%" and fact["regions"] == 1
    assert ct.truthful(kind, answer, fact) is ok


@pytest.mark.parametrize("kind,answer,ok", [
    ("detect", "No, the object looks normal.", True),
    ("where", "There is no defect to locate; the object looks normal everywhere.", True),
    ("where", "It is in the center of the image.", False),
    ("size", "There is no defect, so there is nothing to measure.", True),
    ("ship", "Yes, it looks normal and is safe to ship.", True),
    ("reject", "No, it looks normal; I would accept it.", True),
    ("reject", "Yes, I would reject it.", False),
    ("count", "There are no defects.", True),
    ("count", "There is one defective region.", False),
    ("compare", "It matches the reference image: no differences in shape, color or texture.", True),
    ("compare", "Compared with the reference image, this part has a stain at the bottom of the image.", False),
    ("good", "Yes, it looks normal.", True),
    ("good", "Yes, there is an anomaly: a missing piece.", False),  # the shipped adapter's answer on a good washer
    ("good", "No, the object looks normal.", False),
    ("usable", "Yes, it looks normal and can be used.", True),
    ("usable", "No, the object looks normal.", False),
    ("scrap", "No, it looks normal; keep it.", True),
    ("scrap", "Yes, I would reject it: no scratches, cracks, stains or missing parts.", False),
    ("scrap", "It looks normal, so I would accept it.", True),
    ("reject", "I would accept it: it looks normal.", True),
    ("usable", "It looks normal, so I would reject it.", False),
    ("ship", "It looks normal.", False),  # no recommendation
])
def test_checks_on_a_normal_overlay(kind, answer, ok):
    assert ct.truthful(kind, answer, ct.expected(_result(False))) is ok


def test_count_answers_must_agree_in_number():
    assert ct.number_agrees("There are 2 defective regions.") and ct.number_agrees("There is one defective region.")
    assert not ct.number_agrees("There is 2 defective regions.") and not ct.number_agrees("There are one defect.")
    assert not ct.number_agrees("there is three of them") and ct.number_agrees("There are no defects.")


def test_ask_parses_kind_and_question_and_names_what_it_expected():
    assert ct.parse_ask(["scrap=Is this part scrap?", "detect = Anything off?"]) == [
        ("scrap", "Is this part scrap?"), ("detect", "Anything off?")]
    for bad in ["Is this part scrap?", "bogus=Is it?", "scrap="]:
        with pytest.raises(ValueError, match="expected KIND=QUESTION"):
            ct.parse_ask([bad])


def test_borderline_is_said_once_with_the_first_answer_and_never_for_a_clear_verdict():
    clear = ct.expected(_result(True))
    assert clear["borderline"] is False
    assert ct.says_borderline_once("Yes, there is an anomaly.", clear, first=True)
    assert not ct.says_borderline_once("Yes. It is borderline: ...", clear, first=True)
    border = {**clear, "borderline": True}
    note = ("Yes, there is an anomaly. It is borderline: the score is just over the threshold; "
            "I would have a person check it.")
    assert ct.says_borderline_once(note, border, first=True)
    assert not ct.says_borderline_once("Yes, there is an anomaly.", border, first=True)  # the note is missing
    assert not ct.says_borderline_once(note, border, first=False)  # said again on a follow-up


def _described(defect_type: str) -> AnomalyResult:
    from assistant.expert.describe import Descriptor

    r = _result(True)
    r.boxes[0].descriptor = Descriptor(
        area_px=200, length_px=20.0, width_px=10.0, elongation=2.0, form="elongated", orientation="horizontal",
        centroid=(0.1, 0.8), core_px=50, core_width_px=3.0, core_elongation=6.0, count=1, tone="darker",
        contrast=-15.0, chroma=2.0, colour="", edge="sharp", edge_px=1.0, defect_type=defect_type,
        type_confidence=0.9 if defect_type else 0.4, type_probs={"scratch": 0.9 if defect_type else 0.4, "crack": 0.1})
    return r


@pytest.mark.parametrize("named", ["scratch", ""])
def test_type_and_describe_answers_are_checked_against_the_descriptor(named):
    from assistant.grounded import grounded_answer

    r = _described(named)
    fact = ct.expected(r)
    r.shots = 1
    for kind, q in (("type", "What kind of defect is it?"), ("describe", "Describe it."),
                    ("compare", "Compare it with the reference.")):
        assert ct.truthful(kind, grounded_answer(r, q), fact), kind
    wrong = "It looks like a crack at the top right: a dark elongated mark about 20 px long."
    assert not ct.truthful("type", wrong, fact)
    assert not ct.truthful("describe", "At the top right there is a dark compact spot about 20 px across.", fact)
    assert not ct.truthful("type", "It looks like a scratch at the bottom: a dark elongated mark about 20 px long.",
                           fact)
    normal = ct.expected(_result(False))
    assert ct.truthful("type", "There is no defect, so there is nothing to measure.", normal)
    assert not ct.truthful("describe", "At the top right there is a dark elongated mark about 20 px long.", normal)


def _borderline(over: bool = True, reason: str = "threshold") -> AnomalyResult:
    r = _result(over)
    r.pred_score, r.verdict, r.review_reason, r.confidence = (1.03 if over else 0.97), "borderline", reason, 0.6
    r.threshold_low, r.threshold_high, r.shots = 0.95, 1.06, 1
    if reason == "coverage":
        r.coverage = 1.9
    return r


LM_TODAY = ["It looks normal: I would accept it.", "It is defective (a minor defect), so I would reject it.",
            "Yes, there is an anomaly: a defect at the top right of the image.\n\nIt is borderline: the score is just "
            "over the threshold, within its uncertainty (confidence 60%); I would hold the part for a person to check.",
            "No, the object looks normal.", "It is borderline, but it is safe to ship."]


@pytest.mark.parametrize("over,reason", [(True, "threshold"), (False, "threshold"), (True, "coverage")])
def test_borderline_detection_and_decisions_must_hold_the_part_for_a_person(over, reason):
    from assistant.grounded import grounded_answer

    r = _borderline(over, reason)
    fact = ct.expected(r)
    assert fact["borderline"] and fact["threshold"] == "1"
    for kind, q in ct.QUESTIONS:
        if kind in ct.REVIEW_KINDS:
            answer = grounded_answer(r, q)
            assert ct.truthful(kind, answer, fact), kind
            assert ct.says_borderline_once(answer, fact, first=False, kind=kind), kind
            assert all(not ct.truthful(kind, wrong, fact) for wrong in LM_TODAY), kind
    assert not ct.says_borderline_once("It is borderline: ...", fact, first=False, kind="where")


@pytest.mark.parametrize("anomalous", [True, False])
def test_clear_verdicts_keep_their_decision_checks(anomalous):
    fact = ct.expected(_result(anomalous))
    held = "It is borderline: I cannot decide ...; I would hold it for a person to check."
    assert not ct.truthful("ship", held, fact)
    assert ct.truthful("reject", "It is defective, so I would reject it." if anomalous else
                       "It looks normal, so I would accept it.", fact)


def test_why_answers_are_checked_against_the_evidence():
    from assistant.grounded import grounded_answer

    for r in (_result(True), _result(False), _borderline(True), _borderline(False), _borderline(True, "coverage")):
        r.threshold_low, r.threshold_high = r.threshold_low or 0.95, r.threshold_high or 1.06
        fact = ct.expected(r)
        answer = grounded_answer(r, "Why do you think so?")
        assert ct.truthful("why", answer, fact), answer
        assert ct.says_borderline_once(answer, fact, first=False, kind="why")
        assert not ct.truthful("why", "I cannot tell with confidence what the reason is.", fact)
    flagged = ct.expected(_result(True))
    right = "I judged it anomalous. Its score, 2, is over the threshold 1. It differs in the top right."
    assert ct.truthful("why", right, flagged)
    assert not ct.truthful("why", right.replace("top right", "bottom left"), flagged)  # not where the expert says
    assert not ct.truthful("why", right.replace("threshold 1", "threshold 0.8"), flagged)  # not its threshold
    assert not ct.truthful("why", right.replace("anomalous", "normal"), flagged)
    normal = ct.expected(_result(False))
    assert ct.truthful("why", "I judged it normal: its score, 0.5, is under the threshold 1.", normal)
    assert not ct.truthful("why", "It is defective: its score, 0.5, is under the threshold 1.", normal)
    border = ct.expected(_borderline(True))
    assert not ct.truthful("why", right, border)  # a decision on a borderline verdict
    assert ct.parse_ask(["why=How sure are you?"]) == [("why", "How sure are you?")]
