"""Region descriptors (expert/describe.py) and the defect-type classifier (expert/defect_type.py).

Pinned: on synthetic 256 px surfaces, a thin dark line reads as a long, oriented, darker, sharp-edged mark of about
the drawn length; a round bright blob as compact and brighter with no orientation; a red stain names its colour and a
grey change none; an aligned reference is the defect-free estimate (reference_tone); separate pieces are counted;
lengths are reported at 256 px whatever the image size. The rotated-rectangle geometry, the feature vector and the
JSON form of a Descriptor. `describe` measures each box of a result (empty regions stay unmeasured) and relabelling
carries descriptors. The classifier's probabilities, abstention threshold, save/load round trip and refusals,
golden-change naming, the logistic-regression fit (multi-class and binary), and the shipped offline-small checkpoint.
"""
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import assistant
from assistant.expert.defect_type import (
    CONFIG_NAME,
    VOCABULARY,
    WEIGHTS_NAME,
    TypeClassifier,
    TypeClassifierError,
    fit_probabilities,
    load_type_classifier,
    name_by_change,
)
from assistant.expert.describe import (
    COLOUR_DELTA,
    FEATURES,
    LINE_WIDTH,
    PALETTE,
    Descriptor,
    colour_name,
    describe,
    describe_region,
    features,
    geometry,
    image_rgb,
    rect,
    to_lab,
)
from assistant.expert.postprocess import apply_sensitivity, carry_changes, mask_boxes
from assistant.expert.result import AnomalyResult, Box
from assistant.wording.defects import length_words

DARK, BRIGHT = (60, 60, 60), (235, 235, 235)
HALO = 15  # the map's region is the defect dilated by this kernel (px): wider than the defect, as map cells are
LINES = {  # orientation -> (start, end) of a 2 px line on a 256 px image
    "horizontal": ((60, 128), (190, 128)),
    "vertical": ((128, 50), (128, 200)),
    "diagonal": ((60, 60), (180, 180)),
}


def surface(seed: int = 0, size: int = 256, noise: float = 3.0) -> np.ndarray:
    """(size, size, 3) uint8 grey surface: 150 plus seeded pixel noise."""
    rng = np.random.default_rng(seed)
    return np.clip(150 + rng.normal(0, noise, (size, size, 1)), 0, 255).repeat(3, 2).astype(np.uint8)


def halo(mask: np.ndarray, k: int = HALO) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(bool)


