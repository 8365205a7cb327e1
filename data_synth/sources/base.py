"""What every source of normal images is: a list of `Category`s and `sample(category, rng, size)`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Category:
    key: str  # unique id, e.g. "procedural/gear-1" (used in file names and for reference pools)
    noun: str  # what the texts call it: "gear", "fabric", "brick wall"
    is_object: bool | None  # True: part on a plain background, False: texture, None: decide per image


class NormalSource:
    name = "base"

    def categories(self) -> list[Category]:
        raise NotImplementedError

    def sample(self, cat: Category, rng: np.random.Generator, size: int) -> np.ndarray:
        raise NotImplementedError
