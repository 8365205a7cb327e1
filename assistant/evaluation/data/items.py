"""What every evaluation dataset yields: `EvalItem`s grouped into `EvalCategory`s, and the k-shot reference rule.

MVTec-layout folders (mvtec.py) and VisA roots (visa.py) produce the same objects; the expert runner and the
folder VQA runner draw references with `sample_references` (random.Random(seed).sample(sorted(files), k)).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class EvalItem:
    image: str  # path of the query image
    label: int  # 0 = normal, 1 = anomalous
    mask: str | None  # path of the ground-truth mask (None: no mask; normals have an all-zero mask)
    category: str  # category name (report key)
    defect: str = "good"  # defect type folder name ("good" for normals)
    references: list[str] = field(default_factory=list)  # per-item reference normals (empty: drawn by the runner)


@dataclass
class EvalCategory:
    name: str  # report key, e.g. the folder name
    root: str  # category folder
    train_good: list[str]  # candidate reference normals, sorted
    items: list[EvalItem]  # test items
    has_masks: bool  # True when every anomalous item has a mask (pixel metrics are computed)

    @property
    def n_normal(self) -> int:
        return sum(1 for it in self.items if it.label == 0)

    @property
    def n_anomalous(self) -> int:
        return sum(1 for it in self.items if it.label == 1)


class DatasetError(FileNotFoundError):
    """A data folder is not in the expected layout; the message names the folder and what was expected."""


def skip_reason(cat: EvalCategory, shots: int) -> str | None:
    """Why `cat` cannot be evaluated k-shot (too few train/good images and no per-item references), or None."""
    if shots > len(cat.train_good) and not all(it.references for it in cat.items):
        return f"skipping {cat.name}: {shots}-shot needs {shots} images in train/good, found {len(cat.train_good)}"
    return None


def sample_references(candidates: list[str], k: int, seed: int) -> list[str]:
    """k reference normals: random.Random(seed).sample(sorted(files), k); clear error when too few."""
    if k <= 0:
        return []
    files = sorted(candidates)
    if len(files) < k:
        raise DatasetError(f"{k}-shot needs {k} reference normals in train/good, found {len(files)}")
    return random.Random(seed).sample(files, k)
