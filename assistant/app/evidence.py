"""What the evidence panel shows for a session: the verdict badge, the overlay and mask pictures, the JSON, and
for an aligned result the golden-sample comparison (golden sample in the part's frame, the part, the difference)."""
from __future__ import annotations

import html

import gradio as gr
from PIL import Image

from assistant.chat import ChatSession
from assistant.expert.alignment import register
from assistant.expert.describe import Descriptor
from assistant.overlay import render_comparison, render_mask, render_overlay
from assistant.wording import alignment_sentence
from assistant.wording.defects import descriptor_words

DISPLAY_MIN_SIDE = 256  # smaller query images are enlarged for the overlay
DISPLAY_MAX_SIDE = 1024  # larger ones are shrunk for the overlay and mask pictures
COMPARISON_CAPTIONS = ("Golden sample, registered onto this part", "This part",
                       "Difference: red = extra material, blue = missing material")


def _cautions(summary: dict) -> str:
    """HTML lines under the badge: a zero-shot verdict, or a reference unlike the image."""
    # with no reference the verdict comes from in-image rarity alone, which is less reliable (docs/results.md)
    caution = ""
    if summary["references"] == 0:
        caution = ("<br><span id='zero-shot-caution' style='font-weight:400'>No reference image: zero-shot verdict "
                   "from this image alone, less reliable. Add a photo of a good part.</span>")
    if summary.get("reference_mismatch") and summary.get("review_reason") != "coverage":  # the badge says it
        extras = summary.get("extras", {})
        med, cut = extras.get("reference_median"), extras.get("reference_mismatch_cut")
        how = f" (median patch {med:.2f}, cut {cut:.2f})" if med is not None and cut is not None else ""
        caution += ("<br><span id='reference-caution' style='font-weight:400'>Most of this image differs from the "
                    f"reference{how}: check that it shows the same part, view and lighting. Verdict less reliable."
                    "</span>")
    return caution


def _alignment_note(summary: dict) -> str:
    """HTML line under the badge: how the references were compared and, when the result says, why that path
    (`alignment_reason`: the registration's verdict, or the mode asked for); nothing without a reference."""
    sentence = alignment_sentence(summary)
    if not sentence:
        return ""
    reason = (summary.get("alignment_reason") or "").strip().rstrip(".")
    if reason:
        sentence += f" Why: {reason}."
    return f"<br><span id='alignment-note' style='font-weight:400'>{html.escape(sentence)}</span>"


def _region_note(summary: dict) -> str:
    """HTML line under the badge of a flagged part: what its strongest region looks like and its type (measured,
    expert/describe.py); nothing when not flagged or not measured."""
    boxes = [b for b in summary.get("boxes", []) if b.get("descriptor")] if summary.get("pred_label") else []
    if not boxes:
        return ""
    d = dict(max(boxes, key=lambda b: b["score"])["descriptor"])
    words = descriptor_words(Descriptor(**{**d, "centroid": tuple(d["centroid"])}))
    return f"<br><span id='region-note' style='font-weight:400'>Strongest region: {html.escape(words)}</span>"


