"""Defect questions answered from the measured descriptors (assistant/grounded.py, wording/defects.py): the type
is named only when the classifier named it, else what was measured is said with the closest type; multiple-choice
type, position and size questions pick the option the evidence supports; a normal verdict leaves free-form
questions to the LM and answers multiple choice about the strongest deviation (AnomalyResult.peak)."""
import numpy as np

from assistant.evaluation.data.mmad import build_prompt
from assistant.expert.describe import Descriptor
from assistant.expert.postprocess import peak_region, relabel
from assistant.expert.result import AnomalyResult, Box
from assistant.grounded import grounded_answer
from assistant.wording import parse_choice
from assistant.wording.defects import descriptor_words, looks, option_type, type_words_in

TYPE_OPTIONS = {"A": "crack", "B": "cut", "C": "hole", "D": "print"}
PROBS = {"crack": 0.2, "scratch": 0.6, "hole": 0.05, "stain": 0.1, "foreign object": 0.05}


def desc(defect_type: str = "", **kw) -> Descriptor:
    base = dict(area_px=300, length_px=40.0, width_px=8.0, elongation=5.0, form="line", orientation="diagonal",
                centroid=(0.1, 0.1), core_px=60, core_width_px=2.0, core_elongation=20.0, count=1, tone="darker",
                contrast=-20.0, chroma=1.0, colour="", edge="sharp", edge_px=1.5, defect_type=defect_type,
                type_confidence=PROBS["scratch"], type_probs=dict(PROBS))
    return Descriptor(**{**base, **kw})


def box(d: Descriptor | None, x: int = 5, y: int = 5, score: float = 2.0, area: float = 0.01) -> Box:
    return Box(x, y, x + 10, y + 10, score, area, descriptor=d)


def result(*boxes: Box, anomalous: bool = True, peak: Box | None = None) -> AnomalyResult:
    mask = np.zeros((90, 90), bool)
    if anomalous:
        mask[5:15, 5:15] = True  # 100 / 8100 of the image: "small"
    return AnomalyResult(anomaly_map=np.zeros((90, 90), np.float32), pred_score=3.0 if anomalous else 0.5,
                         pred_label=anomalous, pred_mask=mask, boxes=list(boxes), threshold=1.0, alignment="free",
                         peak=peak)


def test_named_type_is_said_with_what_was_measured():
    said = grounded_answer(result(box(desc("scratch"))), "What kind of defect is it?")
    assert said.startswith("It looks like a scratch in the top left:")
    assert "dark thin line about 40 px long, running diagonally" in said


def test_unnamed_type_says_what_was_measured_and_the_closest_type():
    said = grounded_answer(result(box(desc(""))), "What type of defect is this?")
    assert "cannot name the type" in said and "closest: 60% scratch" in said
    assert "thin line about 40 px long" in said and "It looks like" not in said


def test_describe_says_up_to_three_regions_strongest_first():
    boxes = [box(desc("", tone="brighter", form="compact", orientation="", length_px=12, width_px=12), x=70, y=70,
                 score=3.0), box(desc("crack"), score=2.0), box(desc(""), x=40, y=40, score=1.5),
             box(desc(""), x=5, y=70, score=1.0)]
    said = grounded_answer(result(*boxes), "Describe it.")
    assert said.startswith("In the bottom right there is a bright compact spot about 12 px across")
    assert "(it looks like a crack)" in said and said.endswith("1 smaller region not described.")
    assert said.index("bottom right") < said.index("top left") < said.index("center")


def test_colour_is_named_or_said_absent():
    red = grounded_answer(result(box(desc("", colour="red", chroma=30.0))), "What colour is it?")
    assert red == "It is red and darker than the surface around it."
    grey = grounded_answer(result(box(desc(""))), "What color is the defect?")
    assert grey.startswith("It has no distinct colour of its own")


def test_either_or_question_compares_the_asked_types():
    r = result(box(desc("")))
    unsure = grounded_answer(r, "Is it a scratch or a crack?")
    assert "closer to a scratch (60% scratch vs 20% crack), but I am not confident" in unsure
    assert grounded_answer(result(box(desc("scratch"))), "Is it a crack or a scratch?").startswith(
        "It looks like a scratch")
    neither = grounded_answer(result(box(desc("foreign object"))), "Is it a scratch or a crack?")
    assert neither.startswith("Neither, it looks more like a foreign object")


