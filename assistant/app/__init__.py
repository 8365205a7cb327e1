"""Gradio app: chat about a part photo, with reference normal shots and the expert's evidence.

    inspection-assistant serve           # or: make demo, python app.py   (127.0.0.1, prints the URL)

    examples.py   generated example inputs (washers; never real data)
    evidence.py   verdict badge, overlay and mask pictures, golden-sample comparison, result JSON of a session
    handlers.py   event handlers: module functions, the Assistant bound when the app is built
    layout.py     the layout in short functions, events wired to the handlers; build_demo, launch
    server.py     load + build + launch + wait (serve), the bind address (flags, Gradio's environment, config)

A chat panel (messages) with a multimodal textbox that takes the query image; a gallery for reference normal
images with a "golden sample" box (the references show the same design in the same fixture); an evidence panel
(heat-map overlay with boxes, mask, verdict badge, score, threshold, JSON; for a result compared position by
position, the golden sample, the part and their signed difference side by side); a sensitivity slider that moves the
threshold relative to the calibrated one (re-label only, no re-encode); generated example inputs; a "New session"
button. Per-user state lives in gr.State only (one ChatSession per browser tab / API client); the Assistant holds
weights only.

API (gradio_client): endpoint "/inspect" (query image file, reference image files, question, sensitivity, and
optionally an inspection profile's name and `golden`: the references are golden samples) -> (answer, result JSON).
Calling it again with no image asks a follow-up about the client's last image. A named profile judges with its
images and threshold instead of reference files; it stays loaded for the client's next calls while the stored
profile is unchanged.
"""
from assistant.app.evidence import evidence_outputs, verdict_badge
from assistant.app.examples import DEFAULT_QUESTION, make_examples
from assistant.app.layout import SESSION_TTL_S, build_demo, launch
from assistant.app.server import bind_address, serve

__all__ = ["DEFAULT_QUESTION", "SESSION_TTL_S", "bind_address", "build_demo", "evidence_outputs", "launch",
           "make_examples", "serve", "verdict_badge"]