def with_line(orientation: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(image, reference without the line, the map's region, drawn length in px)."""
    (x0, y0), (x1, y1) = LINES[orientation]
    ref = surface(seed)
    img, mask = ref.copy(), np.zeros(ref.shape[:2], np.uint8)
    cv2.line(img, (x0, y0), (x1, y1), DARK, 2)
    cv2.line(mask, (x0, y0), (x1, y1), 1, 2)
    return img, ref, halo(mask), math.hypot(x1 - x0, y1 - y0) + 1


def with_discs(centres, radius: int, colour, noise: float = 3.0, k: int = HALO) -> tuple[np.ndarray, ...]:
    """(image, reference without the discs, the map's region around them: the discs dilated by a k px kernel)."""
    ref = surface(noise=noise)
    img, mask = ref.copy(), np.zeros(ref.shape[:2], np.uint8)
    for c in centres:
        cv2.circle(img, c, radius, colour, -1)
        cv2.circle(mask, c, radius, 1, -1)
    return img, ref, halo(mask, k)


def descriptor(**kw) -> Descriptor:
    base = dict(area_px=400, length_px=40.0, width_px=10.0, elongation=4.0, form="elongated", orientation="horizontal",
                centroid=(0.5, 0.5), core_px=80, core_width_px=2.0, core_elongation=20.0, count=1, tone="darker",
                contrast=-20.0, chroma=1.0, colour="", edge="sharp", edge_px=1.5)
    return Descriptor(**{**base, **kw})


@pytest.mark.parametrize("orientation", list(LINES))
def test_thin_dark_line_is_long_oriented_darker_and_sharp(orientation):
    img, _, region, drawn = with_line(orientation)
    d = describe_region(img, region)
    assert d.form != "compact" and d.orientation == orientation
    assert d.tone == "darker" and d.contrast < -10 and d.colour == ""
    assert drawn <= d.length_px <= drawn + HALO + 4  # the region: the line plus the map's halo
    assert d.edge == "sharp" and d.count >= 1
    assert 0 < d.core_px < d.area_px


@pytest.mark.parametrize("orientation", list(LINES))
def test_line_against_its_reference_is_one_thin_line_of_the_drawn_length(orientation):
    img, ref, region, drawn = with_line(orientation)
    d = describe_region(img, region, reference=ref)
    assert d.form == "line" and d.orientation == orientation and d.count == 1
    assert d.core_width_px <= LINE_WIDTH
    assert d.core_elongation * d.core_width_px == pytest.approx(drawn, abs=6)
    assert d.tone == d.reference_tone == "darker"


def test_line_on_a_noisy_surface_is_one_thin_piece():
    for seed in range(8):
        img, _, region, _ = with_line("diagonal", seed)
        d = describe_region(img, region)
        assert (d.count, d.form) == (1, "line"), seed


def test_round_bright_blob_is_compact_brighter_without_orientation():
    img, ref, region = with_discs([(128, 128)], 12, BRIGHT)
    d = describe_region(img, region)
    assert d.form == "compact" and d.orientation == ""
    assert d.tone == "brighter" and d.contrast > 10 and d.edge == "sharp"
    assert d.length_px < 2 * d.width_px
    assert describe_region(img, region, reference=ref).count == 1


def test_red_stain_names_its_colour_and_a_grey_change_none():
    img, _, region = with_discs([(128, 128)], 15, (200, 40, 40))
    red = describe_region(img, region)
    assert red.colour == "red" and red.chroma > COLOUR_DELTA
    img, _, region = with_discs([(128, 128)], 15, (100, 100, 100))
    grey = describe_region(img, region)
    assert grey.colour == "" and grey.chroma <= COLOUR_DELTA and grey.tone == "darker"


def test_every_palette_colour_is_named_by_itself():
    for name, rgb in PALETTE.items():
        assert colour_name(to_lab(np.array([[rgb]], np.uint8))[0, 0]) == name


def test_reference_is_the_defect_free_estimate():
    img = surface()
    region = np.zeros(img.shape[:2], bool)
    region[100:140, 100:140] = True
    assert describe_region(img, region).reference_tone == ""
    darker_ref = np.clip(img.astype(int) - 40, 0, 255).astype(np.uint8)
    d = describe_region(img, region, reference=darker_ref)
    assert d.tone == d.reference_tone == "brighter"


def test_two_separate_blobs_in_one_region_count_two():
    img, ref, region = with_discs([(108, 128), (148, 128)], 6, (40, 40, 40), k=31)
    assert cv2.connectedComponents(region.astype(np.uint8))[0] - 1 == 1  # one region of the map
    assert describe_region(img, region, reference=ref).count == 2


def test_two_blobs_on_a_flat_surface_count_two_without_reference():
    img, _, region = with_discs([(108, 128), (148, 128)], 6, (40, 40, 40), noise=0.0, k=31)
    assert describe_region(img, region).count == 2


def test_lengths_are_reported_at_256_px():
    img, _, region, _ = with_line("horizontal")
    small = describe_region(img, region)
    big = cv2.resize(img, (512, 512), interpolation=cv2.INTER_NEAREST)
    d = describe_region(big, cv2.resize(region.astype(np.uint8), (512, 512), interpolation=cv2.INTER_NEAREST) > 0)
    assert d.length_px == pytest.approx(small.length_px, abs=1.5)
    assert d.area_px == pytest.approx(small.area_px, rel=0.02)
    assert d.centroid == pytest.approx(small.centroid, abs=0.01)


def test_rect_and_geometry_of_rectangles():
    m = np.zeros((100, 100), bool)
    m[20:30, 10:50] = True
    assert rect(m, 1.0) == pytest.approx((40.0, 10.0, 0.0))
    assert rect(m, 2.0) == pytest.approx((80.0, 20.0, 0.0))
    assert geometry(m, 1.0) == pytest.approx((40.0, 10.0, "elongated", "horizontal"))
    assert geometry(m.T.copy(), 1.0)[2:] == ("elongated", "vertical")
    sq = np.zeros((100, 100), bool)
    sq[10:30, 10:30] = True
    assert geometry(sq, 1.0) == pytest.approx((20.0, 20.0, "compact", ""))
    tilted = np.zeros((100, 100), np.uint8)
    cv2.fillPoly(tilted, [cv2.boxPoints(((50, 50), (60, 8), 45)).astype(np.int32)], 1)
    length, width, form, orient = geometry(tilted.astype(bool), 1.0)
    assert (form, orient) == ("elongated", "diagonal") and length == pytest.approx(61, abs=2)
    assert rect(tilted.astype(bool), 1.0)[2] == pytest.approx(45, abs=2)
    one = np.zeros((10, 10), bool)
    one[5, 5] = True
    assert rect(one, 1.0)[:2] == (1.0, 1.0)


def test_length_words():
    assert length_words(descriptor(form="line", length_px=40.4)) == "about 40 px long"
    assert length_words(descriptor(form="elongated", length_px=0.2)) == "about 1 px long"
    assert length_words(descriptor(form="compact", length_px=16.0, width_px=9.0)) == "about 12 px across"


def test_features_are_a_finite_vector_of_the_declared_length():
    img, _, region, _ = with_line("diagonal")
    for d in (describe_region(img, region), descriptor(), descriptor(area_px=0, core_px=0, count=0, elongation=0.5)):
        f = features(d)
        assert f.shape == (len(FEATURES),) and f.dtype == np.float32 and np.isfinite(f).all()
    assert features(descriptor(contrast=-20.0))[FEATURES.index("contrast")] == pytest.approx(-2.0)


def test_descriptor_to_dict_is_json():
    img, _, region, _ = with_line("horizontal")
    d = describe_region(img, region)
    d.type_probs = {"crack": np.float32(0.25)}
    out = json.loads(json.dumps(d.to_dict()))
    assert out["form"] == d.form and out["count"] == d.count and out["type_probs"] == {"crack": 0.25}
    assert out["length_px"] == round(d.length_px, 3) and len(out["centroid"]) == 2


def test_image_rgb_makes_three_channels_at_the_map_size():
    grey = np.full((64, 32), 7, np.uint8)
    out = image_rgb(grey, (32, 16))
    assert out.shape == (32, 16, 3) and out.dtype == np.uint8 and (out == 7).all()
    assert image_rgb(Image.new("RGBA", (20, 10), (1, 2, 3, 4)), (10, 20))[0, 0].tolist() == [1, 2, 3]


def flagged(region: np.ndarray) -> AnomalyResult:
    amap = region.astype(np.float32)
    return AnomalyResult(amap, 2.0, True, region.copy(), mask_boxes(region, amap), threshold=1.0, pixel_threshold=0.5)


def test_describe_sets_each_box_descriptor_and_leaves_empty_regions_unmeasured():
    img, _, region, _ = with_line("horizontal")
    res = flagged(region)
    res.boxes.append(Box(0, 0, 20, 20, 0.1, 0.0))  # nothing of the mask inside
    clf = TypeClassifier(threshold=0.0)
    describe(res, Image.fromarray(img).resize((512, 512)), classifier=clf)
    d = res.boxes[0].descriptor
    assert d is not None and d.orientation == "horizontal" and d.tone == "darker"
    assert d.defect_type in VOCABULARY and sum(d.type_probs.values()) == pytest.approx(1.0)
    assert res.boxes[1].descriptor is None
    assert res.to_dict()["boxes"][0]["descriptor"]["form"] == d.form


def test_describe_with_reference_sets_reference_tone():
    img, ref, region, _ = with_line("vertical")
    res = flagged(region)
    describe(res, img, reference=ref)
    d = res.boxes[0].descriptor
    assert d.reference_tone == "darker" and d.count == 1 and d.defect_type == ""


def test_carry_changes_keeps_the_descriptor_of_the_overlapping_box():
    old = [Box(10, 10, 30, 30, 2.0, 0.01)]
    old[0].descriptor = descriptor()
    new = [Box(5, 5, 32, 32, 1.5, 0.02), Box(60, 60, 70, 70, 1.1, 0.001)]
    carry_changes(old, new)
    assert new[0].descriptor is old[0].descriptor and new[1].descriptor is None


def test_relabelled_result_keeps_descriptors():
    img, _, region, _ = with_line("diagonal")
    amap = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 3)
    res = AnomalyResult(amap, float(amap.max()), True, amap > 0.5, mask_boxes(amap > 0.5, amap), threshold=0.5,
                        pixel_threshold=0.5)
    describe(res, img)
    moved = apply_sensitivity(res, 0.5)
    assert moved.pixel_threshold < res.pixel_threshold and len(moved.boxes) == 1
    assert moved.boxes[0].descriptor is res.boxes[0].descriptor is not None


def test_probabilities_cover_the_vocabulary_and_sum_to_one():
    probs = TypeClassifier().probabilities(descriptor())
    assert tuple(probs) == VOCABULARY
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5) and all(p > 0 for p in probs.values())


