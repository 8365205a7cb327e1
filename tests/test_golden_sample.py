"""The user says "this good part is a golden sample": Assistant.analyze(golden=...), ChatSession(golden=...) and
set_golden, `detect --golden`, `chat --golden`, and the app's box, handlers and evidence note. Tiny models, 64 px
generated boards (tests/test_golden.py): a board of another layout does not register as the same view, so `auto`
compares it freely, but its warp lies within a fixture's motion, so a golden sample is compared position by
position."""
import csv
import io
import json

import pytest
import torch

from assistant.app import handlers
from assistant.app.evidence import evidence_outputs
from assistant.chat import ChatSession
from assistant.cli import main
from tests.test_chat import EncodeSpy
from tests.test_golden import board, shifted, to_pil

SIDE = 64


def _pair():
    """(query, golden sample): a board of another layout against the golden one."""
    return to_pil(board(SIDE, seed=3)), to_pil(board(SIDE))


@pytest.fixture(scope="module")
def assistant(tiny_tokenizer_dir):
    from assistant.model import Assistant

    torch.manual_seed(0)
    return Assistant.from_pretrained("tiny", device="cpu")


def test_analyze_golden_compares_position_by_position_where_auto_does_not(assistant):
    query, ref = _pair()
    auto = assistant.analyze(query, [ref])
    golden = assistant.analyze(query, [ref], golden=True)
    assert auto.state.alignment == assistant.cfg.expert.alignment == "auto"
    assert auto.result.alignment == "free" and auto.result.alignment_reason  # does not register as the same view
    assert golden.state.alignment == "golden" and golden.result.alignment == "aligned"
    assert "golden sample" in golden.result.alignment_reason
    assert golden.result.to_dict()["alignment_reason"] == golden.result.alignment_reason
    # a state given to evidence_from_features keeps its own mode
    again = assistant.evidence_from_features(query, golden.query_out, [ref], golden.ref_out, state=auto.state,
                                             golden=True)
    assert again.result.alignment == "free"


def test_session_set_golden_judges_again_from_cached_features(assistant):
    query, ref = _pair()
    session = ChatSession(assistant, query, [ref])
    assert not session.golden and session.result.alignment == "free" and session.summary()["golden"] is False
    with EncodeSpy(assistant.tower) as spy:
        aligned = session.set_golden(True)
        assert aligned.alignment == "aligned" and session.summary()["golden"] is True
        assert session.set_golden(True) is session.result  # already so: nothing to do
        assert session.set_golden(False).alignment == "free"
    # neither the part nor the golden sample is encoded again (only the LVLM's second-look crop of each judgement)
    assert not any(im is session.query or im is session.references[0] for im in spy.images)
    fresh = ChatSession(assistant, query, [ref], golden=True)
    assert fresh.result.alignment == "aligned" and fresh.result.pred_score == pytest.approx(aligned.pred_score)
    empty = ChatSession(assistant)  # no image yet: the flag waits for one
    assert empty.set_golden(True) is None and empty.golden
    empty.add_reference(ref)
    empty.set_query(query)
    assert empty.result.alignment == "aligned"


def test_set_golden_keeps_a_given_state_and_its_labels(assistant, monkeypatch):
    """A profile's state (labels refined its threshold) is realigned, not fitted again."""
    query, ref = _pair()
    state = assistant.expert.fit_references(assistant.tower, [ref])
    state.calibration["labels"] = {"threshold": 1.23}  # stands for a profile's labelled fit
    session = ChatSession(assistant)
    session.set_references([ref], state=state)
    session.set_query(query)
    fits = []
    monkeypatch.setattr(assistant.expert, "fit_references", lambda *a, **k: fits.append(1))
    assert session.set_golden(True).alignment == "aligned"
    golden_first = ChatSession(assistant, golden=True)  # a golden session given a state takes it as golden
    golden_first.set_references([ref], state=state)
    golden_first.set_query(query)
    assert fits == [] and golden_first.result.alignment == "aligned"
    assert session._state.calibration["labels"] == {"threshold": 1.23} and state.alignment == "auto"


def test_detect_golden_prints_the_path_and_why_and_keeps_them(tmp_path, capsys):
    query, ref = _pair()
    q, r = tmp_path / "part.png", tmp_path / "golden.png"
    query.save(q)
    ref.save(r)
    argv = ["detect", "--image", str(q), "--reference", str(r), "--config", "tiny"]
    assert main([*argv, "--out", str(tmp_path / "auto")]) == 0
    printed = capsys.readouterr().out
    assert "alignment: free." in printed and "\nwhy: " in printed
    assert main([*argv, "--golden", "--out", str(tmp_path / "golden")]) == 0
    printed = capsys.readouterr().out
    assert "alignment: aligned." in printed and "\nwhy: " in printed and "golden sample" in printed
    res = json.loads((tmp_path / "golden/result.json").read_text())
    assert res["alignment"] == "aligned" and "golden sample" in res["alignment_reason"]
    lot = tmp_path / "lot"  # a folder: summary.csv keeps the path and the reason
    lot.mkdir()
    query.save(lot / "a.png")
    to_pil(shifted(board(SIDE, missing=True), 1.0, -1.0)).save(lot / "b.png")
    assert main(["detect", "--image", str(lot), "--reference", str(r), "--config", "tiny", "--golden",
                 "--out", str(tmp_path / "lot_out")]) == 0
    with open(tmp_path / "lot_out/summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["alignment"] for row in rows] == ["aligned", "aligned"]
    assert all("golden sample" in row["alignment_reason"] for row in rows)


def test_chat_cli_golden(tmp_path, capsys, monkeypatch, tiny_tokenizer_dir):
    query, ref = _pair()
    q, r = tmp_path / "part.png", tmp_path / "golden.png"
    query.save(q)
    ref.save(r)
    monkeypatch.setattr("sys.stdin", io.StringIO(":result\n:quit\n"))
    assert main(["chat", "--config", "tiny", "--image", str(q), "--reference", str(r), "--golden"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):out.index("\n}") + 2])
    assert result["golden"] is True and result["alignment"] == "aligned" and result["alignment_reason"]


