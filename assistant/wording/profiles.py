"""Words about inspection profiles said outside the LM, and the parser of typed corrections.

A typed correction is a statement about the part in view ("this one is fine", "that is a defect", "it's good");
questions ("Is it good?", "What kind of defect is it?") are never corrections. The app asks the user to confirm a
parsed correction before it labels anything.
"""
from __future__ import annotations

import re

LABELS = ("good", "defective")
NO_PROFILE = ("No inspection profile is active: choose one in the profile panel, or save these references as a "
              "profile first; then the part can be marked good or defective.")
NO_PROFILE_TERMINAL = ("No inspection profile is active, so nothing was marked: start the chat with --profile NAME "
                       "(`profile create NAME --reference R` makes one) to mark parts good or defective.")
NO_PART = "Please upload a photo of the part first; then it can be marked good or defective."
CANCELLED = "Cancelled: nothing was labelled."

# a correction opens with the part ("this one is", "it's", "that part was") and says what it is
_OPENER = r"^(?:(?:no|nope|actually|well|but|ok|okay|hmm)[\s,]+)*(?:i think\s+)?"
_SUBJECT = r"(?:this|that|it)(?:\s+(?:one|part|piece|image|sample))?\s+(?:is|was|looks|seems)\s+"
_GOOD = r"(?:fine|good|ok|okay|normal|acceptable|alright|all right|perfect|flawless|" \
        r"not (?:a )?(?:defect|defective|bad|broken|damaged|faulty|anomalous))"
_BAD = r"(?:defective|bad|broken|damaged|faulty|anomalous|scrap|a defect|a reject|not (?:fine|good|ok|okay|normal|" \
       r"acceptable))"
_GOOD_RE = re.compile(_OPENER + _SUBJECT + r"(?:actually\s+|really\s+)?" + _GOOD + r"(?:\s+(?:actually|too|then))?$")
_BAD_RE = re.compile(_OPENER + _SUBJECT + r"(?:actually\s+|really\s+)?" + _BAD + r"(?:\s+(?:actually|too|then))?$")
_MARK_RE = re.compile(_OPENER + r"(?:please\s+)?(?:mark|label)\s+(?:it|this|that)(?:\s+one)?\s+(?:as\s+)?"
                      r"(good|defective|ok|fine|bad)$")
_FALSE_ALARM_RE = re.compile(_OPENER + r"(?:that(?: is|'s)?|it(?: is|'s)?|this(?: is)?)?\s*(?:a\s+)?false alarm$")


def _normalise(text: str) -> str:
    """Lower case, apostrophes straightened and contractions opened, final punctuation dropped."""
    t = (text or "").strip().lower().replace("\u2019", "'")
    t = re.sub(r"\b(it|that|this|one)'s\b", r"\1 is", t)
    t = re.sub(r"\b(is|was)n't\b", r"\1 not", t)
    return re.sub(r"\s+", " ", t.rstrip(" .!")).strip()


def parse_correction(text: str) -> str | None:
    """'good' or 'defective' when `text` tells the assistant what the part in view is; None for anything else
    (questions included: a text with a question mark is never a correction)."""
    if not text or "?" in text:
        return None
    t = _normalise(text)
    m = _MARK_RE.fullmatch(t)
    if m:
        return "good" if m.group(1) in ("good", "ok", "fine") else "defective"
    if _FALSE_ALARM_RE.fullmatch(t):
        return "good"
    if _GOOD_RE.fullmatch(t):
        return "good"
    if _BAD_RE.fullmatch(t):
        return "defective"
    return None


def profile_words(counts: dict) -> str:
    """'2 reference(s), 3 good and 1 defective label(s)'."""
    return f"{counts['references']} reference(s), {counts['good']} good and {counts['defective']} defective label(s)"


def loo_words(cal: dict) -> str:
    """'overkill 0.00 of 3 good, miss 0.50 of 2 defective' (n/a where there are no such labels)."""
    def rate(key: str, n: int, kind: str) -> str:
        value = cal.get(key)
        return f"{value:.2f} of {n} {kind}" if value is not None else f"n/a (no {kind} labels)"

    return (f"overkill {rate('loo_overkill', cal.get('n_good', 0), 'good')}, "
            f"miss {rate('loo_miss', cal.get('n_defective', 0), 'defective')}")


def _rate(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and value == value else "n/a"


def profile_status(name: str, counts: dict, cal: dict) -> str:
    """Markdown of the active profile: counts, threshold, leave-one-out and expected error rates."""
    return (f"**Profile {name!r}** (active): {profile_words(counts)}. Threshold **{cal['threshold']:.4g}** (before "
            f"labels {cal['prior_threshold']:.4g}). Leave-one-out on the labels: {loo_words(cal)}. Expected "
            f"overkill {_rate(cal.get('expected_overkill'))}, miss {_rate(cal.get('expected_miss'))}.")


def label_ack(label: str, counts: dict, threshold: float, rates: dict | None = None) -> str:
    """The one-sentence acknowledgement of a label; with `rates` (the fit's calibration), its estimated overkill and
    miss too (the app shows them in the status line instead)."""
    estimated = (f", estimated overkill {_rate(rates.get('expected_overkill'))} and miss "
                 f"{_rate(rates.get('expected_miss'))}" if rates is not None else "")
    return (f"Noted: this part is marked {label}; the profile now has {counts['good']} good and "
            f"{counts['defective']} defective labels, threshold {threshold:.3g}{estimated}.")


def confirm_question(label: str, name: str) -> str:
    """What the confirmation row asks before a typed correction labels the part."""
    return f"Confirm: mark this part as **{label}** in profile {name!r}?"


def confirm_prompt(label: str, name: str | None) -> str:
    """The chat's reply to a typed correction (said outside the LM): confirm first, or how to get a profile."""
    if name is None:
        return f"I read that as: this part is {label}. {NO_PROFILE}"
    return f"I read that as: this part is {label}. Confirm below to add it to profile {name!r} (nothing is saved yet)."
