"""Aligned-pair synthesis: determinism, exact masks, polarity, misregistration bounds, registration, build, wording
(tiny images, CPU)."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from assistant.expert.alignment import register
from assistant.wording import DEFECT_CHANGES, PCB_TYPES, TYPE_SHAPES, change_sentence, parse_change
from data_synth.__main__ import main as cli_main
from data_synth.aligned import KIND_TYPES, KINDS, AlignedConfig, golden_from_image, make_pair, render_golden
from data_synth.build import read_manifest
from data_synth.check import check

SIZE = 96


def _pair(kind: str, seed: int, anomalous: bool | None = None, size: int = SIZE, cfg=None):
    return make_pair(render_golden(kind, size, seed), np.random.default_rng(seed), cfg, anomalous=anomalous)


def _laid(pair) -> np.ndarray:
    """The golden laid over the query with the warp the query was made with, int16 (H, W, 3)."""
    h, w = pair.mask.shape
    g = cv2.warpAffine(np.asarray(pair.golden), pair.warp, (w, h), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return g.astype(np.int16)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_pair(kind):
    a, b = _pair(kind, 7), _pair(kind, 7)
    assert np.array_equal(np.asarray(a.golden), np.asarray(b.golden))
    assert np.array_equal(np.asarray(a.query), np.asarray(b.query))
    assert np.array_equal(a.mask, b.mask)
    assert (a.label, a.change, a.defect_type, a.shift, a.rotation) == (b.label, b.change, b.defect_type, b.shift,
                                                                        b.rotation)
    assert not np.array_equal(np.asarray(a.golden), np.asarray(_pair(kind, 8).golden))  # layouts vary per seed


@pytest.mark.parametrize("kind", KINDS)
def test_mask_is_nonempty_exactly_for_anomalous_pairs_and_lies_where_the_images_differ(kind):
    for seed in range(6):
        normal = _pair(kind, seed, anomalous=False)
        assert normal.label == 0 and normal.change == "" and normal.defect_type == ""
        assert normal.mask.shape == (SIZE, SIZE) and not normal.mask.any()
        p = _pair(kind, seed, anomalous=True)
        assert p.label == 1 and p.defect_type in KIND_TYPES[kind] and p.change == DEFECT_CHANGES[p.defect_type]
        assert p.mask.dtype == np.uint8 and set(np.unique(p.mask)) == {0, 255}
        m = p.mask > 0
        diff = np.abs(np.asarray(p.query).astype(np.int16) - _laid(p)).max(axis=2)
        far = cv2.dilate(p.mask, np.ones((7, 7), np.uint8)) == 0  # away from the defect: only relighting and noise
        assert (diff[m] > 24).mean() > 0.7, (kind, seed, p.defect_type)
        assert diff[m].mean() > 3 * diff[far].mean(), (kind, seed, p.defect_type)


@pytest.mark.parametrize("kind", KINDS)
def test_polarity_missing_moves_away_from_the_material_colour_and_extra_towards_it(kind):
    seen = set()
    for seed in range(12):
        p = _pair(kind, seed, anomalous=True)
        m = p.mask > 0
        ink = np.array(p.ink, np.int16)
        to_ink_query = np.abs(np.asarray(p.query).astype(np.int16)[m] - ink).sum(axis=1).mean()
        to_ink_golden = np.abs(_laid(p)[m] - ink).sum(axis=1).mean()
        if p.change == "missing":
            assert to_ink_query > to_ink_golden, (kind, seed, p.defect_type)
        else:
            assert p.change == "extra" and to_ink_query < to_ink_golden, (kind, seed, p.defect_type)
        seen.add(p.change)
    assert seen == {"missing", "extra"}


def test_board_types_follow_the_pcb_vocabulary():
    types = {_pair("board", seed, anomalous=True).defect_type for seed in range(40)}
    assert types == set(PCB_TYPES)
    assert {t for t, c in PCB_TYPES.items() if c == "missing"} == {"open", "mousebite", "pin_hole"}


def test_misregistration_stays_within_bounds():
    cfg = AlignedConfig(max_shift=2.0, max_rotation=0.5)
    for seed in range(20):
        for c, (shift, rot) in ((None, (3.0, 1.0)), (cfg, (2.0, 0.5))):
            p = _pair(KINDS[seed % 3], seed, size=64, cfg=c)
            assert max(abs(p.shift[0]), abs(p.shift[1])) <= shift and abs(p.rotation) <= rot
            # the warp is the rotation about the centre plus the shift
            expect = cv2.getRotationMatrix2D((31.5, 31.5), p.rotation, 1.0)
            expect[:, 2] += p.shift
            assert np.allclose(p.warp, expect, atol=1e-4)


def test_registration_recovers_the_synthetic_warp_on_a_board_pair():
    side = 128
    pts = np.array([[x, y, 1.0] for x in (16, 64, 112) for y in (16, 64, 112)])
    for seed in range(3):
        p = _pair("board", seed, size=side)
        reg = register(p.query, p.golden, side=side)
        assert reg.good, reg.reason
        truth = cv2.invertAffineTransform(p.warp.astype(np.float64))  # query pixel -> golden pixel
        err = np.abs(pts @ reg.warp.astype(np.float64).T - pts @ truth.T).max()
        assert err < 1.0, (seed, err)


def test_user_golden_image_gives_pairs():
    img = Image.fromarray(render_golden("board", SIZE, 3).image)
    g = golden_from_image(img)
    assert np.array_equal(g.image, np.asarray(img))
    p = make_pair(img, np.random.default_rng(0), anomalous=True)  # a PIL golden is split into layers itself
    assert p.mask.any() and np.array_equal(np.asarray(p.golden), np.asarray(img))


def test_build_aligned_writes_a_manifest_read_manifest_loads(tmp_path):
    out = tmp_path / "aligned"
    assert cli_main(["build", "--source", "aligned", "--out", str(out), "--n", "8", "--seed", "2", "--size", "64",
                     "--quiet"]) == 0
    recs = read_manifest(out)
    assert len(recs) == 8 and {r["label"] for r in recs} == {0, 1}
    for r in recs:
        assert r["aligned"] is True and r["method"] == "aligned" and r["source"] == "aligned"
        assert len(r["references"]) == 1 and Path(r["references"][0]).is_file() and Path(r["image"]).is_file()
        if r["label"]:
            assert r["change"] == DEFECT_CHANGES[r["defect_type"]] and Path(r["mask"]).is_file()
            assert r["position"] and r["size"] and r["area_fraction"] > 0
        else:
            assert r["change"] == "" and r["defect_type"] is None and r["mask"] is None
    assert all(v == 1.0 for v in check(out)["agreement"].values())  # texts agree with the masks
    convs = {c["id"]: c for c in json.loads((out / "conversations.json").read_text())}
    for r in recs:
        conv = convs[r["id"]]
        assert conv["references"] == [f"goldens/{r['id']}.png"]  # the golden is always shown
        compare = [t["value"] for t in conv["conversations"] if t["value"].startswith("Compared with the golden")]
        if r["label"]:
            assert compare and all(parse_change(a) == r["change"] for a in compare)
    # with lvlm.evidence_changes the training evidence also says the change (and a PCB type's shape)
    from training.lvlm.data import load_samples

    plain = {s.id: s.evidence for s in load_samples(out, 1)}
    said = {s.id: s.evidence for s in load_samples(out, 1, changes=True)}
    for r in recs:
        if r["label"]:
            shape = TYPE_SHAPES.get(r["defect_type"])
            want = f"golden sample: {r['change']}" + (f" ({shape})" if shape else "") + "."
            assert said[r["id"]].endswith(want) and "golden sample" not in plain[r["id"]]
        else:
            assert said[r["id"]] == plain[r["id"]] == "Expert evidence: no suspicious features."


def test_change_sentence_states_the_polarity():
    s = change_sentence("missing", "copper", "top left", "open")
    assert s == "Compared with the golden sample, copper is missing in the top left: the trace is cut."
    assert parse_change(s) == "missing"
    e = change_sentence("extra", "copper", "bottom", "short")
    assert "extra copper" in e and "short between two traces" in e and parse_change(e) == "extra"
    assert parse_change("Nothing is missing, but there is extra print on the left.") == "extra"
    assert parse_change("No, nothing is missing or extra: it matches the golden sample.") is None
    assert change_sentence("altered", "print", None) == "Compared with the golden sample, the print is altered."
