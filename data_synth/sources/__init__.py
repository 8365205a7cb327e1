"""Sources of normal images: folders, conformal-clip-data textiles, scikit-image textures, GIMP .pat
patterns, and a procedural generator of normal parts (washers, gears, screws, bolts, circuit boards)
and surfaces (woven, brushed, wood grain) so that tests and CI never need outside data, and aligned pairs (a golden
part and a misregistered query of it: `aligned`).

A source lists `Category`s (one product or texture each: references are drawn from the same category)
and renders `sample(category, rng, size) -> (size, size, 3) uint8 RGB`, driven only by `rng`.
"""
from __future__ import annotations

from data_synth.sources.aligned import AlignedSource
from data_synth.sources.base import Category, NormalSource
from data_synth.sources.files import SKIMAGE_TEXTURES, FolderSource, SkimageSource, TextileSource
from data_synth.sources.gimp import GIMP_PATTERN_DIRS, GimpSource, read_pat, write_pat
from data_synth.sources.procedural import KIND_NOUNS, KINDS, METALS, ProceduralSource
from data_synth.synth import SynthError

__all__ = ["GIMP_PATTERN_DIRS", "KINDS", "KIND_NOUNS", "METALS", "SKIMAGE_TEXTURES", "SOURCES", "AlignedSource",
           "Category", "FolderSource", "GimpSource", "NormalSource", "ProceduralSource", "SkimageSource",
           "TextileSource", "make_sources", "read_pat", "write_pat"]

SOURCES = {"procedural": ProceduralSource, "textiles": TextileSource, "skimage": SkimageSource,
           "gimp": GimpSource, "aligned": AlignedSource}


def make_sources(names: list[str] | None = None, folders: list[str] | None = None) -> list[NormalSource]:
    """Source objects for --source names and --normal folders."""
    out: list[NormalSource] = []
    for n in names or []:
        if n not in SOURCES:
            raise SynthError(f"unknown source {n!r}; expected one of {', '.join(SOURCES)} (or --normal DIR)")
        out.append(SOURCES[n]())
    if folders:
        out.append(FolderSource(folders))
    if not out:
        raise SynthError("no normal images: expected --source NAME and/or --normal DIR [DIR ...]")
    return out