def test_app_box_turns_the_session_golden_and_the_note_says_why(assistant, tmp_path):
    query, ref = _pair()
    q, r = tmp_path / "part.png", tmp_path / "golden.png"
    query.save(q)
    ref.save(r)
    chat, session, *_ = handlers.on_golden(assistant, True, [], None)  # no image yet: the flag waits in the session
    assert chat == [] and session.golden and not session.has_image
    *_, (chat, _, session, *evidence) = handlers.respond(assistant, {"text": "Is it good?", "files": [str(q)]}, [],
                                                         [str(r)], 0.0, session, None)
    assert session.golden and session.result.alignment == "aligned"
    assert "Why: " in evidence[2] and "golden sample" in evidence[2]  # the badge's alignment note
    chat, session, *evidence = handlers.on_golden(assistant, False, chat, session)
    assert not session.golden and session.result.alignment == "free"
    assert "compared as a bag of patches" in chat[-1]["content"] and evidence[3]["golden"] is False
    assert handlers.reset()[-1] is False  # "New session" clears the box


def test_api_inspect_golden_argument(assistant, tmp_path):
    """/inspect's optional last argument (handlers.inspect, as the endpoint calls it): golden for a new image, kept
    on a follow-up that does not say it, set by one that does."""
    query, ref = _pair()
    q, r = tmp_path / "part.png", tmp_path / "golden.png"
    query.save(q)
    ref.save(r)
    _, plain, state = handlers.inspect(assistant, str(q), [str(r)], "Is it good?", 0.0, "", None)
    assert plain["golden"] is False and plain["alignment"] == "free"
    _, result, state = handlers.inspect(assistant, None, [], "Where?", 0.0, "", state, True)
    assert result["golden"] is True and result["alignment"] == "aligned" and result["alignment_reason"]
    _, follow, state = handlers.inspect(assistant, None, [], "How big?", 0.0, "", state)
    assert follow["golden"] is True and follow["query"] == result["query"]
    _, new, _ = handlers.inspect(assistant, str(q), [str(r)], "Is it good?", 0.0, "", state, True)
    assert new["golden"] is True and new["alignment"] == "aligned"


def test_evidence_note_without_reason_is_unchanged(assistant):
    query, ref = _pair()
    session = ChatSession(assistant, query, [ref], golden=True)
    badge = evidence_outputs(session)[2]
    assert "Compared position by position with the golden sample" in badge and "Why: " in badge
    from assistant.app.evidence import verdict_badge

    summary = {**session.summary(), "alignment_reason": ""}
    assert "Why: " not in verdict_badge(summary)


def test_profile_created_golden_judges_parts_with_golden_samples(tmp_path, capsys, monkeypatch):
    from assistant.profile import Profile, ProfileError

    monkeypatch.setenv("INSPECTION_ASSISTANT_HOME", str(tmp_path / "home"))
    query, ref = _pair()
    q, r = tmp_path / "part.png", tmp_path / "golden.png"
    query.save(q)
    ref.save(r)
    assert main(["profile", "create", "board", "--reference", str(r), "--config", "tiny", "--golden"]) == 0
    assert main(["profile", "create", "plain", "--reference", str(r), "--config", "tiny"]) == 0
    assert Profile.load("board").golden and not Profile.load("plain").golden
    assert json.loads((Profile.load("board").path / "profile.json").read_text())["golden"] is True
    assert "golden" not in json.loads((Profile.load("plain").path / "profile.json").read_text())
    assert main(["profile", "show", "board"]) == 0 and "| golden samples | yes |" in capsys.readouterr().out
    for name, path in (("board", "aligned"), ("plain", "free")):
        assert main(["detect", "--profile", name, "--image", str(q), "--out", str(tmp_path / name)]) == 0
        assert json.loads((tmp_path / name / "result.json").read_text())["alignment"] == path
    meta = Profile.load("plain").path / "profile.json"
    meta.write_text(meta.read_text().replace('"config"', '"golden": "yes", "config"'))
    with pytest.raises(ProfileError, match="expected 'golden' to be true or false"):
        Profile.load("plain")
