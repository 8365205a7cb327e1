"""The app's layout, built by short functions, and its events wired to the handlers.

Layout: chat panel (messages) with a multimodal textbox that takes the query image; a gallery for reference
normal images with a "golden sample" box (the user vouches that they show the same design in the same fixture); an
evidence panel (heat-map overlay with boxes, mask, verdict badge, score, threshold, JSON, and
for an aligned result the golden sample, the part and their difference side by side); a sensitivity slider;
generated example inputs; a "New session" button; hidden components for the /inspect API. Inspection profiles
(app/profiles.py): a picker, a "Save as profile" row, "Mark as good / defective" beside the verdict and a confirmation
row for typed corrections.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from assistant.app import handlers, profiles
from assistant.app.evidence import verdict_badge
from assistant.app.examples import make_examples
from assistant.chat import SENSITIVITY_RANGE

SESSION_TTL_S = 3600  # idle seconds after which a user's session (images, features, history) is freed
GOLDEN_LABEL = "The good part is a golden sample (same design, same fixture)"
GOLDEN_INFO = "compare position by position whenever the part registers within a fixture's motion"
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
    golden: gr.Checkbox  # the user says the references are golden samples (ChatSession.set_golden)

    @property
    def outputs(self) -> list:
        """The five evidence outputs, in the order of evidence_outputs."""
        return [self.overlay, self.mask, self.badge, self.details, self.comparison]


@dataclass
class ProfilePanel:
    picker: gr.Dropdown
    status: gr.Markdown
    name: gr.Textbox
    save: gr.Button
    good: gr.Button
    defective: gr.Button
    confirm_row: gr.Row  # hidden until a typed correction asks to be confirmed
    question: gr.Markdown
    confirm: gr.Button
    cancel: gr.Button
    active: gr.State  # the tab's ActiveProfile (None: no profile)
    pending: gr.State  # (label, image sha1) of a typed correction awaiting confirmation


@dataclass
class ApiInputs:
    image: gr.File
    refs: gr.File
    question: gr.Textbox
    sens: gr.Number
    profile: gr.Textbox  # optional: an inspection profile's name ("" = none)
    golden: gr.Checkbox  # optional, last: the references are golden samples
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


def profile_picker() -> tuple[gr.Dropdown, gr.Markdown, gr.Textbox, gr.Button]:
    """Profile dropdown, its status line, and the "Save as profile" name box and button."""
    with gr.Row():
        picker = gr.Dropdown(profiles.choices(), value=profiles.NONE, label="Inspection profile", scale=2,
                             elem_id="profile-picker", info="its references, labels and threshold")
        name = gr.Textbox(label="Save these references as a profile", placeholder="profile name", scale=2,
                          elem_id="profile-name")
        save = gr.Button("Save as profile", elem_id="profile-save", scale=1)
    status = gr.Markdown(profiles.NO_ACTIVE, elem_id="profile-status")
    return picker, status, name, save


def label_controls() -> tuple:
    """"Mark as good / defective" and the hidden confirmation row of typed corrections."""
    with gr.Row():
        good = gr.Button("Mark as good", elem_id="mark-good", size="sm")
        defective = gr.Button("Mark as defective", elem_id="mark-defective", size="sm")
    with gr.Row(visible=False, elem_id="confirm-row") as confirm_row:
        question = gr.Markdown("", elem_id="confirm-question")
        confirm = gr.Button("Confirm", elem_id="confirm-label", variant="primary", size="sm")
        cancel = gr.Button("Cancel", elem_id="cancel-label", size="sm")
    return good, defective, confirm_row, question, confirm, cancel


def evidence_panel(examples) -> tuple[EvidencePanel, ProfilePanel]:
    """Profile picker and save row, reference gallery with the golden-sample box (+ example references), verdict
    badge with the label buttons, overlay, golden-sample comparison (hidden until a result is aligned), mask,
    sensitivity, result JSON."""
    picker, status, name, save = profile_picker()
    gallery = gr.Gallery(value=None, label="Reference normal images (optional, several)", type="filepath",
                         interactive=True, columns=4, height=150, file_types=["image"], elem_id="references")
    golden = gr.Checkbox(False, label=GOLDEN_LABEL, info=GOLDEN_INFO, elem_id="golden-sample")
    gr.Examples(examples=[[examples[0][1]]], inputs=[gallery], label="Example references",
                example_labels=["two good washers"])
    badge = gr.HTML(verdict_badge(None), elem_id="verdict")
    good, defective, confirm_row, question, confirm, cancel = label_controls()
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
    active, pending = gr.State(None, time_to_live=SESSION_TTL_S), gr.State(None, time_to_live=SESSION_TTL_S)
    return (EvidencePanel(gallery, badge, overlay, mask, sens, details, comparison, golden),
            ProfilePanel(picker, status, name, save, good, defective, confirm_row, question, confirm, cancel, active,
                         pending))


def api_inputs() -> ApiInputs:
    """Hidden components behind the /inspect endpoint."""
    with gr.Row(visible=False):
        return ApiInputs(image=gr.File(label="image", file_types=None, type="filepath"),
                         refs=gr.File(label="references", file_count="multiple", type="filepath"),
                         question=gr.Textbox(label="question"), sens=gr.Number(label="sensitivity", value=0.0),
                         profile=gr.Textbox(label="profile", value=""),
                         golden=gr.Checkbox(label="golden", value=False),
                         answer=gr.Textbox(label="answer"), result=gr.JSON(label="result"),
                         button=gr.Button("inspect"))


def wire_profiles(assistant, chat: ChatPanel, ev: EvidencePanel, pp: ProfilePanel, session: gr.State) -> None:
    """Profile events -> profiles.py (undocumented endpoints); the dropdown reacts to the user only (.input)."""
    bind, hidden = handlers.bind, {"api_visibility": "undocumented"}
    shown = [pp.picker, pp.status]
    pp.picker.input(bind(profiles.on_pick, assistant), [pp.picker, chat.chatbot, ev.gallery, session, pp.active],
                    [chat.chatbot, session, pp.active, *shown, *ev.outputs], api_name="pick_profile", **hidden)
    pp.save.click(bind(profiles.on_save, assistant), [pp.name, ev.gallery, chat.chatbot, session, pp.active],
                  [chat.chatbot, session, pp.active, *shown, pp.name, *ev.outputs], api_name="save_profile", **hidden)
    labelled = [chat.chatbot, session, pp.active, pp.status, pp.pending, pp.confirm_row, pp.question, *ev.outputs]
    for button, fn in ((pp.good, profiles.mark_good), (pp.defective, profiles.mark_defective)):
        button.click(bind(fn, assistant), [chat.chatbot, session, pp.active], labelled, api_name=fn.__name__,
                     **hidden)
    pp.confirm.click(bind(profiles.on_confirm, assistant), [pp.pending, chat.chatbot, session, pp.active], labelled,
                     api_name="confirm_label", **hidden)
    pp.cancel.click(profiles.on_cancel, [chat.chatbot], [chat.chatbot, pp.pending, pp.confirm_row, pp.question],
                    api_name="cancel_label", **hidden)
    chat.box.submit(profiles.on_typed, [chat.box, session, pp.active], [pp.pending, pp.confirm_row, pp.question],
                    api_name="typed_label", **hidden)


def wire(assistant, chat: ChatPanel, ev: EvidencePanel, pp: ProfilePanel, api: ApiInputs, session: gr.State,
         api_session: gr.State) -> None:
    """Events -> handlers (the UI's endpoints are undocumented; /inspect is the documented API)."""
    bind = handlers.bind
    hidden = {"api_visibility": "undocumented"}
    chat.box.submit(bind(handlers.respond, assistant),
                    [chat.box, chat.chatbot, ev.gallery, ev.sens, session, pp.active],
                    [chat.chatbot, chat.box, session, *ev.outputs], api_name="chat", trigger_mode="always_last",
                    **hidden)
    ev.gallery.change(bind(handlers.on_references, assistant), [ev.gallery, chat.chatbot, session, pp.active],
                      [chat.chatbot, session, *ev.outputs], api_name="references", **hidden)
    ev.sens.release(handlers.on_sensitivity, [ev.sens, session], [session, *ev.outputs], api_name="sensitivity",
                    **hidden)
    ev.golden.input(bind(handlers.on_golden, assistant), [ev.golden, chat.chatbot, session],
                    [chat.chatbot, session, *ev.outputs], api_name="golden", **hidden)
    chat.new_btn.click(handlers.reset, None,
                       [chat.chatbot, chat.box, ev.gallery, session, api_session, ev.sens, *ev.outputs, ev.golden],
                       api_name="new_session", **hidden)
    api.button.click(bind(handlers.inspect, assistant),
                     [api.image, api.refs, api.question, api.sens, api.profile, api_session, api.golden],
                     [api.answer, api.result, api_session], api_name="inspect")
    wire_profiles(assistant, chat, ev, pp, session)


def build_demo(assistant, example_dir: str | os.PathLike | None = None, profile=None) -> gr.Blocks:
    """The gr.Blocks app around one loaded Assistant (weights only; per-user data lives in gr.State). `profile`: an
    ActiveProfile every new tab starts with (serve --profile)."""
    example_dir = Path(example_dir or tempfile.mkdtemp(prefix="inspection-examples-"))
    examples = make_examples(example_dir)
    with gr.Blocks(title="Inspection assistant") as demo:
        # per-user sessions (images, features, history; an API client's loaded profile); dropped after an idle hour
        session = gr.State(None, time_to_live=SESSION_TTL_S)
        api_session = gr.State(None, time_to_live=SESSION_TTL_S)  # handlers.ApiState
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=3):
                chat = chat_panel(examples)
            with gr.Column(scale=2):
                ev, pp = evidence_panel(examples)
        api = api_inputs()
        wire(assistant, chat, ev, pp, api, session, api_session)
        # each tab: the profiles stored now, and the serve --profile one active
        demo.load(lambda: (profiles.refresh_choices(profile), profiles.status(profile), profile), None,
                  [pp.picker, pp.status, pp.active], api_visibility="undocumented")
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
