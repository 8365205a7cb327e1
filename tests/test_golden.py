"""Golden-template inspection on generated images: registration, polarity of missing/extra material, auto fallback."""
import cv2
import numpy as np
import pytest
from PIL import Image

from assistant.config import ConfigError, load_config
from assistant.expert import AnomalyExpert
from assistant.expert.alignment import register, warp_image
from assistant.expert.golden import parts, prepare_template
from assistant.expert.golden_compare import polarity
from assistant.expert.result import Box
from assistant.vision.efficientnet import EfficientNetTower


def board(size: int = 128, seed: int = 0, missing: bool = False, extra: bool = False) -> np.ndarray:
    """A generated circuit board, grey in [0, 1]: dark tracks and pads (material, the minority) on a bright
    substrate. missing: the pad at the centre is gone; extra: a dark blob appears on the substrate."""
    rng = np.random.default_rng(seed)
    g = np.full((size, size), 0.9, np.float32)
    s = size / 128
    for _ in range(7):
        x0, y0 = (int(v) for v in rng.integers(4, size - 4, 2))
        x1, y1 = (int(v) for v in rng.integers(4, size - 4, 2))
        cv2.line(g, (x0, y0), (x1, y0), 0.1, max(2, int(3 * s)))
        cv2.line(g, (x1, y0), (x1, y1), 0.1, max(2, int(3 * s)))
        cv2.circle(g, (x0, y0), int(5 * s), 0.1, -1)
    c = size // 2
    cv2.circle(g, (c, c), int(9 * s), 0.1, -1)  # the pad a "missing" board lacks
    if missing:
        cv2.circle(g, (c, c), int(9 * s), 0.9, -1)
    if extra:
        cv2.circle(g, (int(size * 0.2), int(size * 0.8)), int(8 * s), 0.1, -1)
    return g


def shifted(img: np.ndarray, dx: float, dy: float, angle: float = 0.0) -> np.ndarray:
    """img moved by (dx, dy) pixels and rotated by `angle` degrees about its centre (content moves)."""
    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    m[:, 2] += (dx, dy)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def to_pil(g: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.stack([g] * 3, -1) * 255, 0, 255).astype(np.uint8))


def test_registration_recovers_a_known_shift():
    ref = board(128)
    query = shifted(ref, 6.0, -4.0)  # the part sits 6 px right, 4 px up in the query
    reg = register(query, ref, side=128)
    assert reg.good, reg.reason
    # the warp maps query pixels to reference pixels: query(x) = ref(x - shift)
    assert reg.shift == pytest.approx((-6.0, 4.0), abs=0.5)
    assert abs(reg.rotation) < 0.5 and reg.scale == pytest.approx(1.0, abs=0.02)
    warped, inside = warp_image(ref, reg.warp)
    assert np.abs(warped - query)[inside][10:-10].mean() < 0.02
    assert reg.correlation > 0.95 and reg.residual < 0.2


def test_registration_recovers_a_small_rotation():
    ref = board(128, seed=1)
    query = shifted(ref, 2.0, 1.0, angle=3.0)
    reg = register(query, ref, side=128)
    assert reg.good, reg.reason
    assert abs(reg.rotation) == pytest.approx(3.0, abs=0.5)
    warped, inside = warp_image(ref, reg.warp)
    assert np.abs(warped - query)[inside].mean() < 0.03


def test_unrelated_images_do_not_register():
    rng = np.random.default_rng(3)
    noise = cv2.GaussianBlur(rng.random((128, 128)).astype(np.float32), (0, 0), 2.0)
    reg = register(noise, board(128), side=128)
    assert not reg.good and reg.reason
    assert reg.to_dict()["good"] is False


