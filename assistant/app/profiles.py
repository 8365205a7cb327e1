"""Inspection-profile handlers of the app: pick a profile, save the references as one, mark the part good or
defective (buttons, or a typed correction once the user confirms it). Like handlers.py: module functions whose first
parameter is the Assistant (bound when the app is built).

The active profile travels in its own gr.State (an ActiveProfile, profile_fit.py). While one is active, its references
and labelled good images are the session's references, judged with the profile's refitted threshold; the gallery is
used again when "none" is picked. A label stores the part's image in the profile, refits it (calibration.json
written) and judges the part again with the new state.

    on_pick        the profile dropdown: activate a profile (refit, nothing written) or "none"
    on_save        "Save as profile": a new profile from the session's (else the gallery's) references
    mark_good, mark_defective    the buttons beside the verdict
    on_typed       a typed correction ("this one is fine"): shows the confirmation row
    on_confirm, on_cancel        the confirmation row's buttons
"""
from __future__ import annotations

import gradio as gr

from assistant.app.evidence import evidence_outputs
from assistant.app.handlers import SKIP_EVIDENCE, file_path, load_references, typed_label
from assistant.chat import ChatError, ChatSession, image_fingerprint
from assistant.imaging import ImageError, load_image
from assistant.profile import DEFAULT_CONFIG, Profile, ProfileError, list_profiles
from assistant.profile_fit import ActiveProfile, activate, mark
from assistant.wording import (
    CANCELLED,
    NO_PART,
    NO_PROFILE,
    confirm_question,
    label_ack,
    profile_status,
)

NONE = "none"  # the dropdown's choice for "no profile: the gallery's references"
NO_ACTIVE = "No profile active: the gallery's images are the references."
FAILURES = (ProfileError, ImageError, ChatError, RuntimeError, OSError)


def choices() -> list[str]:
    """The dropdown's choices: "none", then the stored profiles."""
    return [NONE, *list_profiles()]


def refresh_choices(active: ActiveProfile | None = None):
    """Dropdown update with the profiles stored now (page load: profiles made by the CLI meanwhile appear)."""
    return gr.update(choices=choices(), value=active.profile.name if active else NONE)


def status(active: ActiveProfile | None) -> str:
    """The profile status line (markdown)."""
    if active is None:
        return NO_ACTIVE
    return profile_status(active.profile.name, active.profile.counts(), active.calibration)


def use_profile(session: ChatSession | None, active: ActiveProfile) -> None:
    """The session's references become the profile's images, judged with its state (nothing is refitted)."""
    if session is not None:
        session.set_references(active.images, state=active.state)


def _say(chat: list, text: str) -> list:
    return [*chat, {"role": "assistant", "content": text}]


def _evidence(session: ChatSession | None) -> tuple:
    return evidence_outputs(session) if session is not None and session.has_image else (gr.skip(),) * SKIP_EVIDENCE


# picker and save ------------------------------------------------------------------------------------
def on_pick(assistant, name, chat, gallery, session, active):
    """Dropdown: activate the named profile (its references + good labels, its refitted threshold), or "none"
    (the gallery's images again). -> (chat, session, active, dropdown, status, *evidence)"""
    chat = list(chat or [])
    try:
        if not name or name == NONE:
            active = None
            if session is not None and session.has_image:
                for err in load_references(session, gallery, assistant.cfg.serve.max_pixels):
                    chat = _say(chat, f"⚠️ {err}")
            chat = _say(chat, NO_ACTIVE)
        else:
            active = activate(Profile.load(name), assistant.expert, assistant.tower)
            use_profile(session, active)
            chat = _say(chat, status(active))
    except FAILURES as e:
        chat = _say(chat, f"⚠️ Profile {name!r} was not used: {e}")
    return chat, session, active, refresh_choices(active), status(active), *_evidence(session)


def current_references(session: ChatSession | None, gallery, max_pixels: int) -> list:
    """The session's references; before any image, the gallery's (ImageError names a bad file)."""
    if session is not None and session.references:
        return list(session.references)
    return [load_image(file_path(x), max_pixels) for x in (gallery or [])]


def on_save(assistant, name, gallery, chat, session, active):
    """"Save as profile": a new profile of the current references, fitted (calibration.json written) and made
    active. -> (chat, session, active, dropdown, status, name box, *evidence)"""
    chat, name = list(chat or []), (name or "").strip()
    try:
        refs = current_references(session, gallery, assistant.cfg.serve.max_pixels)
        golden = bool(getattr(session, "golden", False))  # the golden-sample box: the references are golden samples
        profile = Profile.create(name, refs, config=assistant.source or DEFAULT_CONFIG, golden=golden)
        active = activate(profile, assistant.expert, assistant.tower, save=True)
        use_profile(session, active)
        chat = _say(chat, f"Saved {len(refs)} reference(s) as profile {name!r}. {status(active)}")
        box = gr.update(value="")
    except FAILURES as e:
        chat, box = _say(chat, f"⚠️ The profile was not saved: {e}"), gr.skip()
    return chat, session, active, refresh_choices(active), status(active), box, *_evidence(session)


# labels ---------------------------------------------------------------------------------------------
def hidden_confirmation() -> tuple:
    """(pending, confirmation row, its question) with nothing pending."""
    return None, gr.update(visible=False), ""


def _mark(assistant, label: str, chat, session, active):
    """Store the session's part as `label` in the active profile, refit, judge it again.
    -> (chat, session, active, status, pending, confirmation row, question, *evidence)"""
    chat = list(chat or [])
    if active is None:
        chat = _say(chat, f"⚠️ {NO_PROFILE}")
    elif session is None or not session.has_image:
        chat = _say(chat, f"⚠️ {NO_PART}")
    else:
        try:
            active = mark(active, session.query, label, assistant.expert, assistant.tower)
            use_profile(session, active)
            chat = _say(chat, label_ack(label, active.profile.counts(), active.threshold))
        except FAILURES as e:
            chat = _say(chat, f"⚠️ The part was not marked {label}: {e}")
    return chat, session, active, status(active), *hidden_confirmation(), *_evidence(session)


def mark_good(assistant, chat, session, active):
    """"Mark as good": the part joins the profile's labelled good images."""
    return _mark(assistant, "good", chat, session, active)


def mark_defective(assistant, chat, session, active):
    """"Mark as defective": the part joins the profile's labelled defective images."""
    return _mark(assistant, "defective", chat, session, active)


def on_typed(message, session, active):
    """A typed correction with a profile active: the confirmation row appears (nothing is labelled yet).
    -> (pending, confirmation row, question)"""
    message = message or {}
    label = typed_label(message.get("text") or "", session, message.get("files"))
    if label is None or active is None:
        return gr.skip(), gr.skip(), gr.skip()
    pending = (label, image_fingerprint(session.query))
    return pending, gr.update(visible=True), confirm_question(label, active.profile.name)


def on_confirm(assistant, pending, chat, session, active):
    """"Confirm": the pending typed correction labels the part it was said about (if it is still in view)."""
    if not pending:
        return list(chat or []), session, active, status(active), *hidden_confirmation(), *_evidence(session)
    label, sha = pending
    if session is None or not session.has_image or image_fingerprint(session.query) != sha:
        chat = _say(list(chat or []), f"⚠️ {CANCELLED} The part it was said about is no longer in view.")
        return chat, session, active, status(active), *hidden_confirmation(), *_evidence(session)
    return _mark(assistant, label, chat, session, active)


def on_cancel(chat):
    """"Cancel": the pending correction is dropped. -> (chat, pending, confirmation row, question)"""
    return _say(list(chat or []), CANCELLED), *hidden_confirmation()
