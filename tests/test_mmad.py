"""MMAD format: loading, prompts, answer parsing (odd answers fixture) and per-type accuracy."""
import json
from pathlib import Path

import pytest
from qa_fixtures import make_mmad

from assistant.evaluation.data.jsonl import QuestionFileError, load_jsonl
from assistant.evaluation.data.mmad import (
    build_prompt,
    detection_choice,
    load_mmad,
    mmad_scores,
    normalize_type,
    shuffle_options,
)
from assistant.wording import parse_choice

ODD = json.loads((Path(__file__).parent / "fixtures" / "mmad_odd_answers.json").read_text())


@pytest.mark.parametrize("response,expected", ODD["cases2"])
def test_parse_odd_answers_yes_no(response, expected):
    assert parse_choice(response, ODD["options"]) == expected


@pytest.mark.parametrize("response,expected", ODD["cases4"])
def test_parse_odd_answers_four_options(response, expected):
    assert parse_choice(response, ODD["options4"]) == expected


def test_parse_falls_back_to_closest_option_text():
    opts = {"A": "Scratch on the cap", "B": "Broken large", "C": "Contamination"}
    assert parse_choice("It looks like contamnation to me", opts) == "C"  # difflib, as the benchmark


def test_load_mmad_fields(tmp_path):
    path = make_mmad(tmp_path)
    items = load_mmad(path, tmp_path, templates="similar", shots=1)
    assert len(items) == 2 * (3 * 2 + 3 * 3)
    bad = [it for it in items if it.image_id == "DS/bottle/test/crack/000.png"]
    assert [it.key for it in bad] == ["DS/bottle/test/crack/000.png#0", "DS/bottle/test/crack/000.png#1",
                                      "DS/bottle/test/crack/000.png#2"]
    assert bad[0].category == "DS/bottle" and bad[0].label == 1 and bad[0].answer == "A"
    assert bad[0].references == [str(tmp_path / "DS/bottle/train/good/000.png")]
    assert bad[0].mask == str(tmp_path / "DS/bottle/ground_truth/crack/000_mask.png") and Path(bad[0].mask).exists()
    good = [it for it in items if "/good/" in it.image_id]
    assert all(it.label == 0 and it.mask is None for it in good)
    rnd = load_mmad(path, tmp_path, templates="random", shots=1)
    assert rnd[0].references == [str(tmp_path / "DS/bottle/train/good/001.png")]
    assert load_mmad(path, tmp_path, shots=0)[0].references == []
    with pytest.raises(QuestionFileError, match="3 shot.*has 2"):
        load_mmad(path, tmp_path, shots=3)


