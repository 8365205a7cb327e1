"""ChatSession: one conversation about one query image with 0..k reference normal images.

    session = ChatSession(assistant, "part.png", references=["good.png"])
    for chunk in session.ask("Is there any anomaly?"):   # streamed text
        print(chunk, end="")
    session.result                                        # AnomalyResult behind the answer
    session.ask("Where?")                                 # follow-up: no image is encoded again

Features are cached per session: the query and every reference are encoded once by the vision tower;
adding or removing a reference re-fits the expert from the cached reference features and re-predicts from
the cached query features; a new query reuses the fitted references (one fit per reference change), and
`set_references(images, state=...)` takes a state fitted elsewhere (an inspection profile's, with its labels).
`ChatSession(..., golden=True)` / `set_golden(True)`: the user says the references are golden samples (same design,
same fixture), so they are compared with expert.alignment "golden" (re-judged from the cached features).
The sensitivity control moves the calibrated thresholds (`apply_sensitivity`) and re-labels from the stored score
and map; nothing is re-encoded. Parts inspected one after another with the same references form a lot: from LOT_MIN
of them, the lot's score distribution joins the references' threshold (`AnomalyExpert.lot_decide`); changing the
references starts a new lot. Sessions are plain objects holding their own data; nothing module-level holds user
data (the Assistant holds only weights).
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator, Sequence

from PIL import Image

from assistant.expert import LOT_MIN, SENSITIVITY_RANGE, AnomalyResult, apply_sensitivity
from assistant.grounded import golden_note
from assistant.imaging import DEFAULT_MAX_PIXELS, ImageInput, load_image
from assistant.vision.base import VisionOutput, cat_outputs
from assistant.wording import REFERENCE_CAUTION, borderline_note, says_borderline, verdict_turn


class ChatError(ValueError):
    """A chat request that cannot be served (no image yet, empty question, bad reference index)."""


def image_fingerprint(img: Image.Image) -> str:
    """Short content hash of an RGB image (lets API clients check which image a result belongs to)."""
    return hashlib.sha1(img.tobytes() + repr(img.size).encode()).hexdigest()[:16]




class ChatSession:
    """A multi-turn conversation about one query image, with cached features (see module docstring)."""

    def __init__(self, assistant, query: ImageInput | None = None, references: Sequence[ImageInput] = (),
                 sensitivity: float = 0.0, max_pixels: int = DEFAULT_MAX_PIXELS, max_history_turns: int = 3,
                 open_with_verdict: bool = True, golden: bool = False):
        self.assistant = assistant  # shared weights only
        # the user says the references are golden samples (same design, same fixture): alignment "golden"
        self.golden = bool(golden)
        # first question: the expert's verdict as an earlier turn (verdict_turn)
        self.open_with_verdict = open_with_verdict
        self.max_pixels = max_pixels
        self.history: list[tuple[str, str]] = []  # (question, answer) turns
        self.max_history_turns = max_history_turns  # earlier turns the LM sees (bounds prompt length and latency)
        self.sensitivity = float(sensitivity)
        self.query: Image.Image | None = None
        self.references: list[Image.Image] = []
        self._query_out: VisionOutput | None = None  # (1, N, C_l) per level
        self._ref_outs: list[VisionOutput] = []  # one (1, N, C_l) output per reference
        self._evidence = None  # the Assistant's Evidence for the current images
        self._state = None  # the expert's ReferenceState for the current references (None: fit on next update)
        self._relabelled = None  # (raw result, lot size, sensitivity, re-labelled result)
        # parts inspected with the current references: fingerprint -> raw result
        self._lot: dict[str, AnomalyResult] = {}
        self._said: tuple = (None, set())  # (Evidence, notes already said about it): each note once per image
        self._lock = threading.RLock()  # one image update at a time per session
        for ref in references:
            self.add_reference(ref, refresh=False)
        if query is not None:
            self.set_query(query)

    # images -----------------------------------------------------------------------------------------
    def _encode(self, img: Image.Image) -> VisionOutput:
        return self.assistant.tower.encode([img])

    def set_query(self, image: ImageInput) -> AnomalyResult:
        """Load and encode a new query image; starts a new conversation (history cleared)."""
        img = load_image(image, self.max_pixels)
        with self._lock:
            result = self._update(query=(img, self._encode(img)))
            self.history = []
            return result

    def add_reference(self, image: ImageInput, refresh: bool = True) -> AnomalyResult | None:
        """Load, encode (once) and add a reference normal image; re-fits the expert."""
        img = load_image(image, self.max_pixels)
        with self._lock:
            refs = (self.references + [img], self._ref_outs + [self._encode(img)])
            return self._update(refs=refs) if refresh else self._assign(None, refs, self._evidence)

    def remove_reference(self, index: int) -> AnomalyResult | None:
        """Remove reference `index` (0-based); re-fits the expert from the remaining cached features."""
        with self._lock:
            n = len(self.references)
            if not -n <= index < n:
                raise ChatError(f"reference index {index} out of range: the session has {n} references")
            keep = [i for i in range(n) if i != index % n]
            return self._update(refs=([self.references[i] for i in keep], [self._ref_outs[i] for i in keep]))

    def set_references(self, images: Sequence[ImageInput], state=None) -> AnomalyResult | None:
        """Replace all references (images already in the session keep their cached features). `state`: the expert's
        ReferenceState already fitted on these images (a profile's, labels included); None fits them. A golden
        session (set_golden) compares with a given state's references as golden samples too."""
        loaded = [load_image(im, self.max_pixels) for im in images]
        with self._lock:
            cache = {image_fingerprint(im): out for im, out in zip(self.references, self._ref_outs)}
            outs = [cache.get(image_fingerprint(im)) or self._encode(im) for im in loaded]
            if state is not None and self.golden:
                state = self._realigned(state) or state  # no templates to realign: the state as given
            return self._update(refs=(loaded, outs), state=state)

    def set_golden(self, golden: bool) -> AnomalyResult | None:
        """The user says the references are (True) or are not (False) golden samples of the part's design shot in
        the same fixture: the references are compared with alignment "golden" (position by position whenever the
        warp is within a fixture's motion), or again in the config's mode. Judged again from the cached features:
        nothing is encoded; the lot starts again (other scores)."""
        with self._lock:
            if bool(golden) == self.golden:
                return self.result if self.has_image else None
            self.golden = bool(golden)
            state = self._realigned(self._state)  # None: fitted again from the cached reference features
            return self._update(refs=(self.references, self._ref_outs), state=state)

    def _realigned(self, state):
        """`state` with the session's alignment mode, when its golden templates allow it without a refit (the
        labels of a profile's state are kept); None when a refit is needed (or there is no state)."""
        if state is None or not getattr(state, "n_shots", 0):
            return None
        mode = "golden" if self.golden else self.assistant.cfg.expert.alignment
        if state.golden is None and mode != "free":  # no templates were built (the mode was free): fit again
            return None
        return dataclasses.replace(state, alignment=mode)

    def _update(self, query=None, refs=None, state=None) -> AnomalyResult | None:
        """Evidence for new (image, features) pairs from cached features; the session changes only on success.
        Unchanged references keep their fitted state; new ones are fitted unless `state` is given."""
        q_img, q_out = query or (self.query, self._query_out)
        r_imgs, r_outs = refs or (self.references, self._ref_outs)
        state = state if refs is not None else self._state
        evidence = None
        if q_img is not None:
            evidence = self.assistant.evidence_from_features(q_img, q_out, list(r_imgs), cat_outputs(r_outs),
                                                             state=state, golden=self.golden)
        return self._assign(query, refs, evidence, state)

    def _assign(self, query, refs, evidence, state=None) -> AnomalyResult | None:
        if query is not None:
            self.query, self._query_out = query
        if refs is not None:  # other references, other scores: the lot starts again with the current part
            self.references, self._ref_outs = list(refs[0]), list(refs[1])
            self._lot = {}
            self._state = state
        if evidence is not None and evidence is not self._evidence:  # freshly judged: its state fits the references
            self._state = evidence.state
        self._evidence = evidence
        if evidence is not None and self.references:  # a lot needs references: scores against the same ones
            self._lot[image_fingerprint(self.query)] = evidence.result
        return self.result if evidence is not None else None

    @property
    def lot_size(self) -> int:
        """Parts inspected in this session with the current references (the current one included)."""
        return len(self._lot)

    def _lot_result(self, raw: AnomalyResult) -> AnomalyResult:
        """The current part judged with the lot: from LOT_MIN parts inspected with the same references, the lot's
        own score distribution joins the references' threshold (AnomalyExpert.lot_decide), as `detect DIR` does."""
        if len(self._lot) < LOT_MIN or image_fingerprint(self.query) not in self._lot:
            return raw
        key = image_fingerprint(self.query)
        others = [r for k, r in self._lot.items() if k != key]
        return self.assistant.expert.lot_decide(others + [raw])[-1]

    # evidence ---------------------------------------------------------------------------------------
    @property
    def has_image(self) -> bool:
        return self._evidence is not None

    @property
    def raw_result(self) -> AnomalyResult:
        """The expert's result at the calibrated thresholds."""
        if self._evidence is None:
            raise ChatError("no image in this session yet: upload a query image first")
        return self._evidence.result

    @property
    def result(self) -> AnomalyResult:
        """The result at the session's sensitivity (what the answers and pictures show)."""
        raw, s, n = self.raw_result, self.sensitivity, len(self._lot)
        memo = self._relabelled
        if memo is None or memo[0] is not raw or memo[1] != n or memo[2] != s:  # once per (result, lot, sensitivity)
            judged = apply_sensitivity(self._lot_result(raw), s, self.assistant.cfg.expert.min_box_area)
            memo = self._relabelled = (raw, n, s, judged)
        return memo[3]

    @property
    def evidence(self):
        """The Assistant's Evidence with the sensitivity-adjusted result."""
        ev = self._evidence
        if ev is None:
            raise ChatError("no image in this session yet: upload a query image first")
        result = self.result
        return ev if result is ev.result else dataclasses.replace(ev, result=result)

    def set_sensitivity(self, sensitivity: float) -> AnomalyResult | None:
        """Move the thresholds relative to the calibrated ones; re-labels without re-encoding."""
        lo, hi = SENSITIVITY_RANGE
        if not lo <= float(sensitivity) <= hi:
            raise ChatError(f"sensitivity must be within [{lo}, {hi}], got {sensitivity}")
        self.sensitivity = float(sensitivity)
        return self.result if self.has_image else None

    def summary(self) -> dict:
        """Result JSON plus which images it belongs to."""
        d = self.result.to_dict()
        # a "path" key would make gradio_client treat the JSON as a file to download
        d["extras"] = {("expert_path" if k == "path" else k): v for k, v in d["extras"].items()}
        d["query"] = {"width": self.query.size[0], "height": self.query.size[1], "sha1": image_fingerprint(self.query)}
        d["references"] = len(self.references)
        d["sensitivity"] = self.sensitivity
        d["golden"] = self.golden  # the user said the references are golden samples
        return d

    # conversation -----------------------------------------------------------------------------------
    def ask(self, text: str) -> Iterator[str]:
        """Stream the answer to `text`; the turn joins the history when the stream ends (or is closed)."""
        question = (text or "").strip()
        if not question:
            raise ChatError("empty question: type a question about the image")
        evidence = self.evidence  # raises ChatError when there is no image
        return self._stream(evidence, question)

    def _stream(self, evidence, question: str) -> Iterator[str]:
        # no lock held across yields: a server may resume this generator on different threads
        parts: list[str] = []
        history = self.history[-self.max_history_turns:] if self.max_history_turns > 0 else []
        if not self.history and self.open_with_verdict:  # not shown, not kept: context for the first answer only
            history = [verdict_turn(evidence.result)]
        try:
            for chunk in self.assistant.stream_answer(evidence, question, history=history):
                parts.append(chunk)
                yield chunk
            notes = [golden_note(evidence.result, question, history), borderline_note(evidence.result)] + [
                REFERENCE_CAUTION if evidence.result.reference_mismatch and evidence.result.review_reason != "coverage"
                else None  # a coverage borderline already says it, with the remedy
            ]
            if self._said[0] is not self._evidence:
                self._said = (self._evidence, set())
            if notes[1] and says_borderline("".join(parts)):  # the answer said it in full (review, why): not again
                self._said[1].add(notes[1])
            notes = [n for n in notes if n and n not in self._said[1]]
            if notes:  # each once per image/reference change; the LM never sees them
                self._said[1].update(notes)
                yield "\n\n" + " ".join(notes)
        finally:
            self.history.append((question, "".join(parts).strip()))

    def answer(self, text: str) -> str:
        """The whole answer at once."""
        return "".join(self.ask(text)).strip()

    def reset(self) -> None:
        """Forget images, features and history."""
        with self._lock:
            self.query = self._query_out = self._evidence = self._state = None
            self.references, self._ref_outs, self.history = [], [], []
            self._lot = {}