def verdict_badge(summary: dict | None) -> str:
    """HTML badge with verdict, score, threshold (and the calibrated one when the slider moved it)."""
    if not summary:
        return "<div id='verdict-badge' class='badge idle'>No image yet</div>"
    bad = summary["pred_label"]
    colour = "#c62828" if bad else "#2e7d32"
    word = "ANOMALOUS" if bad else "NORMAL"
    if summary.get("verdict") == "borderline" and summary.get("review_reason") == "coverage":
        colour = "#ef6c00"  # the good parts cannot speak for this one: the score says little either way
        word = ("BORDERLINE (the good part(s) differ from this one almost everywhere): hold it for a person; add 3-5 "
                "good parts or inspect the lot")
    elif summary.get("verdict") == "borderline":  # the score lies within the threshold's uncertainty
        colour = "#ef6c00"
        word = (f"BORDERLINE ({'just over' if bad else 'just under'} the threshold, confidence "
                f"{summary.get('confidence', 0):.0%}): have a person check it")
    cal = summary.get("extras", {}).get("calibrated_threshold")
    cal_txt = f" (calibrated {cal:.3g})" if cal is not None else ""
    where = f" · {summary['size']} at the {summary['position']}" if bad and summary.get("position") else ""
    return (f"<div id='verdict-badge' class='badge' style='background:{colour};color:white;padding:8px 12px;"
            f"border-radius:8px;font-weight:600'>{word}{html.escape(where)}<br><span style='font-weight:400'>"
            f"score {summary['pred_score']:.3g} · threshold {summary['threshold']:.3g}{cal_txt} · "
            f"{summary['references']} reference(s)</span>{_region_note(summary)}{_alignment_note(summary)}"
            f"{_cautions(summary)}</div>")


def display_image(image: Image.Image) -> Image.Image:
    """The query as shown: tiny images enlarged to DISPLAY_MIN_SIDE, huge ones shrunk to DISPLAY_MAX_SIDE."""
    side = max(image.size)
    if DISPLAY_MIN_SIDE <= side <= DISPLAY_MAX_SIDE:
        return image
    f = (DISPLAY_MIN_SIDE if side < DISPLAY_MIN_SIDE else DISPLAY_MAX_SIDE) / side
    size = (max(1, round(image.width * f)), max(1, round(image.height * f)))
    return image.resize(size, Image.NEAREST if f > 1 else Image.BILINEAR)


def golden_sample(query: Image.Image, references: list[Image.Image], result) -> Image.Image | None:
    """The reference an aligned result was compared with (None when the result is not aligned). The result keeps
    only the registration; with several references each is registered again at its size and the best is taken
    by the expert's own rule (golden.best_registration: good ones first, then the higher correlation)."""
    reg = result.registration
    if result.alignment != "aligned" or reg is None or not references:
        return None
    if len(references) == 1:
        return references[0]
    regs = [register(query, r, side=int(reg.size[0])) for r in references]
    return references[max(range(len(regs)), key=lambda j: (regs[j].good, regs[j].correlation))]


def comparison_gallery(session: ChatSession | None) -> list[tuple] | None:
    """[(picture, caption)] x 3 for the golden-sample panel (render_comparison at the overlay's display size), or
    None when the session's result is not aligned."""
    if session is None or not session.has_image:
        return None
    result = session.result
    reference = golden_sample(session.query, session.references, result)
    if reference is None:
        return None
    material = session.assistant.cfg.expert.material
    pictures = render_comparison(display_image(session.query), reference, result.registration, material)
    return list(zip(pictures, COMPARISON_CAPTIONS))


def evidence_outputs(session: ChatSession | None):
    """(overlay, mask, badge html, result json, golden-sample comparison update) for the session's current
    result; the comparison is shown for aligned results only."""
    gallery = comparison_gallery(session)
    comparison = gr.update(value=gallery, visible=gallery is not None)
    if session is None or not session.has_image:
        return None, None, verdict_badge(None), None, comparison
    result, summary = session.result, session.summary()
    image = display_image(session.query)
    mask_size = image.size if max(session.query.size) > DISPLAY_MAX_SIDE else None
    return render_overlay(image, result), render_mask(result, mask_size), verdict_badge(summary), summary, comparison


def no_text_answer(result) -> str:
    """Shown when the language model produced no text: the expert's verdict in words."""
    where = f", {result.size} region at the {result.position}" if result.pred_label and result.position else ""
    verdict = "anomalous" if result.pred_label else "normal"
    return (f"(The language model gave no text.) The expert's verdict: {verdict}"
            f"{where}; score {result.pred_score:.3g} against the calibrated threshold {result.threshold:.3g}.")
