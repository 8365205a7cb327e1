"""Golden-template questions answered from the evidence (assistant/grounded.py): type and polarity, with the
printed-circuit-board words only where the conversation speaks of boards, and unsure said, not guessed."""
import numpy as np

from assistant.evaluation.data.mmad import build_prompt
from assistant.expert.result import AnomalyResult, Box
from assistant.grounded import golden_note, grounded_answer, prompt_options
from assistant.wording import parse_change, parse_choice, parse_position

PCB_OPTIONS = {"A": "spur", "B": "pin hole", "C": "mousebite", "D": "open", "E": "spurious copper", "F": "short"}


def result(*boxes: Box, alignment: str = "aligned", anomalous: bool = True) -> AnomalyResult:
    return AnomalyResult(anomaly_map=np.zeros((90, 90), np.float32), pred_score=3.0 if anomalous else 0.5,
                         pred_label=anomalous, pred_mask=np.zeros((90, 90), bool), boxes=list(boxes), threshold=1.0,
                         alignment=alignment)


def box(change: str, shape: str, x: int = 5, y: int = 5, score: float = 2.0) -> Box:
    return Box(x, y, x + 10, y + 10, score, 0.01, change=change, shape=shape)


def test_multiple_choice_type_picks_the_option_the_shape_names():
    for shape, want in (("cut", "D"), ("hole", "B"), ("bite", "C"), ("bridge", "F"), ("isolated", "E"),
                        ("protrusion", "A")):
        change = "missing" if shape in ("cut", "hole", "bite") else "extra"
        prompt = build_prompt("What type of defect is on this circuit board?", PCB_OPTIONS)
        said = grounded_answer(result(box(change, shape)), prompt)
        assert said is not None and parse_choice(said, PCB_OPTIONS) == want, (shape, said)


def test_type_question_without_options_uses_board_words_only_for_boards():
    r = result(box("missing", "cut"))
    plain = grounded_answer(r, "What kind of defect is it?")
    assert plain == "Compared with the golden sample, material is missing in the top left: the material is cut through."
    board = grounded_answer(r, "What kind of defect is it?", history=[("What is wrong with this board?", "...")])
    assert board == "Compared with the golden sample, copper is missing in the top left: the trace is cut " \
                    "(type: open circuit)."
    assert parse_position(board) == "top left" and parse_change(board) == "missing"


def test_unsure_when_the_change_has_no_shape():
    r = result(box("altered", "", x=40, y=40))
    said = grounded_answer(r, "What kind of defect is it?")
    assert "cannot name the type" in said and "in the center" in said
    # multiple choice: nothing to pick from the evidence, the LM answers
    assert grounded_answer(r, build_prompt("What type of defect is it?", PCB_OPTIONS)) is None


def test_polarity_questions():
    r = result(box("extra", "bridge", score=1.5), box("missing", "hole", x=70, y=70, score=3.0))
    said = grounded_answer(r, "Is something missing?")
    assert said.startswith("Yes.") and parse_change(said) == "missing" and "bottom right" in said
    extra = grounded_answer(result(box("extra", "isolated")), "Is something missing?")
    assert extra.startswith("Nothing is missing.") and parse_change(extra) == "extra"
    assert grounded_answer(result(box("missing", "cut")), "Is there anything extra?").startswith(
        "There is nothing extra.")
    normal = grounded_answer(result(anomalous=False), "Is anything missing?")
    assert normal.startswith("No, nothing is missing") and parse_change(normal) is None


def test_the_lm_answers_everything_else():
    r = result(box("missing", "cut"))
    assert grounded_answer(r, "Where is it?") is None
    assert grounded_answer(r, "Is there any anomaly in the image?") is None
    free = result(box("", ""), alignment="free")
    assert grounded_answer(free, "What kind of defect is it?") is None
    assert grounded_answer(free, "Is something missing?") is None


def test_golden_note_follows_an_lm_answer_only():
    r = result(box("missing", "bite"))
    assert golden_note(r, "What is wrong?") == ("Compared with the golden sample, material is missing in the top "
                                                "left: a bite is taken out of an edge.")
    assert golden_note(r, "Is something missing?") is None  # answered from the evidence already
    assert golden_note(result(box("altered", "")), "What is wrong?") is None
    assert golden_note(result(box("", ""), alignment="free"), "What is wrong?") is None


def test_prompt_options_reads_the_benchmark_layout():
    assert prompt_options(build_prompt("Which?", PCB_OPTIONS)) == PCB_OPTIONS
    assert prompt_options("What kind of defect is it?") == {}


def test_evidence_says_the_change_only_when_configured():
    from assistant.wording import result_evidence

    r = result(box("missing", "cut"))
    assert "golden sample" not in result_evidence(r)
    assert result_evidence(r, changes=True).endswith("; golden sample: missing (cut).")
    assert "golden sample" not in result_evidence(result(box("", ""), alignment="free"), changes=True)
