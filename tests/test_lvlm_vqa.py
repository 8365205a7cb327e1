"""Answer-level evaluation helpers: verdict and position parsing, metrics against hand-computed values."""
import json

import numpy as np
import pytest

from assistant.evaluation.answers.report import answer_metrics, merge_report
from assistant.wording import mask_position, parse_position, parse_verdict


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
