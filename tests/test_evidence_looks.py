"""The strongest region's look and type as evidence words (lvlm.evidence_looks), and the training data that teaches
the LM to say them: data_synth --descriptor-answers measures every defect (data_synth/looks.py), its answers to
what kind / describe / colour / either-or follow those measurements, and the training evidence carries them."""
import json
import shutil

import numpy as np
import pytest

from assistant.expert.defect_type import CHANGE_TYPES, METHOD_TYPES
from assistant.expert.describe import measure
from assistant.imaging import load_image, load_mask
from assistant.lvlm.features import ImageFeatures, visual_inputs
from assistant.wording import article, position_phrase, result_evidence
from assistant.wording.defects import (
    colour_sentence,
    describe_sentence,
    either_sentence,
    evidence_looks,
    looks,
    type_sentence,
    type_words_in,
)
from data_synth.build import BuildSettings, build, read_manifest
from data_synth.looks import descriptor_of
from data_synth.sources import ProceduralSource
from data_synth.sources.aligned import AlignedSource
from tests.test_grounded_defects import box, desc, result
from training.lvlm.data import load_samples

SIZE = 64


def test_evidence_says_the_strongest_regions_look_and_type_only_when_asked():
    weak, strong = desc("", form="compact", orientation=""), desc("crack")
    res = result(box(weak, score=1.5), box(strong, x=40, score=3.0))
    assert "looks:" not in result_evidence(res)
    said = result_evidence(res, looks=True)
    assert said.endswith(f"; looks: {looks(strong)}; type: crack.")
    assert evidence_looks(weak).endswith("; type: not named")
    assert result_evidence(result(anomalous=False), looks=True) == "Expert evidence: no suspicious features."
    feats = ImageFeatures(*(np.zeros((1, 2), np.float32),) * 4, None)
    assert "type: crack" in visual_inputs(feats, res, looks=True).evidence
    assert "looks:" not in visual_inputs(feats, res).evidence


def test_either_sentence_follows_the_named_type_or_abstains():
    assert either_sentence(desc("crack"), ["scratch", "crack"], "at the top").startswith("It looks like a crack at")
    assert either_sentence(desc("hole"), ["scratch", "crack"], "at the top").startswith("Neither, it looks more like")
    unsure = either_sentence(desc(""), ["scratch", "crack"], "at the top")
    assert unsure.startswith("I cannot tell with confidence whether it is a scratch or a crack; at the top I measured")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A procedural and an aligned build, first without, then re-run with --descriptor-answers."""
    out = tmp_path_factory.mktemp("looks")
    builds = {"procedural": (ProceduralSource(products_per_kind=1), 0), "aligned": (AlignedSource(), 1)}
    before = {}
    for name, (src, seed) in builds.items():
        build([src], out / name, 16, BuildSettings(seed=seed, size=SIZE, n_refs=2, opener_ratio=0.5), progress=False)
        before[name] = {p.name: p.read_bytes() for p in (out / name / "images").iterdir()}
        shutil.copy(out / name / "conversations.json", out / name / "conversations.plain.json")
        build([src], out / name, 16, BuildSettings(seed=seed, size=SIZE, n_refs=2, opener_ratio=0.5,
                                                    descriptor_answers=True), progress=False)
    return out, before


def test_descriptor_answers_measure_each_defect_and_leave_the_images(measured):
    out, before = measured
    for name in ("procedural", "aligned"):
        assert before[name] == {p.name: p.read_bytes() for p in (out / name / "images").iterdir()}
        for r in read_manifest(out / name):
            if not r["label"]:
                assert r["looks"] is None
                continue
            word = CHANGE_TYPES[r["change"]] if r.get("aligned") else METHOD_TYPES[r["method"]]
            assert r["looks"]["type"] in (word, "") and (r["looks"]["type"] == word or not r.get("aligned"))
            if not r.get("aligned"):  # the mask measured as the served expert measures a region
                img = load_image(r["image"])
                d = measure(img, load_mask(r["mask"], img.size))
                assert r["looks"]["descriptor"]["form"] == d.form and r["looks"]["descriptor"]["tone"] == d.tone


def test_answers_follow_the_measured_looks(measured):
    out, _ = measured
    recs = {r["id"]: r for r in read_manifest(out / "procedural")}
    kinds = set()
    for c in json.loads((out / "procedural" / "conversations.json").read_text()):
        r = recs[c["id"]]
        if not r["label"]:
            continue
        d, where, named = descriptor_of(r["looks"]), position_phrase(r["position"]), r["looks"]["type"]
        turns = c["conversations"]
        answers = [t["value"] for t in turns[1::2]]
        assert any(a.startswith(f"Yes, there is an anomaly: {article(named or 'defect')} {named or 'defect'} ")
                   for a in answers)
        for q, a in zip([t["value"] for t in turns[0::2]], answers):
            if a == describe_sentence(d, where):
                kinds.add("describe")
            elif a == colour_sentence(d):
                kinds.add("colour")
            elif a == type_sentence(d, where):
                kinds.add("type")
            elif " or " in q and "?" in q and q.startswith(("Is it", "Is this", "Would you")):
                words = type_words_in(q)
                assert a == either_sentence(d, words, where), (q, a)
                kinds.add("either")
            assert not a.startswith("It looks like") or (named and f" {named} " in a), a  # only the evidence's type
    assert {"describe", "colour", "type", "either"} <= kinds


def test_without_the_flag_conversations_keep_their_bytes(measured, tmp_path):
    out, _ = measured
    src = out / "procedural"
    assert (src / "conversations.plain.json").read_text() != (src / "conversations.json").read_text()
    build([ProceduralSource(products_per_kind=1)], src, 16, BuildSettings(seed=0, size=SIZE, n_refs=2,
                                                                          opener_ratio=0.5), progress=False)
    assert (src / "conversations.plain.json").read_text() == (src / "conversations.json").read_text()
    assert all("looks" in r for r in read_manifest(src))  # the measurements stay for the next flagged run


def test_training_evidence_carries_the_looks_and_asks_for_them(measured, tmp_path):
    out, _ = measured
    recs = {r["id"]: r for r in read_manifest(out / "aligned")}
    for s in load_samples(out / "aligned", 1, changes=True, looks=True):
        r = recs[s.id]
        if r["label"]:
            assert "golden sample: " in s.evidence
            assert s.evidence.endswith(evidence_looks(descriptor_of(r["looks"])) + ".")
            assert f"type: {CHANGE_TYPES[r['change']]}" in s.evidence
        else:
            assert s.evidence == "Expert evidence: no suspicious features."
    bare = tmp_path / "bare"
    build([ProceduralSource(products_per_kind=1)], bare, 8, BuildSettings(seed=0, size=SIZE, n_refs=2), progress=False)
    with pytest.raises(ValueError, match="--descriptor-answers"):
        load_samples(bare, 1, looks=True)