def test_multiple_choice_type_answers_only_a_named_type():
    prompt = build_prompt("What type of defect is present on the object?", TYPE_OPTIONS)
    said = grounded_answer(result(box(desc("scratch"))), prompt)
    assert parse_choice(said, TYPE_OPTIONS) == "B"  # "cut" names a scratch
    assert grounded_answer(result(box(desc(""))), prompt) is None  # unsure: not picked from the ranking
    assert grounded_answer(result(box(desc("dent"))), prompt) is None  # named, but no option says it
    odd = {"A": "bottle", "B": "screw"}  # no option names a defect type: the LM answers
    assert grounded_answer(result(box(desc("scratch"))), build_prompt("What type of defect is it?", odd)) is None


def test_multiple_choice_detection_follows_the_verdict():
    yes_no = {"A": "No.", "B": "Yes."}
    prompt = build_prompt("Is there any defect in the object?", yes_no)
    assert parse_choice(grounded_answer(result(box(desc(""))), prompt), yes_no) == "B"
    assert parse_choice(grounded_answer(result(anomalous=False), prompt), yes_no) == "A"
    assert grounded_answer(result(box(desc(""))), "Is there any defect in the object?") is None  # free form: LM


def test_multiple_choice_position_and_size_follow_the_expert():
    options = {"A": "center", "B": "top left", "C": "bottom", "D": "right"}
    said = grounded_answer(result(box(desc(""))), build_prompt("Where is the defect located in the image?", options))
    assert parse_choice(said, options) == "B"
    far = {"A": "bottom right", "B": "top", "C": "right"}  # top left not offered: the nearest grid word
    said = grounded_answer(result(box(desc(""))), build_prompt("Where is the defect located?", far))
    assert parse_choice(said, far) == "B" and "closest offered: top" in said
    sizes = {"A": "tiny", "B": "small", "C": "medium", "D": "large"}
    said = grounded_answer(result(box(desc(""))), build_prompt("How large is the defective area?", sizes))
    assert parse_choice(said, sizes) == "B"


def test_normal_verdict_leaves_free_form_to_the_lm_and_answers_choices_about_the_peak():
    r = result(anomalous=False, peak=box(desc("scratch"), x=70, y=70, area=0.001))
    assert grounded_answer(r, "What kind of defect is it?") is None
    assert grounded_answer(r, "Describe it.") is None
    said = grounded_answer(r, build_prompt("What type of defect is present?", TYPE_OPTIONS))
    assert parse_choice(said, TYPE_OPTIONS) == "B" and "no defect that clears the threshold" in said
    sizes = {"A": "tiny", "B": "small", "C": "medium", "D": "large"}
    assert parse_choice(grounded_answer(r, build_prompt("How large is it?", sizes)), sizes) == "A"
    assert grounded_answer(result(anomalous=False), build_prompt("What type of defect?", TYPE_OPTIONS)) is None


def test_questions_about_the_object_and_others_go_to_the_lm():
    r = result(box(desc("scratch")))
    objects = {"A": "hazelnut", "B": "screw", "C": "cable"}
    assert grounded_answer(r, build_prompt("What kind of object is shown in the image?", objects)) is None
    assert grounded_answer(r, "Where is it?") is None
    assert grounded_answer(r, "Is there any anomaly in the image?") is None
    assert grounded_answer(result(box(None)), "What kind of defect is it?") is None  # not measured


def test_vocabulary_words_in_questions_and_options():
    assert type_words_in("Is it a scratch or a crack?") == ["scratch", "crack"]
    assert type_words_in("any metal_contamination?") == ["foreign object"]
    assert option_type("Broken large") == "missing part" and option_type("faulty-imprint") is None
    assert option_type("blowhole") == "hole" and option_type("discoloration.") == "discolouration"


def test_words_for_pieces_colour_and_the_detect_line():
    assert looks(desc("", count=3)).endswith("in 3 pieces, with a sharp edge")
    assert "many small marks" in looks(desc("", count=12))
    assert looks(desc("", colour="black")).startswith("a black thin line")  # no "dark black"
    assert descriptor_words(desc("scratch")).endswith("type scratch (60%)")
    assert "type not named (closest scratch, 60%)" in descriptor_words(desc(""))


