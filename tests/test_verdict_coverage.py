"""The aligned path only for golden samples (auto), what a user's `golden` says, and the coverage borderline."""
import cv2
import numpy as np
import pytest

from assistant.config import load_config
from assistant.expert import apply_sensitivity
from assistant.expert.golden import MAX_CHANGED
from assistant.vision.efficientnet import EfficientNetTower
from tests.test_golden import _expert, board, shifted, to_pil


@pytest.fixture(scope="module")
def tower():
    """A tiny random tower at 64 px (the golden tests' size)."""
    return EfficientNetTower(load_config("offline-small", ["vision.image_size=64", "vision.device=cpu"]).vision,
                             pretrained=False).eval()


def cell(seed: int, size: int = 64, defect: bool = False) -> np.ndarray:
    """A generated solar-cell-like part, grey in [0, 1]: the same frame (dark busbars at fixed places) on a grain
    of its own (`seed`): two seeds are two different parts shot in the same fixture. defect: a dark crack."""
    rng = np.random.default_rng(seed)
    grain = cv2.resize(rng.random((size // 4, size // 4)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_NEAREST)
    g = 0.25 + 0.7 * cv2.GaussianBlur(grain, (0, 0), 0.5)
    for x in (size // 4, size // 2, 3 * size // 4):
        g[:, x - 1:x + 2] = 0.05
    g[:2], g[-2:], g[:, :2], g[:, -2:] = 0.0, 0.0, 0.0, 0.0
    if defect:
        cv2.line(g, (8, 12), (40, 30), 0.02, 2)
    return g.astype(np.float32)


def _predict(expert, tower, refs, query):
    state = expert.fit_references(tower, refs, seed=0)
    return expert.predict(tower.encode([query]), state, (64, 64), images=[query], tower=tower)[0]


def test_auto_compares_freely_a_different_part_in_the_same_frame(tower):
    """Two cells in the same frame register (same busbars) but differ almost everywhere: auto takes the free path
    and says why; the same pair under `golden` (the user vouches) is compared position by position."""
    ref, query = to_pil(cell(1)), to_pil(cell(2, defect=True))
    res = _predict(_expert(tower, "auto"), tower, [ref], query)
    assert res.alignment == "free"
    assert "different part" in res.alignment_reason and "%" in res.alignment_reason
    vouched = _predict(_expert(tower, "golden"), tower, [ref], query)
    assert vouched.alignment == "aligned" and "golden sample" in vouched.alignment_reason


def test_auto_keeps_the_aligned_path_for_a_golden_sample(tower):
    """A golden pair differs only where the defect is: below MAX_CHANGED of the part, aligned, with the share said."""
    ref = to_pil(board(64))
    res = _predict(_expert(tower, "auto"), tower, [ref], to_pil(shifted(board(64, missing=True), 1.0, -1.0)))
    assert res.alignment == "aligned" and "same design" in res.alignment_reason
    share = int(res.alignment_reason.split("differs in ")[1].split("%")[0])
    assert share <= 100 * MAX_CHANGED


def test_references_that_differ_from_each_other_are_not_golden(tower):
    """Two good parts of the same frame that are different parts: auto compares freely, naming the references."""
    expert = _expert(tower, "auto")
    state = expert.fit_references(tower, [to_pil(cell(1)), to_pil(cell(3))], seed=0)
    assert "different parts" in state.golden.inconsistent
    query = to_pil(cell(1))
    res = expert.predict(tower.encode([query]), state, (64, 64), images=[query], tower=tower)[0]
    assert res.alignment == "free" and "not golden samples" in res.alignment_reason
    same = expert.fit_references(tower, [to_pil(board(64)), to_pil(shifted(board(64), 1.0, 0.0))], seed=0)
    assert same.golden.inconsistent == ""


def test_a_query_the_references_do_not_cover_is_borderline(tower):
    """Above the coverage limit the verdict is borderline (reason "coverage") whatever the score; the sensitivity
    slider keeps it, a lot (its own score distribution) lifts it; coverage_limit 0 turns the check off."""
    expert = _expert(tower, "free")
    ref, query = to_pil(cell(1)), to_pil(board(64, extra=True))
    assert _predict(expert, tower, [ref], query).coverage is None  # no fitted cut: nothing to measure against
    expert.reference_mismatch = 2.0
    res = _predict(expert, tower, [ref], query)
    assert res.coverage is not None and res.coverage == pytest.approx(res.reference_median / 2.0, rel=1e-3)
    expert.reference_mismatch = res.reference_median / 2  # the query lies twice beyond the cut
    res = _predict(expert, tower, [ref], query)
    assert res.coverage == pytest.approx(2.0, rel=1e-3)
    assert res.verdict == "borderline" and res.review_reason == "coverage"
    assert res.to_dict()["review_reason"] == "coverage"
    moved = apply_sensitivity(res, -1.0)
    assert moved.verdict == "borderline" and moved.review_reason == "coverage"
    lot = expert.lot_decide([res] * 6)
    assert all(r.review_reason != "coverage" for r in lot)
    expert.cfg.coverage_limit = 0.0
    off = _predict(expert, tower, [ref], query)
    assert off.review_reason != "coverage" and off.coverage == pytest.approx(2.0, rel=1e-3)


def test_a_covered_query_keeps_its_verdict(tower):
    expert = _expert(tower, "free")
    ref = to_pil(board(64))
    res = _predict(expert, tower, [ref], to_pil(shifted(board(64), 1.0, 0.0)))
    expert.reference_mismatch = res.reference_median * 2  # well within the cut
    res = _predict(expert, tower, [ref], to_pil(shifted(board(64), 1.0, 0.0)))
    assert res.coverage == pytest.approx(0.5, rel=1e-3) and res.review_reason != "coverage"
