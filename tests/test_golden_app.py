"""The app and `detect` show golden-template comparisons: the side-by-side panel (golden sample registered onto the
part, the part, their signed difference), the alignment sentence, the missing/extra words and legend; free-path
pictures stay as they were. Tiny models, 64 px generated boards (tests/test_golden.py) seen at the tiny tower's 32 px,
where a re-shot edge is a pixel of the part: the pairs are declared golden samples (`auto` at a real resolution is
pinned in tests/test_golden.py and tests/test_verdict_coverage.py)."""
import dataclasses
import hashlib
import json

import cv2
import numpy as np
import pytest
import torch

from assistant.app.evidence import COMPARISON_CAPTIONS, evidence_outputs
from assistant.chat import ChatSession
from assistant.cli import main
from assistant.expert import AnomalyResult, mask_boxes
from assistant.overlay import CHANGE_COLOURS, render_overlay
from assistant.wording import alignment_sentence, change_label, change_phrase
from tests.test_golden import board, shifted, to_pil

SIDE = 64  # generated boards; the app shows them enlarged to DISPLAY_MIN_SIDE (256), 4 display px per board px
SHIFT = (1.0, -1.0)  # the query board sits 1 px right and 1 px up of the golden sample


@pytest.fixture(scope="module")
def assistant(tiny_tokenizer_dir):
    from assistant.model import Assistant

    torch.manual_seed(0)  # the tiny tower's random weights: the same maps whichever test builds it first
    return Assistant.from_pretrained("tiny", device="cpu")


def _session(assistant, **defect) -> ChatSession:
    """A session on a shifted board with `defect` (missing=True / extra=True) against the intact board."""
    return ChatSession(assistant, to_pil(shifted(board(SIDE, **defect), *SHIFT)), [to_pil(board(SIDE))], golden=True)


def _mean_rgb(img: np.ndarray, x: int, y: int, r: int = 8) -> np.ndarray:
    """Mean colour of the (2r, 2r) window centred at display pixel (x, y)."""
    return img[y - r:y + r, x - r:x + r].reshape(-1, 3).astype(float).mean(0)


def _display(x: float, y: float) -> tuple[int, int]:
    """Board pixel of the golden sample -> display pixel of the query (shifted by SHIFT, enlarged 4x)."""
    return round((x + SHIFT[0]) * 4), round((y + SHIFT[1]) * 4)


def test_aligned_pair_shows_the_side_by_side_panel_and_the_missing_pad_in_blue(assistant):
    session = _session(assistant, missing=True)
    result = session.result
    assert result.alignment == "aligned" and result.registration.good
    assert result.boxes and result.boxes[0].change == "missing"
    overlay, _, badge, summary, comparison = evidence_outputs(session)
    assert comparison["visible"] is True and [c for _, c in comparison["value"]] == list(COMPARISON_CAPTIONS)
    golden, query, diff = (p for p, _ in comparison["value"])
    assert golden.shape == query.shape == diff.shape == overlay.shape == (256, 256, 3)
    # the golden sample warped into the part's frame lines up with it everywhere but at the missing pad
    gap = np.abs(golden.astype(float) - query.astype(float)).mean(-1)
    assert np.median(gap) < 5 and gap[120:136, 124:140].mean() > 100
    blue = _mean_rgb(diff, *_display(SIDE / 2, SIDE / 2))  # the pad at the centre is missing: blue
    assert blue[2] > blue[0] + 60, blue
    assert np.median(np.abs(diff[..., 0].astype(float) - diff[..., 2])) < 20  # grey where nothing changed
    assert "Compared position by position with the golden sample (registered: shift" in badge
    assert summary["alignment"] == "aligned" and summary["boxes"][0]["change"] == "missing"


def test_extra_blob_is_red_in_the_difference(assistant):
    session = _session(assistant, extra=True)
    assert session.result.alignment == "aligned"
    comparison = evidence_outputs(session)[4]
    diff = comparison["value"][2][0]
    red = _mean_rgb(diff, *_display(SIDE * 0.2, SIDE * 0.8))  # the dark blob on the substrate is extra material
    assert red[0] > red[2] + 60, red
    centre = _mean_rgb(diff, *_display(SIDE / 2, SIDE / 2))  # the pad is there: no colour
    assert abs(centre[0] - centre[2]) < 30, centre