def test_peak_region_and_relabel_keep_the_strongest_deviation_of_a_normal_verdict():
    amap = np.zeros((40, 40), np.float32)
    amap[5:9, 5:9], amap[25:35, 25:35] = 0.8, 0.5
    r = AnomalyResult(anomaly_map=amap, pred_score=0.9, pred_label=False, pred_mask=np.zeros_like(amap, bool),
                      threshold=1.0, pixel_threshold=0.3)
    found = peak_region(r)
    assert found is not None
    pbox, region = found
    assert (pbox.x0, pbox.y0, pbox.x1, pbox.y1) == (5, 5, 9, 9) and region.sum() == 16
    pbox.descriptor = desc("scratch")
    flagged = relabel(AnomalyResult(**{**r.__dict__, "peak": pbox}), 0.5, 0.3)
    assert flagged.pred_label and flagged.peak is None
    assert any(b.descriptor is pbox.descriptor for b in flagged.boxes)  # measured once, carried
    normal_again = relabel(flagged, 1.0, 0.3)
    assert not normal_again.pred_label and normal_again.peak is not None


def test_describe_results_measures_boxes_or_the_peak_and_names_types():
    from PIL import Image

    from assistant.expert.defect_type import TypeClassifier
    from assistant.expert.postprocess import describe_results

    amap = np.zeros((64, 64), np.float32)
    amap[20:30, 10:50] = 1.0
    img = np.full((64, 64, 3), 150, np.uint8)
    img[24:26, 12:48] = 40  # a dark line under the map's region
    normal = AnomalyResult(anomaly_map=amap, pred_score=0.5, pred_label=False, pred_mask=np.zeros_like(amap, bool),
                           threshold=1.0, pixel_threshold=0.5)
    flagged = relabel(normal, 0.1, 0.5)
    clf = TypeClassifier(threshold=0.0)
    describe_results([normal, flagged], [Image.fromarray(img)] * 2, clf)
    assert normal.peak is not None and normal.peak.descriptor.tone == "darker"
    assert normal.peak.descriptor.defect_type in clf.types
    assert flagged.peak is None and flagged.boxes[0].descriptor.form != "compact"
    assert relabel(normal, 0.1, 0.5).boxes[0].descriptor is normal.peak.descriptor  # measured once, carried
    untouched = relabel(AnomalyResult(**{**normal.__dict__, "peak": None}), 0.1, 0.5)
    describe_results([untouched], None, clf)  # no images: nothing measured
    assert untouched.boxes[0].descriptor is None


def test_aligned_results_describe_with_their_change_of_material():
    b = box(desc("foreign object"))
    b.change, b.shape = "extra", "bridge"
    r = result(b)
    r.alignment = "aligned"
    said = grounded_answer(r, "Describe it.")
    assert said.startswith("In the top left there is a dark thin line") and "extra: material the golden" in said
    assert grounded_answer(r, "What kind of defect is it?").startswith("Compared with the golden sample, there is "
                                                                      "extra material")


def test_either_or_says_neither_when_both_are_far_from_the_closest_type():
    d = desc("", type_probs={"scratch": 0.01, "crack": 0.02, "missing part": 0.4})
    said = grounded_answer(result(box(d)), "Is it a scratch or a crack?")
    assert said.startswith("Neither looks likely (1% scratch vs 2% crack); the closest type is a missing part (40%)")


def test_a_flagged_mask_too_small_for_a_box_is_described_by_its_peak():
    r = result(anomalous=True, peak=box(desc("", form="compact", orientation="", length_px=5, width_px=5)))
    said = grounded_answer(r, "Describe it.")
    assert said == "In the top left there is a dark compact spot about 5 px across, with a sharp edge."
    assert "cannot name the type" in grounded_answer(r, "What kind of defect is it?")


def test_comparison_of_a_flagged_part_says_where_and_what_and_needs_a_reference():
    r = result(box(desc("")), box(desc(""), x=70, y=70, score=1.0))
    r.shots = 1
    said = grounded_answer(r, "Compare it with the reference.")
    assert said.startswith("Compared with the reference, this part differs in the top left: a dark thin line")
    assert said.endswith("; 1 more region differs. The rest matches.")
    r.shots = 0  # no reference: the LM says so
    assert grounded_answer(r, "Compare it with the reference.") is None
    normal = result(anomalous=False, peak=box(desc("")))
    normal.shots = 1
    assert grounded_answer(normal, "Compare it with the reference.") is None  # the LM: it matches
