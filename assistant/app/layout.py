"""The app's layout, built by short functions, and its events wired to the handlers.

Layout: chat panel (messages) with a multimodal textbox that takes the query image; a gallery for reference
normal images; an evidence panel (heat-map overlay with boxes, mask, verdict badge, score, threshold, JSON, and
for an aligned result the golden sample, the part and their difference side by side); a sensitivity slider;
generated example inputs; a "New session" button; hidden components for the /inspect API.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from assistant.app import handlers
from assistant.app.evidence import verdict_badge
from assistant.app.examples import make_examples
from assistant.chat import SENSITIVITY_RANGE

SESSION_TTL_S = 3600  # idle seconds after which a user's session (images, features, history) is freed
INTRO = ("## Visual inspection assistant\nUpload a photo of a part (optionally good reference parts on the right), "
         "then ask: *Is there any anomaly? Where? How large is it?*")


@dataclass
class ChatPanel:
    chatbot: gr.Chatbot
    box: gr.MultimodalTextbox
    new_btn: gr.Button


@dataclass
class EvidencePanel:
    gallery: gr.Gallery
    badge: gr.HTML
    overlay: gr.Image
    mask: gr.Image
    sens: gr.Slider
    details: gr.JSON
    comparison: gr.Gallery  # golden sample | part | difference; visible for aligned results only

    @property
    def outputs(self) -> list:
        """The five evidence outputs, in the order of evidence_outputs."""
        return [self.overlay, self.mask, self.badge, self.details, self.comparison]


@dataclass
class ApiInputs:
    image: gr.File
    refs: gr.File
    question: gr.Textbox
    sens: gr.Number
    answer: gr.Textbox
    result: gr.JSON
    button: gr.Button


def chat_panel(examples) -> ChatPanel:
    """Conversation, message box (takes the query image), New session, example queries."""
    chatbot = gr.Chatbot(label="Conversation", height=520, elem_id="chatbot", buttons=["copy"], feedback_options=None)
    box = gr.MultimodalTextbox(file_types=["image"], file_count="single", sources=["upload"],
                               placeholder="Attach a part photo and/or ask a question…", show_label=False,
                               elem_id="ask-box")
    with gr.Row():
        new_btn = gr.Button("New session", elem_id="new-session", variant="secondary")
    gr.Examples(examples=[[{"text": q, "files": [p]}] for p, _, q in examples], inputs=[box],
                label="Examples (generated parts; add the references below)",
                example_labels=[Path(p).stem.replace("_", " ") for p, _, _ in examples])
    return ChatPanel(chatbot, box, new_btn)


def evidence_panel(examples) -> EvidencePanel:
    """Reference gallery (+ example references), verdict badge, overlay, golden-sample comparison (hidden until a
    result is aligned), mask, sensitivity, result JSON."""
    gallery = gr.Gallery(value=None, label="Reference normal images (optional, several)", type="filepath",
                         interactive=True, columns=4, height=150, file_types=["image"], elem_id="references")
    gr.Examples(examples=[[examples[0][1]]], inputs=[gallery], label="Example references",
                example_labels=["two good washers"])
    badge = gr.HTML(verdict_badge(None), elem_id="verdict")
    overlay = gr.Image(label="Heat-map overlay (boxes = defects)", type="numpy", interactive=False, format="png",
                       elem_id="overlay", height=300)
    comparison = gr.Gallery(label="Golden-sample comparison", columns=3, rows=1, height=200, object_fit="contain",
                            format="png", visible=False, interactive=False, elem_id="golden-comparison")
    with gr.Row():
        mask = gr.Image(label="Mask", type="numpy", interactive=False, format="png", elem_id="mask", height=160,
                        image_mode="L")
        lo, hi = SENSITIVITY_RANGE
        sens = gr.Slider(lo, hi, value=0.0, step=0.05, label="Sensitivity",
                         info="0 = calibrated threshold; + flags more, − flags less", elem_id="sensitivity")
    with gr.Accordion("Result JSON", open=False):
        details = gr.JSON(label="Result", elem_id="result-json")
    return EvidencePanel(gallery, badge, overlay, mask, sens, details, comparison)


def api_inputs() -> ApiInputs:
    """Hidden components behind the /inspect endpoint."""
    with gr.Row(visible=False):
        return ApiInputs(image=gr.File(label="image", file_types=None, type="filepath"),
                         refs=gr.File(label="references", file_count="multiple", type="filepath"),
                         question=gr.Textbox(label="question"), sens=gr.Number(label="sensitivity", value=0.0),
                         answer=gr.Textbox(label="answer"), result=gr.JSON(label="result"),
                         button=gr.Button("inspect"))


def wire(assistant, chat: ChatPanel, ev: EvidencePanel, api: ApiInputs, session: gr.State,
         api_session: gr.State) -> None:
    """Events -> handlers (the UI's endpoints are undocumented; /inspect is the documented API)."""
    bind = handlers.bind
    hidden = {"api_visibility": "undocumented"}
    chat.box.submit(bind(handlers.respond, assistant), [chat.box, chat.chatbot, ev.gallery, ev.sens, session],
                    [chat.chatbot, chat.box, session, *ev.outputs], api_name="chat", trigger_mode="always_last",
                    **hidden)
    ev.gallery.change(bind(handlers.on_references, assistant), [ev.gallery, chat.chatbot, session],
                      [chat.chatbot, session, *ev.outputs], api_name="references", **hidden)
    ev.sens.release(handlers.on_sensitivity, [ev.sens, session], [session, *ev.outputs], api_name="sensitivity",
                    **hidden)
    chat.new_btn.click(handlers.reset, None,
                       [chat.chatbot, chat.box, ev.gallery, session, api_session, ev.sens, *ev.outputs],
                       api_name="new_session", **hidden)
    api.button.click(bind(handlers.inspect, assistant), [api.image, api.refs, api.question, api.sens, api_session],
                     [api.answer, api.result, api_session], api_name="inspect")


def build_demo(assistant, example_dir: str | os.PathLike | None = None) -> gr.Blocks:
    """The gr.Blocks app around one loaded Assistant (weights only; per-user data lives in gr.State)."""
    example_dir = Path(example_dir or tempfile.mkdtemp(prefix="inspection-examples-"))
    examples = make_examples(example_dir)
    with gr.Blocks(title="Inspection assistant") as demo:
        # per-user sessions (images, features, history); dropped after an idle hour
        session = gr.State(None, time_to_live=SESSION_TTL_S)
        api_session = gr.State(None, time_to_live=SESSION_TTL_S)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=3):
                chat = chat_panel(examples)
            with gr.Column(scale=2):
                ev = evidence_panel(examples)
        api = api_inputs()
        wire(assistant, chat, ev, api, session, api_session)
    demo.queue(default_concurrency_limit=assistant.cfg.serve.concurrency_limit, max_size=64)
    return demo


def launch(demo: gr.Blocks, cfg, example_dir: str | os.PathLike | None = None, **kwargs):
    """Launch with the serve config (host, port, upload limit); extra kwargs go to Blocks.launch."""
    allowed = [str(example_dir)] if example_dir else []
    kwargs.setdefault("server_name", cfg.serve.host)
    kwargs.setdefault("server_port", cfg.serve.port)
    kwargs.update(max_file_size=int(cfg.serve.max_upload_mb * 1024 * 1024), allowed_paths=allowed)
    try:
        return demo.launch(**kwargs)
    except OSError:  # port taken: let Gradio pick the next free one
        if kwargs.get("server_port") is None:
            raise
        kwargs["server_port"] = None
        return demo.launch(**kwargs)