def test_free_result_hides_the_panel_and_says_why(assistant):
    noise = cv2.GaussianBlur(np.random.default_rng(5).random((SIDE, SIDE)).astype(np.float32), (0, 0), 1.5)
    session = ChatSession(assistant, to_pil(noise), [to_pil(board(SIDE))])
    assert session.result.alignment == "free"  # an unrelated picture does not register onto the board
    _, _, badge, _, comparison = evidence_outputs(session)
    assert comparison["visible"] is False and comparison["value"] is None
    assert "Compared as a bag of patches: the reference did not register (" in badge
    assert evidence_outputs(None)[4]["visible"] is False


def test_wording_of_changes_and_alignment():
    assert change_phrase("missing") == "missing: material of the golden sample is absent here"
    assert change_phrase("extra") == "extra: material the golden sample does not have"
    assert change_phrase("") == "" and change_label("") == "" and change_label("missing") == "- missing"
    assert change_phrase("missing", "cut") == ("missing: material of the golden sample is absent here; cut: the "
                                               "material is cut through (PCB: open circuit)")
    reg = {"correlation": 0.93, "agreement": 0.9, "residual": 0.1, "shift": [1.21, 0.4], "rotation": 0.1,
           "scale": 1.0, "good": True, "reason": ""}
    assert alignment_sentence({"alignment": "aligned", "registration": reg}) == (
        "Compared position by position with the golden sample (registered: shift 1.2, 0.4 px, rotation 0.1 deg, "
        "correlation 0.93).")
    bad = {**reg, "good": False, "reason": "correlation 0.12 below 0.5"}
    assert alignment_sentence({"alignment": "free", "registration": bad}) == (
        "Compared as a bag of patches: the reference did not register (correlation 0.12 below 0.5).")
    assert alignment_sentence({"alignment": "", "registration": None}) is None


def _overlay_result(**kw) -> AnomalyResult:
    h, w = 40, 60
    amap = np.full((h, w), 0.2, np.float32)
    amap[5:15, 40:55] = 1.2
    amap[25:35, 5:12] = 1.0
    mask = amap > 0.8
    return AnomalyResult(amap, 1.5, True, mask, mask_boxes(mask, amap), 1.0, 0.8, **kw)


def test_free_path_overlay_is_unchanged_and_aligned_boxes_are_coloured_by_change():
    img = (np.indices((80, 120)).sum(0) % 256).astype(np.uint8)
    free = _overlay_result(alignment="free")
    # digests of these overlays drawn by render_overlay before the aligned legend existed (same OpenCV)
    pinned = ["dff9dfae8058d26ab24b4bdea49c49a4eadaa7f9a109dbc0d2a8269e3b62a96f",
              "b4c6f5e8dafadf99b4ddc962cb36643b6534499f09d50cfe575c3736a2b6d513"]
    assert [hashlib.sha256(render_overlay(img, free, caption=c).tobytes()).hexdigest() for c in (False, True)] == pinned
    boxes = [dataclasses.replace(b, change=c) for b, c in zip(free.boxes, ("missing", "extra"))]
    aligned = dataclasses.replace(free, alignment="aligned", boxes=boxes)
    out = render_overlay(img, aligned)
    colours = {tuple(int(v) for v in px) for px in out.reshape(-1, 3)}
    assert CHANGE_COLOURS["missing"] in colours and CHANGE_COLOURS["extra"] in colours
    assert CHANGE_COLOURS["altered"] not in colours  # the legend names only the changes present
    assert not np.array_equal(out[-20:, :40], render_overlay(img, free)[-20:, :40])  # legend at the bottom left


def test_detect_prints_the_alignment_and_each_regions_change(tmp_path, capsys):
    ref, query = tmp_path / "golden.png", tmp_path / "part.png"
    to_pil(board(SIDE)).save(ref)
    to_pil(shifted(board(SIDE, missing=True), *SHIFT)).save(query)
    rc = main(["detect", "--image", str(query), "--reference", str(ref), "--config", "tiny", "--golden",
               "--out", str(tmp_path / "det")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "alignment: aligned. Compared position by position with the golden sample (registered: shift" in printed
    assert "registration at 32x32 px: shift" in printed and "agreement" in printed
    res = json.loads((tmp_path / "det/result.json").read_text())
    assert res["alignment"] == "aligned" and res["registration"]["good"] and res["boxes"][0]["change"] == "missing"
    shape = res["boxes"][0].get("shape", "")
    assert f"region #1: {change_phrase('missing', shape)}; box x" in printed
    assert "\n  looks: " in printed and "descriptor" in res["boxes"][0]  # each region measured

