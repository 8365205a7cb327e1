"""ChatSession on the tiny models (configs/tiny.yaml): multi-turn, cached features, references, CLI."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from assistant.chat import ChatError, ChatSession, image_fingerprint
from assistant.imaging import ImageError


def part_image(seed: int, defect: tuple[int, int] | None = None, size: int = 48) -> Image.Image:
    """A textured grey part; `defect` = (row, col) of a dark square blob."""
    rng = np.random.default_rng(seed)
    arr = (120 + rng.normal(0, 6, (size, size, 3))).clip(0, 255)
    if defect is not None:
        r, c = defect
        arr[r:r + 8, c:c + 8] = [30, 20, 10]
    return Image.fromarray(arr.astype(np.uint8))


def speaking_tiny_assistant(word: str = "scratch"):
    """The tiny random Assistant with its LM head nudged so greedy decoding repeats `word` (a random 2-layer
    LM otherwise tends to emit nothing printable); the text still flows LM -> streamer -> session/app."""
    from assistant.model import Assistant

    a = Assistant.from_pretrained("tiny", device="cpu")
    ids = a.lvlm.tokenizer.encode(word, add_special_tokens=False)
    assert len(ids) == 1, f"use a single-piece word, {word!r} is {len(ids)} pieces"

    def hook(_module, _inputs, logits):
        logits[..., ids[0]] += 1e4
        return logits

    a.lvlm.lm.get_output_embeddings().register_forward_hook(hook)
    return a


@pytest.fixture(scope="module")
def assistant(tiny_tokenizer_dir):
    return speaking_tiny_assistant()


class HistorySpy:
    """Records the history each stream_answer call gives the LM."""

    def __init__(self, assistant):
        self.assistant, self.seen = assistant, []
        self._orig = assistant.stream_answer

    def __enter__(self):
        def spy(evidence, question, history=(), **kw):
            self.seen.append(list(history))
            return self._orig(evidence, question, history=history, **kw)

        self.assistant.stream_answer = spy
        return self

    def __exit__(self, *exc):
        del self.assistant.stream_answer  # back to the class method


class EncodeSpy:
    """Counts tower.encode calls and records the images passed in."""

    def __init__(self, tower):
        self.tower, self.calls, self.images = tower, 0, []
        self._orig = tower.encode

    def __enter__(self):
        def spy(images, *a, **k):
            self.calls += 1
            if isinstance(images, list):
                self.images.extend(images)
            return self._orig(images, *a, **k)

        self.tower.encode = spy
        return self

    def __exit__(self, *exc):
        del self.tower.encode  # back to the class method


def test_multi_turn_streams_and_never_reencodes(assistant):
    q, ref = part_image(1, defect=(8, 30)), part_image(2)
    session = ChatSession(assistant, q, [ref])
    result = session.result
    assert result.anomaly_map.shape == (48, 48) and isinstance(result.pred_label, bool)
    assert result.shots == 1
    with EncodeSpy(assistant.tower) as spy:
        chunks = list(session.ask("Is there any anomaly?"))
        follow = [session.answer(t) for t in ("Where is it?", "How large is it?")]
    assert spy.calls == 0, "a follow-up question must not run the vision tower"
    assert len(chunks) >= 2 and all(isinstance(c, str) and c for c in chunks), chunks  # streamed in pieces
    assert "".join(chunks).split()[:2] == ["scratch", "scratch"]
    assert [t for t, _ in session.history] == ["Is there any anomaly?", "Where is it?", "How large is it?"]
    # the history keeps what the LM said; notes said outside it (here the golden-sample change) are not in it
    lm_said = "".join(chunks).split("\n\n")[0].strip()
    assert session.history[0][1] == lm_said and session.history[1][1] == follow[0]
    assert session.result.pred_score == result.pred_score  # evidence unchanged by questions
    with HistorySpy(assistant) as spy:
        session.max_history_turns = 2
        session.answer("Compare it with the reference.")
    assert spy.seen == [session.history[1:3]]  # the last two turns go to the LM, in order


def test_references_update_evidence_without_reencoding_query(assistant):
    q, r1, r2 = part_image(3, defect=(30, 6)), part_image(4), part_image(5)
    session = ChatSession(assistant, q, [r1])
    one_ref = session.result.pred_score
    with EncodeSpy(assistant.tower) as spy:
        session.add_reference(r2)
    assert spy.calls > 0 and not any(im is session.query for im in spy.images), "query must not be re-encoded"
    assert session.result.shots == 2 and len(session.references) == 2
    two_refs = session.result.pred_score
    assert two_refs == ChatSession(assistant, q, [r1, r2]).result.pred_score  # same as a fresh session
    session.remove_reference(1)
    assert session.result.shots == 1
    assert session.result.pred_score == pytest.approx(one_ref, rel=1e-5)
    with pytest.raises(ChatError, match="out of range: the session has 1 references"):
        session.remove_reference(3)


def test_sensitivity_relabels_without_encoding(assistant):
    session = ChatSession(assistant, part_image(6, defect=(20, 20)), [part_image(7)])
    base = session.result
    with EncodeSpy(assistant.tower) as spy:
        session.set_sensitivity(1.0)
        loose = session.result
        session.set_sensitivity(-1.0)
        strict = session.result
        list(session.ask("Is there any anomaly?"))
    assert spy.calls == 0
    assert loose.threshold == pytest.approx(base.threshold / 2) and strict.threshold == pytest.approx(
        base.threshold * 2
    )
    assert loose.pred_mask.sum() >= base.pred_mask.sum() >= strict.pred_mask.sum()
    assert session.summary()["sensitivity"] == -1.0
    with pytest.raises(ChatError, match="sensitivity must be within"):
        session.set_sensitivity(3)


def test_parts_inspected_in_one_session_form_a_lot(assistant):
    from assistant.expert import LOT_MIN

    session = ChatSession(assistant, None, [part_image(40)])
    goods = [part_image(41 + i) for i in range(LOT_MIN - 1)]
    for img in goods[:-1]:
        session.set_query(img)
        assert session.result.lot_size is None  # fewer than LOT_MIN parts: the references' verdict
    session.set_query(goods[-1])
    session.set_query(goods[-1])  # the same part again is not a second part of the lot
    assert session.lot_size == LOT_MIN - 1
    judged = session.set_query(part_image(50, defect=(20, 20)))
    assert session.lot_size == LOT_MIN and judged is session.result
    assert judged.lot_size == LOT_MIN
    assert judged.reference_threshold == pytest.approx(session.raw_result.threshold)
    assert session.evidence.result is judged  # the answers speak of the lot's verdict
    session.set_references([part_image(60)])  # other references: a new lot
    assert session.lot_size == 1 and session.result.lot_size is None


def test_sessions_are_independent(assistant):
    qa, qb, ref = part_image(8, defect=(4, 4)), part_image(9, defect=(36, 36)), part_image(10)
    a, b = ChatSession(assistant, qa, [ref]), ChatSession(assistant, qb, [ref])
    a.answer("Is there any anomaly?")
    b.answer("Where is it?")
    assert len(a.history) == len(b.history) == 1 and a.history[0][0] != b.history[0][0]
    assert a.summary()["query"]["sha1"] == image_fingerprint(qa) != b.summary()["query"]["sha1"]
    fresh = ChatSession(assistant, qa, [ref])
    assert np.array_equal(fresh.result.anomaly_map, a.result.anomaly_map)
    assert not np.array_equal(a.result.anomaly_map, b.result.anomaly_map)
    b.reset()
    assert not b.has_image and a.has_image


def test_bad_inputs_are_clear(assistant, tmp_path):
    session = ChatSession(assistant)
    with pytest.raises(ChatError, match="upload a query image first"):
        session.ask("Is there any anomaly?")
    session.add_reference(part_image(12))
    session.set_query(part_image(11))
    with pytest.raises(ChatError, match="empty question"):
        session.ask("   ")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="not a recognised image format"):
        session.add_reference(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        session.set_query(empty)
    assert session.has_image and len(session.references) == 1  # a failed upload changes nothing
    huge = ChatSession(assistant, max_pixels=32 * 32)
    with pytest.raises(ImageError, match="exceeds the limit"):
        huge.set_query(part_image(13))


def test_chat_cli_one_shot_writes_overlay(tmp_path, capsys, tiny_tokenizer_dir):
    from assistant.cli import main

    q, r = tmp_path / "q.png", tmp_path / "r.png"
    part_image(14, defect=(10, 30)).save(q)
    part_image(15).save(r)
    out = tmp_path / "out" / "overlay.png"
    rc = main(["chat", "--config", "tiny", "--set", "vision.device=cpu", "--image", str(q), "--reference", str(r),
               "--question", "Is there any anomaly?", "--question", "Where is it?", "--overlay", str(out),
               "--mask", str(tmp_path / "mask.png")])
    assert rc == 0
    captured = capsys.readouterr()
    assert "> Is there any anomaly?" in captured.out and "> Where is it?" in captured.out
    assert "score" in captured.err and "threshold" in captured.err
    assert Image.open(out).size == (48, 48) and Image.open(tmp_path / "mask.png").mode == "L"
    rc = main(["chat", "--config", "tiny", "--image", str(tmp_path / "missing.png"), "--question", "hi"])
    assert rc == 2 and "file not found" in capsys.readouterr().err


def test_chat_cli_interactive_commands(tmp_path, capsys, monkeypatch, tiny_tokenizer_dir):
    import io
    import json

    from assistant.cli import main

    q, r1, r2 = tmp_path / "q.png", tmp_path / "r1.png", tmp_path / "r2.png"
    part_image(16, defect=(30, 30)).save(q)
    part_image(17).save(r1)
    part_image(18).save(r2)
    script = (
        f"Is there any anomaly?\n:ref {r2}\n:ref {tmp_path / 'nope.png'}\n:sens 0.5\n:result\n:unref 1\nWhere?\n:quit\n"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert main(["chat", "--config", "tiny", "--image", str(q), "--reference", str(r1)]) == 0
    out = capsys.readouterr().out
    assert out.count("reference(s)") >= 3 and "2 reference(s)" in out and "error:" in out and "file not found" in out
    result = json.loads(out[out.index("{"):out.index("\n}") + 2])
    assert result["references"] == 2 and result["sensitivity"] == 0.5
    assert result["threshold"] == pytest.approx(result["extras"]["calibrated_threshold"] / 2 ** 0.5)


def test_first_question_gets_the_verdict_as_context_not_as_history(assistant):
    """The first question is answered after an unseen opening turn that states the expert's verdict (a yes/no
    question asked first kept its polarity only that way); it is not shown or kept; later turns see the real
    history; open_with_verdict=False sends nothing."""
    from assistant.expert import AnomalyResult
    from assistant.wording import DETECT_QUESTION, verdict_turn

    flagged = AnomalyResult(np.zeros((30, 30), np.float32), 2.0, True, np.zeros((30, 30), bool), threshold=1.0)
    flagged.pred_mask[0:6, 20:28] = True
    assert verdict_turn(flagged) == (
        DETECT_QUESTION,
        "Yes, there is an anomaly: a defect in the top right of the image.",
    )
    flagged.pred_label = False
    assert verdict_turn(flagged) == (DETECT_QUESTION, "No, the object looks normal.")
    with HistorySpy(assistant) as spy:
        session = ChatSession(assistant, part_image(6, defect=(8, 8)), [part_image(7)])
        session.answer("Can we ship it?")
        session.answer("Where is it?")
        quiet = ChatSession(assistant, part_image(6, defect=(8, 8)), [part_image(7)], open_with_verdict=False)
        quiet.answer("Can we ship it?")
    seen = spy.seen
    assert seen[0] == [verdict_turn(session.result)]
    assert [q for q, _ in session.history] == ["Can we ship it?", "Where is it?"]  # the opening turn is not kept
    assert seen[1] == session.history[:1] and seen[2] == []


def test_a_reference_mismatch_is_pointed_out_once_outside_the_lm(assistant):
    """When the expert flags reference_mismatch, the first answer ends with REFERENCE_CAUTION (not generated, not
    in the LM's history); later answers about the same images do not repeat it; new references can bring it back."""
    from assistant.wording import REFERENCE_CAUTION

    session = ChatSession(assistant, part_image(6, defect=(8, 8)), [part_image(7)])
    assert not session.result.reference_mismatch
    assert REFERENCE_CAUTION not in session.answer("Is there any anomaly?")
    session._evidence.result.reference_mismatch = True  # as the expert sets it above its fitted cut
    first, second = session.answer("Where is it?"), session.answer("How large is it?")
    assert first.endswith(REFERENCE_CAUTION) and REFERENCE_CAUTION not in second
    assert all(REFERENCE_CAUTION not in a for _, a in session.history)
    session.add_reference(part_image(8))  # new evidence: judged afresh
    session._evidence.result.reference_mismatch = True
    assert session.answer("Is there any anomaly?").endswith(REFERENCE_CAUTION)


def test_a_borderline_verdict_is_said_once_outside_the_lm(assistant):
    """A result within the threshold's uncertainty gets the borderline sentence after the first answer (the LM is
    given the binary verdict); later answers about the same images do not repeat it, and a detection question is
    answered from the evidence (it says the verdict is borderline itself, so no note follows it)."""
    from assistant.wording import borderline_note

    session = ChatSession(assistant, part_image(6, defect=(8, 8)), [part_image(7)])
    r = session._evidence.result
    r.verdict, r.confidence = "borderline", 0.62  # as the expert sets it when the score lies in the review band
    note = borderline_note(r)
    side = "just over" if r.pred_label else "just under"
    assert note == (f"It is borderline: the score is {side} the threshold, within its uncertainty (confidence 62%); "
                    "I would hold the part for a person to check.")
    first, second = session.answer("Where is it?"), session.answer("Is there any anomaly?")
    assert first.endswith(note) and note not in second and second.startswith("It is borderline: I cannot decide")
    assert all(note not in a for _, a in session.history)
    r.verdict = "normal"
    assert borderline_note(r) is None
