"""One real-weight chat check: the shipped checkpoint on the app's generated examples (no network)."""
from __future__ import annotations

import time

import pytest

from assistant.config import DEFAULT_CHECKPOINT, resolve_data_path

pytestmark = pytest.mark.real
CHECKPOINT = resolve_data_path(DEFAULT_CHECKPOINT)  # the shipped checkpoint (package data)


def test_shipped_checkpoint_chats_about_generated_washers(tmp_path):
    if not (CHECKPOINT / "config.json").is_file():
        pytest.skip("checkpoints/offline-small has no config.json yet (the trained checkpoint is not shipped)")
    from assistant import app
    from assistant.chat import ChatSession
    from assistant.model import Assistant

    (scratched, refs, _), (_, _, _), (good, _, _) = app.make_examples(tmp_path)
    assistant = Assistant.from_pretrained(str(CHECKPOINT))
    bad = ChatSession(assistant, scratched, refs)
    r = bad.result
    assert r.pred_label, f"scratched washer judged normal: score {r.pred_score:.3f} <= threshold {r.threshold:.3f}"
    # the scratch runs from (205, 75) to (250, 140) in the 320 px example: the largest box must touch it
    b = r.boxes[0]
    assert b.x0 < 250 and b.x1 > 205 and b.y0 < 140 and b.y1 > 75, b
    answer = bad.answer("Is there any anomaly?")
    assert len(answer.split()) >= 3 and answer.isascii()
    t0, first = time.perf_counter(), None
    for _ in bad.ask("Where is it?"):
        first = first or time.perf_counter() - t0
    print(f"follow-up: first streamed chunk after {first:.2f} s, answer {bad.history[-1][1]!r}")
    ok = ChatSession(assistant, good, refs).result
    assert not ok.pred_label, f"good washer judged anomalous: score {ok.pred_score:.3f} > {ok.threshold:.3f}"
