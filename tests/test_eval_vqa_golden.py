"""Question items marked `"golden": true` (JSONL lines, MMAD entries): parsed, analysed with golden=True (their
references fitted with alignment "golden"), kept apart from the same image's other questions; items without the
field are analysed and recorded exactly as before."""
import argparse
import json

import pytest
from qa_fixtures import FakeAnswerer, make_mmad

from assistant.evaluation import cli as evaluate_cli
from assistant.evaluation.answers.questions import QuestionAsker, make_units
from assistant.evaluation.data.jsonl import QuestionFileError, load_jsonl
from assistant.evaluation.data.mmad import load_mmad


class GoldenFake(FakeAnswerer):
    """The fake answerer with the Assistant's golden argument; records each analysis's flag."""

    def __init__(self):
        super().__init__()
        self.golden: list[tuple[str, bool]] = []

    def analyze(self, query, references=(), seed=0, golden=False):
        self.golden.append((str(query), golden))
        return super().analyze(query, references)


def _jsonl(root, golden_line: dict) -> object:
    """Two questions about one image (the second marked golden with `golden_line`'s value) and one about another."""
    lines = [{"image": "DS/bottle/test/crack/000.png", "references": ["DS/bottle/train/good/000.png"],
              "question": "Is this part defective?", "answer": "yes", "label": 1},
             {"image": "DS/bottle/test/crack/000.png", "references": ["DS/bottle/train/good/000.png"],
              "question": "Is this part defective?", "answer": "yes", "label": 1, **golden_line},
             {"image": "DS/bottle/test/good/000.png", "question": "Is this part defective?", "answer": "no",
              "label": 0}]
    path = root / "q.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_jsonl_and_mmad_items_carry_golden(tmp_path):
    make_mmad(tmp_path)
    items = load_jsonl(_jsonl(tmp_path, {"golden": True}), tmp_path)
    assert [it.golden for it in items] == [False, True, False]
    assert items[0].group != items[1].group and items[0].group == (items[0].image_id, tuple(items[0].references))
    with pytest.raises(QuestionFileError, match=r"q.jsonl:2: 'golden' must be true or false, got 'yes'"):
        load_jsonl(_jsonl(tmp_path, {"golden": "yes"}), tmp_path)
    path = tmp_path / "mmad.json"
    data = json.loads(path.read_text())
    key = next(iter(data))
    data[key]["golden"] = True
    path.write_text(json.dumps(data))
    items = load_mmad(path, tmp_path)
    assert {it.golden for it in items if it.image_id == key} == {True}
    assert not any(it.golden for it in items if it.image_id != key)


def test_golden_items_are_analysed_as_golden_and_recorded(tmp_path):
    make_mmad(tmp_path)
    items = load_jsonl(_jsonl(tmp_path, {"golden": True}), tmp_path)
    units = make_units({0: items})
    assert len(units) == 3 and [u.sort_key.endswith("|golden") for u in units] == [False, True, False]
    fake = GoldenFake()
    records = QuestionAsker(fake, tmp_path / "out", str(tmp_path))(units)
    assert [g for _, g in fake.golden] == [False, True, False]
    plain, golden = records[0][0], records[1][0]
    assert "golden" not in plain and "alignment" not in plain  # items without the field: records as before
    assert golden["golden"] is True and golden["key"] == "s0/DS/bottle/test/crack/000.png#1"
    with pytest.raises(TypeError, match="takes no 'golden' argument"):  # said golden, cannot be honoured: an error
        QuestionAsker(FakeAnswerer(), tmp_path / "out2", str(tmp_path))([units[1]])


def test_evaluate_jsonl_with_golden_items_end_to_end(tmp_path):
    make_mmad(tmp_path)
    path = _jsonl(tmp_path, {"golden": True})
    p = argparse.ArgumentParser()
    evaluate_cli.add_arguments(p)
    args = p.parse_args(["--jsonl", str(path), "--data-root", str(tmp_path), "--out", str(tmp_path / "run"),
                         "--config", "fake"])
    fake = GoldenFake()
    assert evaluate_cli.run(args, answerer=fake) == 0
    recs = [json.loads(x) for x in (tmp_path / "run/answers.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and sum(r.get("golden", False) for r in recs) == 1
    assert sorted(g for _, g in fake.golden) == [False, False, True]
