"""Inspection profiles in the app (assistant/app/profiles.py) and in `chat --profile`: the picker, save as profile,
mark as good/defective, typed corrections confirmed before they label, and the errors. Handler level, the tiny
config, CPU; profiles under tmp_path."""
from __future__ import annotations

import io
import json
import re

import pytest

from assistant import profile_fit
from assistant.app import handlers, profiles
from assistant.cli import main
from assistant.imaging import load_image
from assistant.profile import Profile, ProfileError, stored_name
from assistant.profile_fit import refit
from assistant.wording import CANCELLED, NO_PART, NO_PROFILE, NO_PROFILE_TERMINAL, parse_correction
from tests.test_chat import speaking_tiny_assistant
from tests.test_profile import texture

CORRECTIONS = {"this one is fine": "good", "That is a defect.": "defective", "it's good": "good",
               "this is defective": "defective", "No, that one's fine": "good", "it is not defective": "good",
               "this part is not ok": "defective", "mark it as good": "good", "false alarm": "good",
               "It looks okay!": "good", "that one is bad": "defective"}
QUESTIONS = ["Is it good?", "Is there a defect?", "What kind of defect is it?", "Is something missing?", "Is it good",
             "Is this one fine?", "Where is the defect?", "How large is it?", "Tell me if it is good",
             "Is it safe to ship?", "Compare with the reference", "the defect is small", "It is a scratch", ""]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTION_ASSISTANT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "profiles"


@pytest.fixture(scope="module")
def assistant(tiny_tokenizer_dir):
    return speaking_tiny_assistant()


def stored_profile(assistant, name: str = "washer") -> Profile:
    """A profile of 2 references, 1 good and 1 defective label, fitted (calibration.json) with the app's expert."""
    p = Profile.create(name, [texture(1), texture(2)], config="tiny")
    p.add(good=[texture(3)], defective=[texture(4, defect=True)])
    refit(p, assistant.expert, assistant.tower, save=True)
    return p


def session_on(assistant, image):
    """A session on `image` with one reference of its own (the tiny expert has no zero-shot path)."""
    session = handlers.new_session(assistant)
    session.set_references([texture(20)])
    session.set_query(image)
    return session


def calibration(p: Profile) -> dict:
    return json.loads((p.path / "calibration.json").read_text())


def test_typed_corrections_are_parsed_and_questions_are_not():
    assert {t: parse_correction(t) for t in CORRECTIONS} == CORRECTIONS
    assert {q: parse_correction(q) for q in QUESTIONS} == dict.fromkeys(QUESTIONS)


def test_picking_a_profile_uses_its_images_and_refitted_threshold(assistant):
    p = stored_profile(assistant)
    session = session_on(assistant, texture(5, defect=True))
    assert profiles.choices() == ["none", "washer"]
    chat, session, active, picker, status, *evidence = profiles.on_pick(assistant, "washer", [], None, session, None)
    cal = calibration(p)
    assert active.threshold == pytest.approx(cal["threshold"], abs=1e-5) and f"{cal['threshold']:.4g}" in status
    assert len(session.references) == 3 and session.raw_result.threshold == pytest.approx(cal["threshold"], abs=1e-5)
    assert picker["value"] == "washer" and "'washer'" in chat[-1]["content"] and "verdict-badge" in evidence[2]
    # a new upload in this tab is judged with the profile, not fitted again
    fresh = handlers._open_image(assistant, _save(texture(6), p.path.parent.parent / "q.png"), [], None, 0, active)
    assert fresh.raw_result.threshold == pytest.approx(cal["threshold"], abs=1e-5) and len(fresh.references) == 3
    chat, session, active, picker, status, *_ = profiles.on_pick(assistant, "none", chat, None, session, active)
    assert active is None and status == profiles.NO_ACTIVE and picker["value"] == "none"
    chat, *_ = profiles.on_pick(assistant, "nope", chat, None, session, None)
    assert "no profile named 'nope'" in chat[-1]["content"]


