"""data_synth: determinism, faithful masks, truthful texts, formats, resume and bad inputs (tiny, CPU)."""
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from assistant.imaging import ImageError
from assistant.wording import position_word
from data_synth import METHODS, SynthConfig, SynthError, foreground_mask, synthesize, synthesize_many
from data_synth.__main__ import main as cli_main
from data_synth.build import BuildSettings, build, read_manifest
from data_synth.sources import KINDS, FolderSource, GimpSource, ProceduralSource, read_pat, write_pat

GRID_RE = re.compile(r"\b(top left|top right|bottom left|bottom right|top|bottom|left|right|center)\b")
SIZE = 64


@pytest.fixture(scope="module")
def images():
    src = ProceduralSource(products_per_kind=1)
    cats = {c.key.split("/")[1].rsplit("-", 1)[0]: c for c in src.categories()}
    gen = np.random.default_rng(0)
    return {k: (src.sample(c, gen, SIZE), src.sample(c, gen, SIZE), c.is_object) for k, c in cats.items()}


def test_procedural_kinds_render_and_objects_are_found(images):
    assert set(images) == set(KINDS)
    for kind, (img, _, is_obj) in images.items():
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        assert img.std() > 3, kind  # not a blank canvas
        fg, auto = foreground_mask(img)
        assert auto == is_obj, f"{kind}: foreground detection says object={auto}"
        if is_obj:
            assert 0.03 < fg.mean() < 0.85


