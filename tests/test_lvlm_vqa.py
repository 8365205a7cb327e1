"""Answer-level evaluation helpers: verdict and position parsing, metrics against hand-computed values."""
import json

import numpy as np
import pytest

from assistant.evaluation.answers.report import answer_metrics, merge_report
from assistant.wording import held_answer, mask_position, parse_position, parse_verdict


@pytest.mark.parametrize("text,expected", [
    ("Yes, there is an anomaly: a crack in the top left of the image.", True),
    ("No, the object looks normal.", False),
    ("  yes.", True),
    ("The part looks normal and can be shipped.", False),
    ("There is a small scratch on the surface.", True),
    ("I see no defects on this hazelnut.", False),
    ("The hazelnut is defective.", True),
    ("No anomaly was found.", False),
    ("Expert evidence: no suspicious features.", False),
    ("Hello there.", None),
    ("", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) is expected


@pytest.mark.parametrize("text,expected", [
    ("It is in the top left of the image.", "top left"),
    ("The crack is at the top of the image.", "top"),
    ("On the left.", "left"),
    ("In the centre.", "center"),
    ("in the middle of the tile", "center"),
    ("At the bottom-right corner; not the top.", "bottom right"),
    ("There is no defect to locate.", None),
])
def test_parse_position(text, expected):
    assert parse_position(text) == expected


def test_mask_position():
    m = np.zeros((90, 90), bool)
    assert mask_position(m) is None
    m[70:80, 35:50] = True
    assert mask_position(m) == "bottom"


def _rec(gt, ans, pred, gpos=None, apos=None):
    return {"gt_label": gt, "answer_label": ans, "pred_label": pred, "gt_position": gpos, "answer_position": apos}


def test_answer_metrics_hand_computed():
    recs = [
        _rec(1, True, True, "top", "top"),
        _rec(1, True, True, "left", "right"),
        _rec(1, False, True, "center", None),  # missed, inconsistent with the expert
        _rec(0, False, False),
        _rec(0, True, True),  # overkill
        _rec(0, None, False),  # unparsed counts as normal
    ]
    m = answer_metrics(recs)
    assert m["answer_accuracy"] == pytest.approx(4 / 6)
    assert m["answer_miss"] == pytest.approx(1 / 3)
    assert m["answer_overkill"] == pytest.approx(1 / 3)
    assert m["answer_balanced_accuracy"] == pytest.approx(((2 / 3) + (2 / 3)) / 2)
    assert m["location_accuracy"] == pytest.approx(1 / 3)
    assert m["consistency"] == pytest.approx(5 / 6)
    assert m["answer_unparsed"] == pytest.approx(1 / 6)
    assert m["expert_balanced_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_merge_report_adds_to_existing_categories(tmp_path):
    (tmp_path / "report.json").write_text(
        json.dumps(
            {
                "shots": 1,
                "seeds": [0],
                "config": {},
                "mean": {"image_auroc": 0.9},
                "categories": {"a": {"image_auroc": 0.9, "std": {"image_auroc": 0.0}}},
            }
        )
    )
    rep = merge_report(tmp_path, {"a": {"answer_accuracy": 0.5, "consistency": 1.0, "std": {"answer_accuracy": 0.1}}},
                       {"shots": 1, "seeds": [0]})
    cat = rep["categories"]["a"]
    assert (
        cat["image_auroc"] == 0.9
        and cat["answer_accuracy"] == 0.5
        and cat["std"] == {"image_auroc": 0.0, "answer_accuracy": 0.1}
    )
    assert rep["mean"]["consistency"] == 1.0 and rep["mean"]["image_auroc"] == 0.9
    assert "| a |" in (tmp_path / "report_vqa.md").read_text()


BORDERLINE = ("It is borderline: I cannot decide with confidence whether to accept or reject this part, so I would "
              "hold it for a person to check. No region of it stands out.")


@pytest.mark.parametrize("text,held", [
    (BORDERLINE, True),
    ("Yes, there is a crack. It is borderline: the score is just over the threshold; I would hold the part.", False),
    ("No, it looks normal.", False),
    ("", False),
])
def test_held_answer(text, held):
    """A held answer states the borderline verdict and decides nothing (parse_verdict None), whatever "no" its
    reasons contain; a yes/no answer with a borderline note is a decided one."""
    assert held_answer(text) is held
    if held:
        assert parse_verdict(text) is None


def test_held_answers_are_counted_on_their_own():
    """Borderline answers are not "normal": their share is reported, the balanced accuracy of the decided answers
    beside it, and the headline figures count each held answer as wrong."""
    def rec(gt, ans, pred, held=False, verdict=None):
        return {**_rec(gt, ans, pred), "answer_held": held,
                "expert_verdict": verdict or ("anomalous" if pred else "normal")}

    recs = [
        rec(1, True, True),
        rec(1, None, True, held=True, verdict="borderline"),
        rec(1, False, False),  # missed
        rec(0, False, False),
        rec(0, None, False, held=True, verdict="borderline"),
        rec(0, None, False),  # unparsed, not held: counts as normal
    ]
    m = answer_metrics(recs)
    assert m["answer_review_rate"] == pytest.approx(2 / 6)
    assert m["answer_balanced_accuracy_decided"] == pytest.approx((1 / 2 + 1.0) / 2)  # decided: 1, 1, 0 ; 0, 0
    assert m["answer_miss"] == pytest.approx(2 / 3) and m["answer_overkill"] == pytest.approx(1 / 3)
    assert m["answer_balanced_accuracy"] == pytest.approx(1 - (2 / 3 + 1 / 3) / 2)
    assert m["answer_accuracy"] == pytest.approx(3 / 6)
    assert m["answer_unparsed"] == pytest.approx(1 / 6)  # the held answers are not unparsed ones
    assert m["consistency"] == pytest.approx(1.0)  # held on the borderline verdicts, the expert's verdict elsewhere
    old = answer_metrics([_rec(1, None, True), _rec(0, False, False)])  # records written before held answers
    assert old["answer_review_rate"] == 0.0 and old["answer_unparsed"] == pytest.approx(1 / 2)


def test_folder_records_keep_the_verdict_and_whether_the_answer_was_held():
    from types import SimpleNamespace

    from assistant.evaluation.answers.folder import records
    from assistant.evaluation.data.items import EvalItem

    res = SimpleNamespace(pred_label=True, verdict="borderline", pred_score=1.02, threshold=1.0, position="top")
    it = EvalItem("test/scratch/000.png", 1, None, "widget", "scratch")
    detect, where = records("widget", 0, [], it, res, None, BORDERLINE, "At the top.")
    assert detect["answer_held"] and detect["answer_label"] is None and detect["expert_verdict"] == "borderline"
    assert where["answer_held"] and where["answer_position"] == "top"


def test_merge_report_shows_the_review_rate_and_the_decided_accuracy(tmp_path):
    summary = {"answer_balanced_accuracy": 0.6, "answer_review_rate": 0.2, "answer_balanced_accuracy_decided": 0.75,
               "std": {}}
    rep = merge_report(tmp_path, {"a": summary}, {"shots": 1, "seeds": [0]})
    assert rep["mean"]["answer_review_rate"] == 0.2
    md = (tmp_path / "report_vqa.md").read_text()
    assert "answer_review_rate" in md and "| a | 0.600 | 0.200 | 0.750 |" in md
    assert "count each held answer as wrong" in md
