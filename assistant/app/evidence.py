"""What the evidence panel shows for a session: the verdict badge, the overlay and mask pictures, the JSON."""
from __future__ import annotations

import html

from PIL import Image

from assistant.chat import ChatSession
from assistant.overlay import render_mask, render_overlay

DISPLAY_MIN_SIDE = 256  # smaller query images are enlarged for the overlay
DISPLAY_MAX_SIDE = 1024  # larger ones are shrunk for the overlay and mask pictures


def _cautions(summary: dict) -> str:
    """HTML lines under the badge: a zero-shot verdict, or a reference unlike the image."""
    # with no reference the verdict comes from in-image rarity alone, which is less reliable (docs/results.md)
    caution = ""
    if summary["references"] == 0:
        caution = ("<br><span id='zero-shot-caution' style='font-weight:400'>No reference image: zero-shot verdict "
                   "from this image alone, less reliable. Add a photo of a good part.</span>")
    if summary.get("reference_mismatch"):  # most of the image is unlike the reference(s): wrong part, view or light?
        extras = summary.get("extras", {})
        med, cut = extras.get("reference_median"), extras.get("reference_mismatch_cut")
        how = f" (median patch {med:.2f}, cut {cut:.2f})" if med is not None and cut is not None else ""
        caution += ("<br><span id='reference-caution' style='font-weight:400'>Most of this image differs from the "
                    f"reference{how}: check that it shows the same part, view and lighting. Verdict less reliable."
                    "</span>")
    return caution


def verdict_badge(summary: dict | None) -> str:
    """HTML badge with verdict, score, threshold (and the calibrated one when the slider moved it)."""
    if not summary:
        return "<div id='verdict-badge' class='badge idle'>No image yet</div>"
    bad = summary["pred_label"]
    colour = "#c62828" if bad else "#2e7d32"
    word = "ANOMALOUS" if bad else "NORMAL"
    if summary.get("verdict") == "borderline":  # the score lies within the threshold's uncertainty
        colour = "#ef6c00"
        word = (f"BORDERLINE ({'just over' if bad else 'just under'} the threshold, confidence "
                f"{summary.get('confidence', 0):.0%}): have a person check it")
    cal = summary.get("extras", {}).get("calibrated_threshold")
    cal_txt = f" (calibrated {cal:.3g})" if cal is not None else ""
    where = f" · {summary['size']} at the {summary['position']}" if bad and summary.get("position") else ""
    return (f"<div id='verdict-badge' class='badge' style='background:{colour};color:white;padding:8px 12px;"
            f"border-radius:8px;font-weight:600'>{word}{html.escape(where)}<br><span style='font-weight:400'>"
            f"score {summary['pred_score']:.3g} · threshold {summary['threshold']:.3g}{cal_txt} · "
            f"{summary['references']} reference(s)</span>{_cautions(summary)}</div>")


def evidence_outputs(session: ChatSession | None):
    """(overlay, mask, badge html, result json) for the session's current result."""
    if session is None or not session.has_image:
        return None, None, verdict_badge(None), None
    result = session.result
    summary = session.summary()
    image = session.query
    side = max(image.size)
    if side < DISPLAY_MIN_SIDE or side > DISPLAY_MAX_SIDE:  # enlarge tiny images, shrink huge ones (display only)
        f = (DISPLAY_MIN_SIDE if side < DISPLAY_MIN_SIDE else DISPLAY_MAX_SIDE) / side
        size = (max(1, round(image.width * f)), max(1, round(image.height * f)))
        image = image.resize(size, Image.NEAREST if f > 1 else Image.BILINEAR)
    mask_size = image.size if side > DISPLAY_MAX_SIDE else None
    return render_overlay(image, result), render_mask(result, mask_size), verdict_badge(summary), summary


def no_text_answer(result) -> str:
    """Shown when the language model produced no text: the expert's verdict in words."""
    where = f", {result.size} region at the {result.position}" if result.pred_label and result.position else ""
    verdict = "anomalous" if result.pred_label else "normal"
    return (f"(The language model gave no text.) The expert's verdict: {verdict}"
            f"{where}; score {result.pred_score:.3g} against the calibrated threshold {result.threshold:.3g}.")