def _save(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return str(path)


def test_save_as_profile_validates_the_name_and_activates_the_new_profile(assistant, home):
    session = handlers.new_session(assistant)
    session.set_references([texture(1), texture(2)])
    session.set_query(texture(7))
    chat, session, active, _, _, box, *_ = profiles.on_save(assistant, "../evil", None, [], session, None)
    assert active is None and "profile name: expected" in chat[-1]["content"] and not home.exists()
    chat, session, active, picker, status, box, *_ = profiles.on_save(assistant, "bolt", None, chat, session, None)
    p = Profile.load("bolt")
    assert len(p.references()) == 2 and p.config == "tiny" and picker["value"] == "bolt" and box["value"] == ""
    assert active.threshold == pytest.approx(calibration(p)["threshold"], abs=1e-5) and "Saved 2 reference(s)" in \
        chat[-1]["content"]
    chat, *_ = profiles.on_save(assistant, "bolt", None, chat, session, active)
    assert "already exists" in chat[-1]["content"]


def test_mark_good_and_defective_store_the_part_and_refit(assistant):
    p = stored_profile(assistant)
    session = session_on(assistant, texture(8))
    _, session, active, *_ = profiles.on_pick(assistant, "washer", [], None, session, None)
    before = calibration(p)
    chat, session, active, status, pending, row, _, *evidence = profiles.mark_good(assistant, [], session, active)
    good = p.path / "labelled" / "good" / stored_name(_png(session.query))
    cal = calibration(p)
    assert good.is_file() and cal["n_good"] == before["n_good"] + 1 and cal["images"] != before["images"]
    assert active.threshold == pytest.approx(cal["threshold"], abs=1e-5) and f"{cal['threshold']:.4g}" in status
    assert chat[-1]["content"] == (f"Noted: this part is marked good; the profile now has 2 good and 1 defective "
                                   f"labels, threshold {cal['threshold']:.3g}.")
    # judged again with the new state (the part, now a reference, may register: the aligned path keeps its own)
    assert len(session.references) == 4 and session.evidence.state.threshold == pytest.approx(cal["threshold"],
                                                                                              abs=1e-5)
    assert pending is None and row["visible"] is False and "verdict-badge" in evidence[2]
    session.set_query(texture(9, defect=True))
    chat, session, active, *_ = profiles.mark_defective(assistant, chat, session, active)
    assert (p.path / "labelled" / "defective" / stored_name(_png(session.query))).is_file()
    assert calibration(p)["n_defective"] == 2 and "marked defective" in chat[-1]["content"]


def _png(img) -> bytes:
    from assistant.profile import encode_png

    return encode_png(img)


def test_marking_needs_a_profile_and_a_part(assistant):
    session = session_on(assistant, texture(8))
    chat, *_ = profiles.mark_good(assistant, [], session, None)
    assert chat[-1]["content"] == f"⚠️ {NO_PROFILE}"
    p = stored_profile(assistant)
    _, _, active, *_ = profiles.on_pick(assistant, "washer", [], None, None, None)
    chat, *_ = profiles.mark_defective(assistant, [], None, active)
    assert chat[-1]["content"] == f"⚠️ {NO_PART}"
    assert len(p.defective()) == 1


def test_a_typed_correction_labels_only_once_confirmed(assistant):
    p = stored_profile(assistant)
    session = session_on(assistant, texture(10))
    _, session, active, *_ = profiles.on_pick(assistant, "washer", [], None, session, None)
    message = {"text": "this one is fine", "files": []}
    *_, (chat, _, session, *_) = handlers.respond(assistant, message, [], None, 0.0, session, active)
    assert "Confirm below" in chat[-1]["content"] and len(p.good()) == 1  # asked, nothing stored
    pending, row, question = profiles.on_typed(message, session, active)
    assert pending[0] == "good" and row["visible"] is True and "**good**" in question
    chat, *_ = profiles.on_cancel(chat)
    assert chat[-1]["content"] == CANCELLED and len(p.good()) == 1
    chat, session, active, status, pending, row, *_ = profiles.on_confirm(assistant, ("good", pending[1]), chat,
                                                                          session, active)
    assert len(p.good()) == 2 and "Noted: this part is marked good" in chat[-1]["content"] and row["visible"] is False
    *_, (chat, *_) = handlers.respond(assistant, {"text": "Is it good?", "files": []}, chat, None, 0.0, session,
                                      active)
    assert chat[-1]["content"].startswith("scratch")  # a question goes to the LM
    assert profiles.on_typed({"text": "Is it good?"}, session, active)[0] is not None  # gr.skip(): nothing pending
    *_, (chat, *_) = handlers.respond(assistant, message, chat, None, 0.0, session, None)
    assert NO_PROFILE in chat[-1]["content"]


def test_chat_cli_with_a_profile(assistant, tmp_path, capsys):
    stored_profile(assistant)
    query = _save(texture(11, defect=True), tmp_path / "q.png")
    assert main(["chat", "--config", "tiny", "--profile", "washer", "--image", query, "--question", "Where?"]) == 0
    err = capsys.readouterr().err
    assert "profile: washer (threshold" in err and "3 reference(s)" in err
    assert main(["chat", "--config", "tiny", "--profile", "washer", "--reference", query, "--image", query]) == 2
    assert "brings its own references" in capsys.readouterr().err


def test_chat_cli_good_and_defective_label_the_part_and_refit(assistant, tmp_path, capsys, monkeypatch):
    p = stored_profile(assistant)
    query = _save(texture(12, defect=True), tmp_path / "q.png")
    monkeypatch.setattr("sys.stdin", io.StringIO(":defective\n:result\n:quit\n"))
    assert main(["chat", "--config", "tiny", "--profile", "washer", "--image", query]) == 0
    out, cal = capsys.readouterr().out, calibration(p)
    stored = p.path / "labelled" / "defective" / stored_name(_png(load_image(query)))
    assert cal["n_defective"] == 2 and stored.is_file()
    said = re.search(r"Noted: this part is marked defective; the profile now has 1 good and 2 defective labels, "
                     r"threshold (\S+), estimated overkill (\S+) and miss (\S+)\.\n", out)
    assert said, out
    assert float(said.group(1)) == pytest.approx(cal["threshold"], rel=1e-2)
    assert float(said.group(2)) == pytest.approx(cal["expected_overkill"], abs=0.006)
    result = json.loads(out[out.index("{"):out.index("\n}") + 2])  # judged again with the refitted profile
    assert result["references"] == 3 and "3 reference(s)" in out  # 2 references + 1 good label
    ref = _save(texture(13), tmp_path / "r.png")
    monkeypatch.setattr("sys.stdin", io.StringIO(":good\n:result\n:quit\n"))  # no profile: said, and chat goes on
    assert main(["chat", "--config", "tiny", "--reference", ref, "--image", query]) == 0
    out = capsys.readouterr().out
    assert NO_PROFILE_TERMINAL in out and '"references": 1' in out and len(p.good()) == 1

    def fails(*_args, **_kw):
        raise ProfileError("profile 'washer': profile.json is corrupt")

    monkeypatch.setattr(profile_fit, "mark", fails)  # a failed label is said, and the chat goes on
    monkeypatch.setattr("sys.stdin", io.StringIO(":good\n:result\n:quit\n"))
    assert main(["chat", "--config", "tiny", "--profile", "washer", "--image", query]) == 0
    out = capsys.readouterr().out
    assert "error: profile 'washer': profile.json is corrupt" in out and '"references": 3' in out
