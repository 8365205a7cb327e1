"""Event handlers of the app: module functions whose first parameter is the loaded Assistant (bound with
`bind` when the app is built); everything about one user travels in their gr.State (a ChatSession).

    respond         chat turn: optional new image (new session), then a streamed answer
    on_references   the reference gallery changed: re-judge the session's image (not while a profile is active)
    on_sensitivity  the slider moved: re-label only, no re-encode
    on_golden       "The good part is a golden sample" ticked or cleared: the session's references are compared as
                    golden samples (ChatSession.set_golden), or again in the config's mode; no re-encode
    reset           "New session": empty chat, gallery, evidence
    inspect         the /inspect API: a question about an image (none = follow-up on the client's last one),
                    optionally judged with an inspection profile (kept loaded in the client's ApiState) and with
                    the references taken as golden samples
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from assistant.app.evidence import evidence_outputs, no_text_answer
from assistant.app.examples import DEFAULT_QUESTION
from assistant.chat import ChatError, ChatSession
from assistant.imaging import ImageError, load_image
from assistant.profile import ProfileError
from assistant.profile_fit import ActiveProfile, reactivate
from assistant.wording import confirm_prompt, parse_correction

SKIP_EVIDENCE = 5  # overlay, mask, badge, JSON, golden-sample comparison


def bind(fn: Callable, assistant) -> Callable:
    """`fn` with the assistant bound; keeps its name and docstring (Gradio's API page shows them)."""
    bound = functools.partial(fn, assistant)
    bound.__name__, bound.__doc__ = fn.__name__, fn.__doc__
    return bound


# uploads -----------------------------------------------------------------------------------------
def file_path(item) -> str | None:
    """Path from a multimodal/gallery/file value item (str, dict, FileData, (path, caption))."""
    if item is None:
        return None
    if isinstance(item, (tuple, list)):
        return file_path(item[0]) if item else None
    if isinstance(item, dict):
        return item.get("path") or item.get("name")
    return getattr(item, "path", None) or str(item)


def describe_upload(path: str | None) -> str:
    return Path(path).name if path else "the upload"


def clean_error(err: Exception, *paths: str | None) -> str:
    """Error text with server-side upload paths shortened to file names."""
    msg = str(err)
    for p in paths:
        if p:
            msg = msg.replace(f"{p}: ", "").replace(str(p), Path(p).name)
    return msg


def new_session(assistant, golden: bool = False) -> ChatSession:
    """An empty session; `golden`: the user says the references are golden samples (ChatSession.set_golden)."""
    return ChatSession(assistant, max_pixels=assistant.cfg.serve.max_pixels, golden=bool(golden))


def load_references(session: ChatSession, gallery, max_pixels: int) -> list[str]:
    """Set the session's references from the gallery; returns messages for files that failed."""
    good, errors = [], []
    for p in [file_path(x) for x in (gallery or [])]:
        try:
            good.append(load_image(p, max_pixels))
        except ImageError as e:
            errors.append(f"Reference image {describe_upload(p)} was not used: {clean_error(e, p)}")
    session.set_references(good)
    return errors


# chat ------------------------------------------------------------------------------------------------
def typed_label(text: str, session: ChatSession | None, files=()) -> str | None:
    """The label a chat message states about the part in view (wording.parse_correction); None for questions, for
    a message with a new image and before any image."""
    if files or session is None or not session.has_image:
        return None
    return parse_correction(text)


def fresh_updates(outputs: tuple) -> tuple:
    """The outputs with each gr.update dict copied: Gradio pops an update's value while sending it, so an update
    yielded twice would come the second time without its value."""
    return tuple(dict(x) if isinstance(x, dict) and x.get("__type__") == "update" else x for x in outputs)


def _say(chat: list, text: str) -> None:
    chat.append({"role": "assistant", "content": text})


def _open_image(assistant, path: str, chat: list, gallery, sensitivity, active=None,
                golden: bool = False) -> ChatSession | None:
    """A new session on the uploaded image (with the active profile's references and state, else the gallery's;
    `golden`: they are golden samples), its problems told in `chat`; None when the image could not be used."""
    chat.append({"role": "user", "content": {"path": path}})
    try:
        fresh = new_session(assistant, golden)
        fresh.set_sensitivity(float(sensitivity or 0.0))
        errors = []
        if active is not None:
            fresh.set_references(active.images, state=active.state)
        else:
            errors = load_references(fresh, gallery, assistant.cfg.serve.max_pixels)
        fresh.set_query(path)
    except ImageError as e:
        chat[-1] = {"role": "user", "content": f"📎 {describe_upload(path)}"}  # no broken picture in the chat
        _say(chat, f"⚠️ I could not use {describe_upload(path)} as an image: {clean_error(e, path)}. "
                   "Please upload a PNG, JPEG, BMP, TIFF or WebP photo of the part.")
        return None
    except (ChatError, RuntimeError) as e:  # e.g. zero-shot without trained heads: needs a reference
        _say(chat, f"⚠️ {e}")
        return None
    for err in errors:
        _say(chat, f"⚠️ {err}")
    return fresh


def respond(assistant, message, chat, gallery, sensitivity, session, active=None):
    """Chat turn: an attached image starts a new session (golden when the session before was: the box's flag lives
    in the session); the answer streams, the evidence comes first. A typed correction ("this one is fine") is not
    answered by the LM: the reply asks to confirm it (profiles.on_typed)."""
    chat = list(chat or [])
    message = message or {}
    text = (message.get("text") or "").strip()
    files = [file_path(f) for f in (message.get("files") or [])]
    skip = (gr.skip(),) * SKIP_EVIDENCE
    label = typed_label(text, session, files)
    if label is not None:
        chat.append({"role": "user", "content": text})
        _say(chat, confirm_prompt(label, active.profile.name if active is not None else None))
        yield (chat, None, session, *skip)
        return
    if files:
        golden = session is not None and session.golden
        fresh = _open_image(assistant, files[-1], chat, gallery, sensitivity, active, golden)
        if fresh is None:
            yield (chat, None, session, *skip)
            return
        session, text = fresh, text or DEFAULT_QUESTION
    if not text:
        yield (chat, None, session, *skip)
        return
    chat.append({"role": "user", "content": text})
    if session is None or not session.has_image:
        _say(chat, "Please upload a photo of the part first (drag it into the message box or click the paperclip), "
                   "then ask your question.")
        yield (chat, None, session, *skip)
        return
    _say(chat, "…")
    shown = evidence_outputs(session)
    yield (chat, None, session, *fresh_updates(shown))  # evidence first, while the answer is generated
    answer = ""
    for chunk in session.ask(text):
        answer += chunk
        chat[-1] = {"role": "assistant", "content": answer}
        yield (chat, None, session, *skip)
    chat[-1] = {"role": "assistant", "content": answer.strip() or no_text_answer(session.result)}
    yield (chat, None, session, *fresh_updates(shown))  # final value carries the evidence too (API clients read it)


def on_references(assistant, gallery, chat, session, active=None):
    """The gallery changed: the session's image is judged again against the new references (while a profile is
    active its images stay the references)."""
    if session is None or not session.has_image:
        return chat, session, *(gr.skip(),) * SKIP_EVIDENCE
    chat = list(chat or [])
    if active is not None:
        _say(chat, f"Profile {active.profile.name!r} is active: its images stay the references; choose "
                   "\"none\" to judge with the gallery's.")
        return chat, session, *(gr.skip(),) * SKIP_EVIDENCE
    try:
        errors = load_references(session, gallery, assistant.cfg.serve.max_pixels)
    except (ImageError, ChatError, RuntimeError) as e:
        errors = [f"the references were not changed: {e}"]
    for err in errors:
        _say(chat, f"⚠️ {err}")
    verdict = "anomalous" if session.result.pred_label else "normal"
    _say(chat, f"Evidence updated with {len(session.references)} reference image(s): "
               f"{verdict}, score {session.result.pred_score:.3g}.")
    return chat, session, *evidence_outputs(session)


def on_sensitivity(sensitivity, session):
    """The slider moved: the threshold moves relative to the calibrated one (re-label only)."""
    if session is None:
        return session, *(gr.skip(),) * SKIP_EVIDENCE
    session.set_sensitivity(float(sensitivity))
    return session, *evidence_outputs(session)


def on_golden(assistant, golden, chat, session):
    """The golden-sample box changed: the session's image is judged again with its references compared as golden
    samples (same design, same fixture: position by position whenever the part registers within a fixture's
    motion), or in the config's mode; the chat says which path the comparison took and why. Before any image an
    empty session keeps the flag for the first one (respond)."""
    if session is None:
        return chat, new_session(assistant, bool(golden)), *(gr.skip(),) * SKIP_EVIDENCE
    if not session.has_image:
        session.set_golden(bool(golden))
        return chat, session, *(gr.skip(),) * SKIP_EVIDENCE
    chat = list(chat or [])
    try:
        session.set_golden(bool(golden))
    except (ChatError, RuntimeError, ValueError) as e:
        _say(chat, f"⚠️ the comparison was not changed: {e}")
        return chat, session, *(gr.skip(),) * SKIP_EVIDENCE
    if session.references:
        r = session.result
        said = "golden samples" if golden else "good parts (the configured comparison)"
        why = f": {r.alignment_reason}" if r.alignment_reason else ""
        _say(chat, f"References taken as {said}; compared {PATH_WORDS.get(r.alignment, r.alignment)}{why}.")
    return chat, session, *evidence_outputs(session)


PATH_WORDS = {"aligned": "position by position", "free": "as a bag of patches"}  # AnomalyResult.alignment


def reset():
    """New session: chat, message box, gallery, both sessions, slider, evidence, golden-sample box."""
    return [], None, None, None, None, 0.0, *evidence_outputs(None), False


# stateless-or-follow-up API ----------------------------------------------------------------------
@dataclass
class ApiState:
    """One /inspect client's state (its gr.State)."""

    session: ChatSession | None = None  # the client's last image, for follow-ups
    loaded: ActiveProfile | None = None  # the last profile it named, kept loaded while the stored one is unchanged
    in_use: ActiveProfile | None = None  # the profile the session's image is judged with (None: the references sent)


def _judge_with_profile(assistant, image, references, name: str, state: ApiState, golden: bool = False) -> ApiState:
    """The client's state after a call naming profile `name`: loaded (or reused), a new image judged with it (its
    references golden samples when `golden`), or the last image judged again when it was judged otherwise."""
    loaded = reactivate(name, assistant.expert, assistant.tower, state.loaded)
    session, in_use = state.session, state.in_use
    if image is not None:
        if references:
            raise ChatError(f"profile {name!r} brings its own references: expected no reference files with it, got "
                            f"{len(references)}")
        session = new_session(assistant, golden)
        session.set_references(loaded.images, state=loaded.state)
        session.set_query(file_path(image))
    elif session is None:
        raise ChatError("no image: send a query image with the first question")
    elif in_use is not loaded:
        session.set_references(loaded.images, state=loaded.state)
    return ApiState(session, loaded, loaded)


def _judge(assistant, image, references, state: ApiState, golden: bool = False) -> ApiState:
    """The client's state after a call naming no profile: a new image judged with `references` (golden samples
    when `golden`), else a follow-up (the last image, judged as before)."""
    if image is None:
        if state.session is None:
            raise ChatError("no image: send a query image with the first question")
        return state
    session = new_session(assistant, golden)
    session.set_references([file_path(r) for r in (references or [])])
    session.set_query(file_path(image))
    return ApiState(session, state.loaded, None)


def inspect(assistant, image, references, question, sensitivity, profile, state, golden=False):
    """Answer `question` about `image` (with `references`, or with the inspection profile named `profile`: its images,
    labels and refitted threshold); image None = follow-up on the last one. `golden` (optional, last): the references
    are golden samples of the part's design in the same fixture; on a follow-up, True judges the last image again
    that way and False leaves it as it was judged."""
    question = (question or "").strip() or DEFAULT_QUESTION
    name, state, golden = (profile or "").strip(), state or ApiState(), bool(golden)
    try:
        if name:
            state = _judge_with_profile(assistant, image, references, name, state, golden)
        else:
            state = _judge(assistant, image, references, state, golden)
        if golden:  # a follow-up saying so: the last image judged again (nothing when already golden)
            state.session.set_golden(True)
        state.session.set_sensitivity(float(sensitivity or 0.0))
    except (ImageError, ChatError, ProfileError, RuntimeError, OSError) as e:
        paths = [file_path(image), *(file_path(r) for r in (references or []))]
        raise gr.Error(f"bad request: {clean_error(e, *paths)}", print_exception=False) from None
    return state.session.answer(question), state.session.summary(), state