def test_name_abstains_below_the_threshold():
    d = descriptor()
    TypeClassifier(threshold=0.0).name(d)
    best = max(d.type_probs, key=d.type_probs.get)
    assert d.defect_type == best and d.type_confidence == d.type_probs[best]
    d = descriptor()
    TypeClassifier(threshold=1.01).name(d)
    assert d.defect_type == "" and d.type_confidence > 0 and set(d.type_probs) == set(VOCABULARY)


def test_save_and_load_round_trip(tmp_path):
    clf = TypeClassifier(threshold=0.6)
    clf.save(tmp_path, meta={"samples": 3})
    cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert cfg["features"] == list(FEATURES) and cfg["types"] == list(VOCABULARY) and cfg["samples"] == 3
    back = load_type_classifier(tmp_path)
    assert back.types == clf.types and back.threshold == pytest.approx(0.6)
    assert back.probabilities(descriptor()) == pytest.approx(clf.probabilities(descriptor()), abs=1e-7)


def test_load_refuses_other_features_naming_both(tmp_path):
    TypeClassifier().save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    cfg["features"] = ["log_area", "old_feature"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(TypeClassifierError) as err:
        load_type_classifier(tmp_path)
    assert str(list(FEATURES)) in str(err.value) and "old_feature" in str(err.value)


def test_load_without_weights_is_none_and_without_config_an_error(tmp_path):
    assert load_type_classifier(tmp_path / "absent") is None
    TypeClassifier().save(tmp_path)
    (tmp_path / CONFIG_NAME).unlink()
    with pytest.raises(TypeClassifierError, match=f"expected a JSON {CONFIG_NAME}"):
        load_type_classifier(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(TypeClassifierError):
        load_type_classifier(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    assert load_type_classifier(tmp_path) is None


def test_name_by_change():
    for change, kind in (("missing", "missing part"), ("extra", "foreign object")):
        d = descriptor()
        name_by_change(d, change)
        assert (d.defect_type, d.type_confidence, d.type_probs) == (kind, 1.0, {kind: 1.0})
    d = descriptor()
    name_by_change(d, "altered")
    assert (d.defect_type, d.type_probs) == ("", {})


def clusters(classes, per: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable (N, F) features: one Gaussian cluster per class index."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (len(classes), len(FEATURES)))
    x = np.concatenate([c + rng.normal(0, 0.3, (per, len(FEATURES))) for c in centres]).astype(np.float32)
    return x, np.repeat(np.asarray(classes), per)


@pytest.mark.parametrize("classes", [(0, 4, 8), (2, 6)], ids=["multiclass", "binary"])
def test_fit_probabilities_is_right_on_training_points(classes):
    x, y = clusters(classes)
    clf = fit_probabilities(x, y, VOCABULARY)
    with torch.no_grad():
        p = clf(torch.from_numpy(x)).numpy()
    assert (p.argmax(1) == y).all()
    assert p.sum(1) == pytest.approx(1.0, abs=1e-5)
    absent = [i for i in range(len(VOCABULARY)) if i not in classes]
    assert p[:, absent].max() < 1e-6


def test_fit_probabilities_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    for classes in ((1, 3, 5), (0, 7)):
        x, y = clusters(classes, seed=1)
        z = (x - x.mean(0)) / (x.std(0) + 1e-6)
        ref = LogisticRegression(max_iter=2000, class_weight="balanced").fit(z, y).predict_proba(z)
        with torch.no_grad():
            p = fit_probabilities(x, y, VOCABULARY)(torch.from_numpy(x)).numpy()
        assert p[:, list(classes)] == pytest.approx(ref, abs=1e-4)


def test_shipped_classifier_reads_this_version_features():
    folder = Path(assistant.__file__).parent / "checkpoints" / "offline-small"
    clf = load_type_classifier(folder)
    assert clf is not None and clf.types == VOCABULARY and 0 < clf.threshold < 1
    assert json.loads((folder / CONFIG_NAME).read_text())["features"] == list(FEATURES)
    if clf.tower_dims:  # trained on this checkpoint's tower: its levels' widths
        assert list(clf.tower_dims) == json.loads((folder / "expert_config.json").read_text())["level_dims"]
    d = descriptor()
    clf.name(d, np.zeros(sum(clf.tower_dims), np.float32) if clf.tower_dims else None)
    assert sum(d.type_probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert d.defect_type in ("", *VOCABULARY)


def test_measure_reads_a_large_image_at_the_reporting_side():
    from assistant.expert.describe import measure

    small = np.full((256, 256, 3), 150, np.uint8)
    cv2.line(small, (60, 128), (180, 128), (40, 40, 40), 2)
    region = np.zeros((256, 256), bool)
    region[118:139, 50:191] = True
    big = cv2.resize(small, (1024, 1024), interpolation=cv2.INTER_NEAREST)
    big_region = cv2.resize(region.astype(np.uint8), (1024, 1024), interpolation=cv2.INTER_NEAREST).astype(bool)
    a, b = measure(small, region), measure(big, big_region)
    assert a.form == b.form != "compact" and a.orientation == b.orientation == "horizontal"
    assert a.tone == b.tone == "darker"
    assert b.length_px == pytest.approx(a.length_px, abs=2) and b.area_px == pytest.approx(a.area_px, rel=0.05)
    thin = np.zeros((1024, 1024), bool)
    thin[500, 100:900] = True  # one pixel wide at 1024 px: a quarter pixel at 256, still a region
    assert measure(big, thin).area_px > 0
