"""Aligned pairs as a source: categories are the golden kinds (board, label, plate); each build sample is a pair
(data_synth.aligned.make_pair on a golden drawn for that sample), written by data_synth.build with its golden as the
sample's one reference."""
from __future__ import annotations

import numpy as np

from data_synth.aligned import KIND_NOUNS, KINDS, AlignedConfig, AlignedPair, make_pair, render_golden
from data_synth.sources.base import Category, NormalSource
from data_synth.synth import SynthError


class AlignedSource(NormalSource):
    """Golden parts drawn from code, a new layout per sample; `pair` makes the sample, `sample` a golden alone."""

    name = "aligned"
    aligned = True  # build.make_sample asks for pairs; no reference pool is written (each sample has its golden)

    def __init__(self, kinds: list[str] | None = None, cfg: AlignedConfig | None = None):
        kinds = list(kinds or KINDS)
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise SynthError(f"unknown aligned kinds {bad}; expected some of {list(KINDS)}")
        self.kinds, self.cfg = kinds, cfg or AlignedConfig()

    def categories(self) -> list[Category]:
        return [Category(f"aligned/{k}", KIND_NOUNS[k], k != "board") for k in self.kinds]

    def sample(self, cat: Category, rng: np.random.Generator, size: int) -> np.ndarray:
        return render_golden(cat.key.split("/", 1)[1], size, rng).image

    def pair(self, cat: Category, rng: np.random.Generator, size: int, anomalous: bool) -> tuple[str, AlignedPair]:
        """(kind, pair) of one sample: a golden of the category's kind, then the query made from it."""
        kind = cat.key.split("/", 1)[1]
        return kind, make_pair(render_golden(kind, size, rng), rng, self.cfg, anomalous=anomalous)