def test_load_mmad_errors(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("[1, 2]")
    with pytest.raises(QuestionFileError, match="keyed by image path"):
        load_mmad(p, tmp_path)
    p.write_text(
        json.dumps({"x/y/test/a/0.png": {"conversation": [{"Question": "q", "Options": {"A": "1"}, "Answer": "C"}]}})
    )
    with pytest.raises(QuestionFileError, match="answer 'C' not among options"):
        load_mmad(p, tmp_path, shots=0)
    with pytest.raises(FileNotFoundError):
        load_mmad(tmp_path / "missing.json", tmp_path)


def test_prompt_and_type_aliases():
    prompt = build_prompt("Is there any defect?", {"A": "Yes.", "B": "No."})
    assert prompt.splitlines()[:3] == ["Is there any defect?", "A. Yes.", "B. No."]
    assert "option's letter" in prompt
    assert normalize_type("Object Structure") == "Object Analysis" == normalize_type("Object Details")
    assert detection_choice({"A": "Yes.", "B": "No."}, True) == "A"
    assert detection_choice({"A": "No.", "B": "Yes."}, True) == "B"


def test_shuffle_options_keeps_the_gold_text():
    import random

    opts = {"A": "w", "B": "x", "C": "y", "D": "z"}
    for seed in range(10):
        new, ans = shuffle_options(opts, "C", random.Random(seed))
        assert new[ans] == "y" and sorted(new.values()) == sorted(opts.values()) and list(new) == list("ABCD")


def test_mmad_scores_hand_computed():
    # group g1: detection 2 normal (1 right), 2 anomalous (2 right) -> balanced (0.5 + 1) / 2 = 0.75,
    #           plain accuracy would be 0.75 too; g2: 1 normal right, 3 anomalous (1 right) -> (1 + 1/3)/2
    recs = []
    for cat, normal, anomalous in (("g1", [1, 0], [1, 1]), ("g2", [1], [1, 0, 0])):
        recs += [{"category": cat, "qtype": "Anomaly Detection", "label": 0, "correct": bool(c)} for c in normal]
        recs += [{"category": cat, "qtype": "Anomaly Detection", "label": 1, "correct": bool(c)} for c in anomalous]
    recs += [{"category": "g1", "qtype": "Object Details", "label": 1, "correct": True},
             {"category": "g1", "qtype": "Object Structure", "label": 1, "correct": False},
             {"category": "g2", "qtype": "Defect Classification", "label": 1, "correct": True}]
    s = mmad_scores(recs)
    assert s.table["g1"]["Anomaly Detection"] == pytest.approx(0.75)
    assert s.table["g2"]["Anomaly Detection"] == pytest.approx((1 + 1 / 3) / 2)
    assert s.table["g1"]["Object Analysis"] == pytest.approx(0.5)
    assert s.table["g1"]["Average"] == pytest.approx((0.75 + 0.5) / 2)
    assert s.per_type["Anomaly Detection"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert s.per_type["Defect Classification"] == pytest.approx(1.0)  # only g2 has it
    assert s.average == pytest.approx((s.per_type["Anomaly Detection"] + 1.0 + 0.5) / 3)
    assert list(s.per_type) == ["Anomaly Detection", "Defect Classification", "Object Analysis"]


def test_jsonl_loading_and_errors(tmp_path):
    p = tmp_path / "q.jsonl"
    lines = [{"image": "a/test/crack/0.png", "references": ["a/train/good/0.png"], "question": "Any defect?",
              "answer": "yes", "label": 1, "mask": "a/ground_truth/crack/0_mask.png"},
             {"image": "a/test/crack/0.png", "question": "Which?", "options": {"A": "x", "B": "y"}, "answer": "B"},
             {"image": "/abs/img.png", "question": "q", "label": "normal"}]
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    items = load_jsonl(p, tmp_path / "root")
    assert [it.key for it in items] == ["a/test/crack/0.png#0", "a/test/crack/0.png#1", "/abs/img.png#0"]
    assert items[0].image == str(tmp_path / "root" / "a/test/crack/0.png") and items[0].category == "a"
    assert items[0].references == [str(tmp_path / "root" / "a/train/good/0.png")]
    assert items[1].options == {"A": "x", "B": "y"} and items[2].label == 0 and items[2].image == "/abs/img.png"
    p.write_text(json.dumps({"image": "x.png"}) + "\n")
    with pytest.raises(QuestionFileError, match=r"q.jsonl:1: expected a non-empty string field 'question'"):
        load_jsonl(p)
    p.write_text('{"image": "x.png", "question": "q", "options": {"A": "1"}, "answer": "B"}\n')
    with pytest.raises(QuestionFileError, match="answer 'B' is not one of the options"):
        load_jsonl(p)
    p.write_text("not json\n")
    with pytest.raises(QuestionFileError, match="one JSON object per line"):
        load_jsonl(p)


def test_mvtec_to_mmad_writes_loadable_questions(tmp_path):
    import numpy as np
    from PIL import Image

    from assistant.evaluation.data.mvtec_to_mmad import build

    cat = tmp_path / "parts" / "widget"
    rng = np.random.default_rng(0)
    for sub, n in (("train/good", 3), ("test/good", 2), ("test/scratch", 2)):
        (cat / sub).mkdir(parents=True)
        for i in range(n):
            a = (rng.random((32, 32, 3)) * 50 + 100).astype(np.uint8)
            Image.fromarray(a).save(cat / sub / f"{i:03d}.png")
    (cat / "ground_truth/scratch").mkdir(parents=True)
    for i in range(2):
        m = np.zeros((32, 32), np.uint8)
        m[0:4, 26:32] = 255  # top right, 2.3 % of the image -> "medium"
        Image.fromarray(m).save(cat / "ground_truth/scratch" / f"{i:03d}_mask.png")
    data = build([str(cat)], str(tmp_path), seed=0)
    assert sorted(data) == ["parts/widget/test/good/000.png", "parts/widget/test/good/001.png",
                            "parts/widget/test/scratch/000.png", "parts/widget/test/scratch/001.png"]
    (tmp_path / "mmad.json").write_text(json.dumps(data))
    items = load_mmad(tmp_path / "mmad.json", tmp_path, shots=1)
    by = {(it.image_id, it.qtype): it for it in items}
    loc = by[("parts/widget/test/scratch/000.png", "Defect Localization")]
    assert loc.options[loc.answer] == "top right"
    size = by[("parts/widget/test/scratch/000.png", "Defect Description")]
    assert size.options[size.answer] == "medium"
    det = by[("parts/widget/test/good/000.png", "Anomaly Detection")]
    assert det.options[det.answer] == "No." and det.label == 0
    kind = by[("parts/widget/test/scratch/001.png", "Defect Classification")]
    assert kind.options[kind.answer] == "scratch" and len(kind.options) == 4
    assert Path(loc.mask).exists() and Path(loc.references[0]).exists()
    with pytest.raises(ValueError, match="two folders below"):
        build([str(cat)], str(tmp_path / "parts"))
