"""What each anomalous sample looks like, measured as the served expert measures its regions, for answers that
follow the evidence (build --descriptor-answers; lvlm.evidence_looks).

The manifest record gains `looks`: {"descriptor": Descriptor.to_dict() of the ground-truth mask (expert/describe.py;
an aligned sample is measured against its golden laid over the query, as served), "type": the vocabulary word the
evidence names, or "" when it abstains}. The type is the synthesis method's word (METHOD_TYPES; an aligned sample's
change, CHANGE_TYPES, which served evidence always names) on a seeded half of the samples and not named on the
other half, so a trained LM learns to say what the evidence says in both forms, never to guess a type.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from assistant.expert.defect_type import CHANGE_TYPES, METHOD_TYPES, VOCABULARY
from assistant.expert.describe import Descriptor, measure
from assistant.imaging import load_image, load_mask
from data_synth.aligned import lay

NAMED_SHARE = 0.5  # share of (non-aligned) samples whose evidence names the type


def golden_laid(out: Path, rec: dict, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8: an aligned record's golden warped onto its query (the warp the query was made with)."""
    return lay(np.asarray(load_image(out / rec["references"][0])), np.asarray(rec["params"]["warp"], np.float64), size)


def method_word(rec: dict) -> str:
    """The vocabulary word of the record's synthesis method ("" when it maps to none)."""
    return METHOD_TYPES.get(rec.get("method") or "", "")


def evidence_type(rec: dict, seed: int) -> str:
    """The type word the sample's evidence says ("" = not named)."""
    if rec.get("aligned"):
        return CHANGE_TYPES.get(rec.get("change") or "", "")
    word = method_word(rec)
    named = np.random.default_rng([seed, int(rec["id"]), 3]).random() < NAMED_SHARE
    return word if named else ""


def record_looks(out: str | Path, rec: dict, seed: int) -> dict | None:
    """The `looks` field of one manifest record; None for a normal one (or one without a mask)."""
    if not rec.get("label") or not rec.get("mask"):
        return None
    out = Path(out)
    img = load_image(out / rec["image"])
    mask = load_mask(out / rec["mask"], img.size)
    if not mask.any():
        return None
    reference = golden_laid(out, rec, img.size) if rec.get("aligned") else None
    d = measure(img, mask, reference)
    return {"descriptor": d.to_dict(), "type": evidence_type(rec, seed)}


def descriptor_of(looks: dict) -> Descriptor:
    """The Descriptor of a record's `looks`, its type set as the evidence says it (no probabilities)."""
    fields = dict(looks["descriptor"], centroid=tuple(looks["descriptor"]["centroid"]))
    d = Descriptor(**fields)
    d.defect_type, d.type_confidence, d.type_probs = looks["type"], 1.0 if looks["type"] else 0.0, {}
    return d


def other_type(rng: np.random.Generator, not_this: str) -> str:
    """A vocabulary word other than `not_this` (the second word of an either-or question)."""
    return str(rng.choice([t for t in VOCABULARY if t != not_this]))
