"""Descriptions written from defect metadata (never from anything the mask does not support).

Every sentence that states a place uses the exact 3x3 grid word from the mask centroid
(`position_phrase` keeps the word intact: "in the top left", "at the top", "on the right", "in the center").
Every sentence that states a size uses the size word from the area fraction and the rounded percentage.
"""
from __future__ import annotations

import numpy as np

from assistant.wording import MATERIAL_NOUNS, article, change_sentence, percent, position_phrase, type_name

TYPE_SYNONYMS = {
    "scratch": ["scratch", "scratch", "scrape", "score mark"],
    "crack": ["crack", "crack", "fracture line"],
    "hole": ["hole", "hole", "puncture"],
    "dent": ["dent", "dent", "dented spot"],
    "stain": ["stain", "stain", "blot of contamination"],
    "missing piece": ["missing piece", "missing piece", "broken-off area"],
    "color defect": ["color defect", "color defect", "discolored area"],
    "deformation": ["deformation", "deformation", "bent region"],
    "foreign patch": ["foreign patch", "foreign patch", "irregular patch"],
    "misplaced patch": ["misplaced patch", "misplaced patch", "out-of-place patch"],
    "scar": ["scar", "scar", "thin scar mark"],
    "contamination": ["contamination", "contamination", "foreign material"],
}  # defect_type -> words used in free descriptions (the first is the canonical name)

LOOKS = {
    "scratch": "a thin line that cuts across the surface",
    "crack": "a dark, jagged line with branches",
    "hole": "a dark opening through the material",
    "dent": "a shaded depression in the surface",
    "stain": "a {color} blotch on the surface",
    "missing piece": "a region where material is missing and the background shows through",
    "color defect": "a region whose color differs from the rest",
    "deformation": "a region whose shape is bent or shifted",
    "foreign patch": "a patch whose texture does not match its surroundings",
    "misplaced patch": "a displaced patch with a sharp edge",
    "scar": "a thin elongated mark with a different tone",
    "contamination": "irregular blotches of foreign material",
}  # defect_type -> what it looks like


def pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def describe(meta: dict, noun: str, rng: np.random.Generator) -> str:
    """One or two sentences about the defect (or its absence), truthful to the metadata."""
    if meta.get("label", 1) == 0 or not meta.get("defect_type"):
        return pick(rng, [
            f"The {noun} looks normal: no defects are visible.",
            f"A normal {noun} with no visible anomaly.",
            f"No anomaly: the {noun} has no scratches, cracks, stains or missing parts.",
            f"This {noun} is free of defects.",
        ])
    if meta.get("aligned"):
        return describe_aligned(meta)
    t = meta["defect_type"]
    word = pick(rng, TYPE_SYNONYMS.get(t, [t]))
    pos = position_phrase(meta["position"])
    size, pct, sev = meta["size"], percent(meta["area_fraction"]), meta["severity"]
    look = LOOKS.get(t, "an anomalous region").format(color=(meta.get("params") or {}).get("color", "dark"))
    n = meta.get("n_components", 1)
    count = "" if n <= 1 else f" It consists of {n} separate regions."
    first = pick(
        rng,
        [
            f"{article(size).capitalize()} {size} {word} is visible on the {noun} {pos} of the image, "
            f"covering about {pct} of it.",
            f"The {noun} has {article(size)} {size} {word} {pos} of the image ({pct} of the area).",
            f"There is {article(size)} {size} {word} {pos} of the image, covering about {pct} of it.",
            f"Defect: {article(size)} {size} {word} {pos} of the image, about {pct} of the area, {sev} severity.",
        ],
    )
    second = pick(rng, [f" It appears as {look}.", f" It looks like {look}.", f" Severity: {sev}.", ""])
    return first + count + second


def material_noun(meta: dict) -> str:
    """What an aligned sample's part is made of ("copper" for a board), from the kind in its params."""
    return MATERIAL_NOUNS.get((meta.get("params") or {}).get("kind", ""), "material")


def describe_aligned(meta: dict) -> str:
    """An anomalous aligned sample: its polarity against the golden, then its size, type and area."""
    t, size, pct = meta["defect_type"], meta["size"], percent(meta["area_fraction"])
    sentence = change_sentence(meta["change"], material_noun(meta), meta["position"], t)
    return f"{sentence} It is {article(size)} {size} {type_name(t)}, covering about {pct} of the image."