def _polarity_of(query: np.ndarray, ref: np.ndarray) -> tuple[str, np.ndarray]:
    """(polarity of the region where the query differs most, the |difference| map) with no tower: the pixel parts
    only (feature maps are not needed for polarity)."""
    from assistant.expert.golden import GoldenState

    side = ref.shape[0]
    tpl = prepare_template(to_pil(ref), [], [], side, "auto")
    state = GoldenState(templates=[tpl], grids=[], grid=(side // 16, side // 16), feature_scales=[])

    class _Cfg:
        align_window = 1

    class _Expert:
        cfg = _Cfg()

    p = parts(_Expert(), state.templates, 0, query, [], register(query, ref, side=side), [], state.grid, None)
    ys, xs = np.nonzero(np.abs(p.signed) > 0.3)
    box = Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, 1.0, 0.01)
    return polarity(state, p, box, (side, side)), np.abs(p.signed)


def test_polarity_of_missing_and_extra_material():
    ref = board(128)
    assert not prepare_template(to_pil(ref), [], [], 128, "auto").material_bright  # dark tracks: the minority
    change, diff = _polarity_of(shifted(board(128, missing=True), 3.0, 2.0), ref)
    assert change == "missing"
    assert diff[60:72, 62:74].max() > 0.5  # the pad's place (centre, moved by the shift) differs
    change, _ = _polarity_of(shifted(board(128, extra=True), -2.0, 3.0), ref)
    assert change == "extra"
    # the material preset overrides the minority rule: with bright material the same changes swap names
    assert prepare_template(to_pil(ref), [], [], 128, "bright").material_bright


@pytest.fixture(scope="module")
def tower():
    cfg = load_config("offline-small", ["vision.image_size=64", "vision.device=cpu"])
    return EfficientNetTower(cfg.vision, pretrained=False).eval()


def _expert(tower, alignment: str) -> AnomalyExpert:
    cfg = load_config("offline-small", ["expert.smoothing_sigma=1.0", "expert.calibration_synth=2",
                                        f"expert.alignment={alignment}"]).expert
    cfg.checkpoint = None
    return AnomalyExpert(cfg, tower.level_dims, tower.global_dim)


def test_auto_uses_the_aligned_path_and_names_the_missing_pad(tower):
    expert = _expert(tower, "auto")
    ref = to_pil(board(64))
    state = expert.fit_references(tower, [ref], seed=0)
    assert state.golden is not None and state.golden.threshold >= 1.0
    query = to_pil(shifted(board(64, missing=True), 1.0, -1.0))
    res = expert.predict(tower.encode([query]), state, (64, 64), images=[query], tower=tower)[0]
    assert res.alignment == "aligned" and res.registration is not None and res.registration.good
    assert res.pred_label and res.boxes
    assert res.boxes[0].change == "missing"
    assert res.boxes[0].shape == "cut"  # the centre pad joined two tracks: without it they fall apart
    d = res.to_dict()
    assert d["alignment"] == "aligned" and d["registration"]["good"] and d["boxes"][0]["change"] == "missing"
    assert d["boxes"][0]["shape"] == "cut"


def test_auto_falls_back_to_free_on_unrelated_images(tower):
    expert = _expert(tower, "auto")
    rng = np.random.default_rng(5)
    ref = to_pil(board(64))
    state = expert.fit_references(tower, [ref], seed=0)
    query = to_pil(cv2.GaussianBlur(rng.random((64, 64)).astype(np.float32), (0, 0), 1.5))
    out = tower.encode([query])
    res = expert.predict(out, state, (64, 64), images=[query], tower=tower)[0]
    assert res.alignment == "free" and res.registration is not None and not res.registration.good
    free = _expert(tower, "free")
    free_state = free.fit_references(tower, [ref], seed=0)
    assert free_state.golden is None
    same = free.predict(out, free_state, (64, 64), images=[query], tower=tower)[0]
    assert same.alignment == "free" and same.registration is None
    assert res.pred_score == pytest.approx(same.pred_score) and res.threshold == pytest.approx(same.threshold)
    # without the query image auto cannot register: the free path, said so
    assert expert.predict(out, state, (64, 64))[0].alignment == "free"


def test_aligned_mode_needs_the_query_image(tower):
    expert = _expert(tower, "aligned")
    state = expert.fit_references(tower, [to_pil(board(64))], seed=0)
    with pytest.raises(ValueError, match="expected predict\\(..., images=<1 query image\\(s\\)>\\), got None"):
        expert.predict(tower.encode([to_pil(board(64))]), state, (64, 64))


@pytest.mark.parametrize("override, message", [
    ("expert.alignment=sometimes",
     r"'expert.alignment': expected one of 'auto', 'golden', 'aligned', 'free', got 'sometimes'"),
    ("expert.material=shiny", r"'expert.material': expected one of 'auto', 'dark', 'bright', got 'shiny'"),
    ("expert.align_window=-1", r"'expert.align_window': expected cells >= 0, got -1"),
])
def test_alignment_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("offline-small", [override])


def test_two_references_the_one_that_registers_is_used(tower):
    """Under `golden` the reference that registers is compared; under `auto` two references that do not agree with
    each other are no golden samples of one design: the free path, said why."""
    rng = np.random.default_rng(7)
    unrelated = to_pil(cv2.GaussianBlur(rng.random((64, 64)).astype(np.float32), (0, 0), 1.5))
    query = to_pil(shifted(board(64, extra=True), -1.0, 1.0))
    for mode in ("golden", "auto"):
        expert = _expert(tower, mode)
        state = expert.fit_references(tower, [unrelated, to_pil(board(64))], seed=0)
        assert len(state.golden.templates) == 2 and len(state.golden.calibration["null_scores"]) >= 2
        res = expert.predict(tower.encode([query]), state, (64, 64), images=[query], tower=tower)[0]
        if mode == "golden":
            assert res.alignment == "aligned" and res.registration.good
            assert res.pred_label and res.boxes[0].change == "extra"
        else:
            assert res.alignment == "free" and "not golden samples" in res.alignment_reason


def test_relabel_keeps_the_polarity_of_overlapping_regions():
    from assistant.expert.postprocess import carry_changes

    old = [Box(10, 10, 30, 30, 2.0, 0.01, change="missing"), Box(40, 40, 50, 50, 2.0, 0.01, change="extra")]
    new = [Box(5, 5, 32, 32, 1.5, 0.02), Box(38, 42, 60, 60, 1.5, 0.02), Box(0, 50, 4, 60, 1.1, 0.001)]
    old[0].shape = "hole"
    carry_changes(old, new)
    assert [b.change for b in new] == ["missing", "extra", ""]
    assert [b.shape for b in new] == ["hole", "", ""]