@pytest.mark.parametrize("method", METHODS)
def test_synthesize_is_deterministic_faithful_and_local(images, method):
    cfg = SynthConfig()
    for kind in ("gear", "woven", "screw"):
        img, other, is_obj = images[kind]
        a = synthesize(img, method, np.random.default_rng(3), other=other, is_object=is_obj)
        b = synthesize(img, method, np.random.default_rng(3), other=other, is_object=is_obj)
        assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
        assert a.mask.dtype == bool and a.mask.shape == img.shape[:2] and a.mask.any()
        assert cfg.min_area <= a.mask.mean() <= cfg.max_area, (kind, a.meta)
        # pixels farther than the feather (<= 3 px) from the mask are untouched
        near = cv2.dilate(a.mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        assert np.array_equal(a.image[~near], img[~near]), (kind, method)
        # the defect is visible inside the mask
        assert np.abs(a.image.astype(int) - img.astype(int)).max(axis=2)[a.mask].mean() > 5
        ys, xs = np.nonzero(a.mask)
        assert a.meta["position"] == position_word(ys.mean() / SIZE, xs.mean() / SIZE)
        assert a.meta["area_fraction"] == pytest.approx(a.mask.mean(), abs=1e-6)
        if is_obj and method not in ("warp",):  # defects land on the part (a bent part may move off it)
            fg, _ = foreground_mask(img)
            fg = cv2.dilate(fg.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            assert (a.mask & fg).sum() >= 0.9 * a.mask.sum(), (kind, method)


def test_synthesize_bad_inputs(images):
    img = images["gear"][0]
    with pytest.raises(SynthError, match="unknown synthesis method 'bogus'"):
        synthesize(img, "bogus", np.random.default_rng(0))
    with pytest.raises(SynthError, match=r"\(H, W, 3\) uint8"):
        synthesize(img.astype(np.float32), "nsa", np.random.default_rng(0))
    with pytest.raises(SynthError, match="Generator"):
        synthesize(img, "nsa", 0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    s = BuildSettings(seed=0, size=SIZE, n_refs=2)
    summary = build([ProceduralSource(products_per_kind=1)], out, 24, s, progress=False)
    return out, summary


def test_build_formats_and_truthful_texts(built):
    out, summary = built
    assert summary["samples"] == 24 and 0 < summary["anomalous"] < 24
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    convs = json.loads((out / "conversations.json").read_text())
    assert [r["id"] for r in recs] == [c["id"] for c in convs] == sorted({r["id"] for r in recs})
    for r, c in zip(recs, convs):
        for key in ("id", "image", "mask", "label", "source", "method", "defect_type", "bbox", "area_fraction",
                    "n_components", "position", "size", "severity", "description", "references"):
            assert key in r
        assert (out / r["image"]).exists() and all((out / p).exists() for p in r["references"])
        assert set(c["references"]) <= set(r["references"])
        turns = c["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) >= 4
        assert turns[0]["value"].startswith("<image>\n")
        answers = [t["value"] for t in turns[1::2]]
        if r["label"] == 0:
            assert r["mask"] is None and answers[0].startswith("No, the object looks normal")
            continue
        assert answers[0].startswith("Yes, there is an anomaly")
        mask = cv2.imread(str(out / r["mask"]), cv2.IMREAD_GRAYSCALE) > 0
        ys, xs = np.nonzero(mask)
        word = position_word(ys.mean() / mask.shape[0], xs.mean() / mask.shape[1])
        assert r["position"] == word
        assert r["area_fraction"] == pytest.approx(mask.mean(), abs=1e-6)
        x0, y0, x1, y1 = r["bbox"]
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        for text in answers + [r["description"]]:
            found = set(GRID_RE.findall(text))
            assert not found or found == {word}, (text, word)
        assert word in answers[0]


def test_build_is_deterministic_and_resumes_without_duplicates(built, tmp_path):
    out, _ = built
    s = BuildSettings(seed=0, size=SIZE, n_refs=2)
    # interrupted build: 10 samples, then a torn line, then resume to 24
    build([ProceduralSource(products_per_kind=1)], tmp_path, 10, s, progress=False)
    with open(tmp_path / "manifest.jsonl", "a") as fh:
        fh.write('{"id": "0000010", "ima')
    build([ProceduralSource(products_per_kind=1)], tmp_path, 24, s, progress=False, workers=2)
    assert (tmp_path / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    assert (tmp_path / "conversations.json").read_bytes() == (out / "conversations.json").read_bytes()
    for p in sorted((out / "images").iterdir())[:6]:
        assert (tmp_path / "images" / p.name).read_bytes() == p.read_bytes()
    recs = read_manifest(tmp_path)
    assert len(recs) == 24 and all(Path(r["image"]).is_file() for r in recs)
    assert all(Path(r["mask"]).is_file() for r in recs if r["label"] == 1)
    with pytest.raises(FileNotFoundError, match="manifest.jsonl"):
        read_manifest(tmp_path / "images")
    with pytest.raises(SynthError, match="other settings"):
        build([ProceduralSource(products_per_kind=1)], tmp_path, 4, BuildSettings(seed=1, size=SIZE, n_refs=2),
              progress=False)


def test_build_bad_inputs(tmp_path):
    src = [ProceduralSource(products_per_kind=1)]
    for n in (0, -3):
        with pytest.raises(SynthError, match="positive number of samples"):
            build(src, tmp_path / "o", n, BuildSettings(size=SIZE), progress=False)
    with pytest.raises(SynthError, match="unknown method"):
        build(src, tmp_path / "o", 2, BuildSettings(size=SIZE, methods=("nsa", "laser")), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SynthError, match="found none"):
        FolderSource([tmp_path / "empty"])
    with pytest.raises(ImageError, match="not exist"):
        FolderSource([tmp_path / "missing"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ImageError, match="broken.png"):
        build([FolderSource([bad])], tmp_path / "o2", 2, BuildSettings(size=SIZE), progress=False)
    # the CLI turns these into one clear line and exit status 2
    assert cli_main(["build", "--source", "procedural", "--out", str(tmp_path / "o3"), "--n", "0"]) == 2
    assert cli_main(["build", "--normal", str(tmp_path / "empty"), "--out", str(tmp_path / "o4"), "--n", "2"]) == 2
    assert cli_main(["build", "--source", "nope", "--out", str(tmp_path / "o5"), "--n", "2"]) == 2
    assert cli_main(["build", "--source", "procedural", "--out", str(tmp_path / "o6"), "--n", "2",
                     "--methods", "nsa,zap"]) == 2
    assert cli_main(["build", "--source", "procedural", "--out", str(tmp_path / "o7"), "--n", "2",
                     "--synth", "max_aera=0.2"]) == 2
    assert not (tmp_path / "o6" / "manifest.jsonl").exists()


def test_folder_source_builds(tmp_path):
    d = tmp_path / "hazelnut" / "train" / "good"
    d.mkdir(parents=True)
    gen = np.random.default_rng(0)
    for i in range(3):
        img = np.full((80, 96, 3), 30, np.uint8)
        cv2.circle(img, (48, 40), 25, tuple(int(v) for v in gen.integers(120, 255, 3)), -1)
        cv2.imwrite(str(d / f"{i}.png"), img)
    src = FolderSource([d])
    assert src.categories()[0].noun == "hazelnut"
    summary = build([src], tmp_path / "o", 6, BuildSettings(size=SIZE, n_refs=1), progress=False)
    assert summary["samples"] == 6


def test_gimp_pat_reader_round_trip(tmp_path):
    gen = np.random.default_rng(0)
    rgb = gen.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    write_pat(tmp_path / "a.pat", rgb, "Rough Cloth")
    arr, name = read_pat(tmp_path / "a.pat")
    assert name == "Rough Cloth" and np.array_equal(arr, rgb)
    gray = gen.integers(0, 256, (9, 7), dtype=np.uint8)
    write_pat(tmp_path / "g.pat", gray, "gray")
    arr, _ = read_pat(tmp_path / "g.pat")
    assert arr.shape == (9, 7, 3) and np.array_equal(arr[..., 0], gray)
    rgba = np.dstack([rgb, np.full((12, 20), 255, np.uint8)])
    write_pat(tmp_path / "c.pat", rgba, "alpha")
    assert np.array_equal(read_pat(tmp_path / "c.pat")[0], rgb)
    src = GimpSource([tmp_path])
    assert len(src.categories()) == 3 and src.categories()[0].noun == "rough cloth pattern"
    tile = src.sample(src.categories()[0], np.random.default_rng(0), SIZE)
    assert tile.shape == (SIZE, SIZE, 3)
    data = (tmp_path / "a.pat").read_bytes()
    with pytest.raises(ImageError, match="GPAT"):
        read_pat(data[:20] + b"XXXX" + data[24:])
    with pytest.raises(ImageError, match="truncated"):
        read_pat(data[:-10])
    with pytest.raises(SynthError, match="gimp-data"):
        GimpSource([tmp_path / "nothing"])


def test_preview_and_check(built, tmp_path):
    from data_synth.check import check
    from data_synth.preview import preview
    out, _ = built
    mosaic = preview(out, "4x3", tile=48)
    assert mosaic.shape == (3 * (48 + 16), 4 * 48, 3)
    rep = check(out)
    assert all(v == 1.0 for v in rep["agreement"].values()), rep
    assert cli_main(["preview", str(out), "--grid", "2x2", "--tile", "32", "-o", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
    assert cli_main(["preview", str(out), "--grid", "axb"]) == 2


def test_synthesize_many_for_calibration(images):
    refs = [images["washer"][0], images["washer"][1]]
    res = synthesize_many(refs, 5, np.random.default_rng(0), methods=["nsa", "scratch", "stain"])
    assert len(res) == 5 and all(r.mask.any() for r in res)
    assert {r.meta["requested"] for r in res} <= {"nsa", "scratch", "stain"}
    with pytest.raises(SynthError, match="at least one normal"):
        synthesize_many([], 2, np.random.default_rng(0))
    with pytest.raises(SynthError, match="positive"):
        synthesize_many(refs, 0, np.random.default_rng(0))
    with pytest.raises(SynthError, match="unknown"):
        synthesize_many(refs, 1, np.random.default_rng(0), methods=["zap"])


@pytest.mark.parametrize("shape,value", [((32, 32, 3), 128), ((24, 90, 3), 0), ((16, 16, 3), None)])
def test_synthesize_degenerate_images_still_give_a_mask(shape, value):
    gen = np.random.default_rng(0)
    img = np.full(shape, value, np.uint8) if value is not None else gen.integers(0, 256, shape, dtype=np.uint8)
    for m in METHODS:
        r = synthesize(img, m, np.random.default_rng(1))
        assert r.mask.any() and r.image.shape == img.shape and r.image.dtype == np.uint8, m
        assert r.meta["position"] is not None and r.meta["bbox"] is not None


def test_detect_questions_all_ask_whether_something_is_wrong():
    """DETECT_Q answers are "Yes, there is an anomaly: ..." / "No, the object looks normal.": a question asking
    whether the part is fine ("Is this part OK?") would teach the inverted answer; those live in ACCEPT_Q."""
    from data_synth.conversations import ACCEPT_Q, DETECT_Q, DETECT_REF_Q

    positive = ("ok?", "good?", "look normal", "fine?", "acceptable")
    assert not [q for q in DETECT_Q + DETECT_REF_Q if any(p in q.lower() for p in positive)]
    assert {"Is this part OK?", "Does this {noun} look normal?", "Is this part good?"} <= set(ACCEPT_Q)


def test_accept_reject_questions_come_in_both_polarities():
    """Accept-style (yes = normal) and reject-style (yes = anomalous) questions are near balanced, so the answers'
    wording cannot lean on how questions are usually asked."""
    from data_synth.conversations import ACCEPT_Q, REJECT_Q

    assert not set(ACCEPT_Q) & set(REJECT_Q)
    assert abs(len(ACCEPT_Q) - len(REJECT_Q)) <= 1, (ACCEPT_Q, REJECT_Q)


def test_conversation_accept_reject_answers_and_noun():
    """Accept/reject questions of either polarity get the verdict and a recommendation, no leading yes/no (its
    truth would depend on the question's wording); the noun appears only after a question named it."""
    from data_synth.conversations import SHIP_Q, make_conversation

    base = {"id": "0", "image": "q.png", "defect_type": "scratch", "position": "top left", "size": "small",
            "area_fraction": 0.01, "severity": "minor", "n_components": 1}
    seen = set()
    for label in (0, 1):
        for seed in range(200):
            c = make_conversation(dict(base, label=label), "washer", ["r.png"], np.random.default_rng(seed))
            named = False
            for q, a in zip(c["conversations"][0::2], c["conversations"][1::2]):
                q, a = q["value"].split("\n")[-1], a["value"]
                named = named or "washer" in q
                assert named or "washer" not in a, (q, a)
                for ship_q in SHIP_Q:
                    if q == ship_q.format(noun="washer"):
                        assert not a.lower().startswith(("yes", "no")), (q, a)
                        if label:
                            assert "reject" in a and "minor scratch" in a and "accept" not in a, (q, a)
                        else:
                            assert "accept" in a and "looks normal" in a and "reject" not in a, (q, a)
                        seen.add((ship_q, label))
    assert len(seen) == 2 * len(SHIP_Q)


def test_synthesize_multi_gives_separate_regions_and_truthful_counts(images, tmp_path):
    """2-3 defects kept apart: the union mask has at least as many regions as defects kept; a build with
    --multi-ratio writes those counts, and its texts state them (check recomputes from the masks)."""
    from data_synth.synth import synthesize_multi

    img = images["woven"][0]
    kept = []
    for seed in range(6):
        res = synthesize_multi(img, ["stain", "hole", "scratch"], 3, np.random.default_rng(seed))
        n, _ = cv2.connectedComponents(res.mask.astype(np.uint8), connectivity=8)
        assert 1 <= res.meta["n_defects"] <= 3 and n - 1 >= res.meta["n_defects"]
        assert res.meta["n_components"] == n - 1 and res.meta["area_fraction"] == pytest.approx(
            res.mask.mean(), abs=1e-5
        )
        kept.append(res.meta["n_defects"])
    assert max(kept) >= 2
    with pytest.raises(SynthError, match="n >= 1"):
        synthesize_multi(img, ["stain"], 0, np.random.default_rng(0))
    s = BuildSettings(seed=0, size=SIZE, n_refs=1, multi_ratio=1.0, anomaly_ratio=1.0)
    build([ProceduralSource(products_per_kind=1)], tmp_path, 8, s, progress=False)
    recs = read_manifest(tmp_path)
    assert json.loads((tmp_path / "build.json").read_text())["settings"]["multi_ratio"] == 1.0
    assert sum(r["n_components"] >= 2 for r in recs) >= 4
    convs = json.loads((tmp_path / "conversations.json").read_text())
    for r, c in zip(recs, convs):
        for q, a in zip(c["conversations"][::2], c["conversations"][1::2]):
            if "how many" in q["value"].lower():
                n = r["n_components"]
                assert a["value"] == (
                    "There is one defective region." if n == 1 else f"There are {n} defective regions."
                )
    assert cli_main(["check", str(tmp_path)]) == 0
    with pytest.raises(SynthError, match="--multi-ratio"):
        build(
            [ProceduralSource(products_per_kind=1)], tmp_path / "x", 2, BuildSettings(multi_ratio=2.0), progress=False
        )


def test_opener_ratio_rewrites_only_the_conversations(built, tmp_path):
    """--opener-ratio: some conversations open with a follow-up question whose answer carries the verdict, the
    detection question comes later; re-running a finished build with it keeps the images and the manifest."""
    from data_synth.conversations import DETECT_Q, DETECT_REF_Q, OPENERS, QUESTIONS

    out, _ = built
    s = BuildSettings(seed=0, size=SIZE, n_refs=2)
    build([ProceduralSource(products_per_kind=1)], tmp_path, 24, s, progress=False)
    build(
        [ProceduralSource(products_per_kind=1)],
        tmp_path,
        24,
        BuildSettings(seed=0, size=SIZE, n_refs=2, opener_ratio=1.0),
        progress=False,
    )
    assert (tmp_path / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    assert json.loads((tmp_path / "build.json").read_text())["settings"]["opener_ratio"] == 1.0
    recs = read_manifest(tmp_path)
    convs = json.loads((tmp_path / "conversations.json").read_text())
    detect = {
        q.format(noun=r["noun"], ref=w)
        for r in recs
        for q in DETECT_Q + DETECT_REF_Q
        for w in ("reference", "references")
    } | {"The reference shows a good " + r["noun"] + ". Is there any defect in the query?" for r in recs}
    openers = {q for k in OPENERS for q in QUESTIONS[k]}
    for r, c in zip(recs, convs):
        first_q, first_a = c["conversations"][0]["value"].split("\n", 1)[1], c["conversations"][1]["value"]
        assert first_q not in detect and first_q in {q.format(noun=r["noun"]) for q in openers}, first_q
        if "how many" in first_q.lower():  # the count opener states the verdict: none, or the regions
            assert (first_a == "There are no defects.") == (r["label"] == 0), (first_q, first_a)
        assert any(m["value"] in detect for m in c["conversations"][2::2])  # the detection question comes later
    # back to 0: the original conversations, byte for byte
    build([ProceduralSource(products_per_kind=1)], tmp_path, 24, s, progress=False)
    assert (tmp_path / "conversations.json").read_bytes() == (out / "conversations.json").read_bytes()
    with pytest.raises(SynthError, match="--opener-ratio"):
        build(
            [ProceduralSource(products_per_kind=1)], tmp_path / "x", 2, BuildSettings(opener_ratio=-0.1), progress=False
        )


def test_compare_last_ratio_moves_the_comparison_behind_the_follow_ups(built, tmp_path):
    """--compare-last-ratio 1: every conversation that has a comparison asks it last (the app's chats ask it as the
    seventh question; before, it was at most the fifth), the other turns keep their order; the images, the manifest
    and, back at 0, the conversations keep their bytes."""
    from data_synth.conversations import COMPARE_REF_Q, COMPARE_ZERO_Q

    out, _ = built
    s = BuildSettings(seed=0, size=SIZE, n_refs=2)
    build([ProceduralSource(products_per_kind=1)], tmp_path, 24, BuildSettings(seed=0, size=SIZE, n_refs=2,
                                                                               compare_last_ratio=1.0), progress=False)
    assert (tmp_path / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    assert json.loads((tmp_path / "build.json").read_text())["settings"]["compare_last_ratio"] == 1.0
    recs = read_manifest(tmp_path)
    before = json.loads((out / "conversations.json").read_text())
    after = json.loads((tmp_path / "conversations.json").read_text())
    compare = {q.format(noun=r["noun"], ref=w) for r in recs for q in COMPARE_REF_Q + COMPARE_ZERO_Q
               for w in ("reference", "references")}

    def is_compare(q):
        return q.split("\n", 1)[-1] in compare

    moved = 0
    for b, a in zip(before, after):
        qa = [(m["value"], n["value"]) for m, n in zip(a["conversations"][::2], a["conversations"][1::2])]
        flags = [is_compare(q) for q, _ in qa]
        assert not any(flags[:-1]), qa  # a comparison, if any, is the last turn
        if flags and flags[-1] and len(qa) > 2:
            moved += 1
            assert "reference" in qa[-1][1] or "normal" in qa[-1][1]  # its answer is still a comparison answer
        assert len(a["conversations"]) == len(b["conversations"])  # no turn added or lost
    assert moved >= 5, moved
    build([ProceduralSource(products_per_kind=1)], tmp_path, 24, s, progress=False)
    assert (tmp_path / "conversations.json").read_bytes() == (out / "conversations.json").read_bytes()
    with pytest.raises(SynthError, match="--compare-last-ratio"):
        build([ProceduralSource(products_per_kind=1)], tmp_path / "x", 2, BuildSettings(compare_last_ratio=1.5),
              progress=False)


def test_defect_registry_lists_every_method_once():
    from data_synth.defects import BLENDING_METHODS, DEFECT_TYPES, DEFECTS

    assert METHODS == list(DEFECTS) == list(DEFECT_TYPES) and len(set(METHODS)) == len(METHODS)
    assert BLENDING_METHODS == ("nsa", "cutpaste", "scar", "perlin", "stain", "color")
    assert all(callable(d.draw) and d.defect_type and d.contrast_factor >= 1.0 for d in DEFECTS.values())
