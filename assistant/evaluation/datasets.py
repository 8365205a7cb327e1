"""Evaluation datasets in MVTec AD layout (one category, or a root folder holding several).

Layout: `<category>/train/good/*`, `<category>/test/good/*`, `<category>/test/<defect>/*`,
`<category>/ground_truth/<defect>/<stem>_mask.png` (optional; pixel > 0 = defect).

Every dataset yields `EvalItem`s (image path, label, mask path, category, references); other formats
(MMAD, JSONL, VisA) can plug into the runner by producing the same `EvalCategory` objects.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from assistant.imaging import IMAGE_SUFFIXES


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


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _find_mask(gt_dir: Path, defect: str, stem: str) -> Path | None:
    for cand in (gt_dir / defect / f"{stem}_mask.png", gt_dir / defect / f"{stem}.png"):
        if cand.is_file():
            return cand
    return None


def is_mvtec_category(path: str | Path) -> bool:
    p = Path(path)
    return (p / "test").is_dir() and any(d.is_dir() for d in (p / "test").iterdir())


def load_mvtec_category(path: str | Path, name: str | None = None) -> EvalCategory:
    """One category folder in MVTec layout -> EvalCategory."""
    root = Path(path)
    if not is_mvtec_category(root):
        raise DatasetError(f"{root}: expected an MVTec-layout category with test/<defect>/ image folders")
    name = name or root.name
    gt_dir = root / "ground_truth"
    items: list[EvalItem] = []
    has_masks = True
    for d in sorted(x for x in (root / "test").iterdir() if x.is_dir()):
        label = 0 if d.name == "good" else 1
        for img in _images(d):
            mask = None if label == 0 else _find_mask(gt_dir, d.name, img.stem)
            if label == 1 and mask is None:
                has_masks = False
            items.append(EvalItem(str(img), label, str(mask) if mask else None, name, d.name))
    if not items:
        raise DatasetError(f"{root}: the test/ folders hold no images (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    has_masks = has_masks and any(it.label == 1 for it in items)
    train = [str(p) for p in _images(root / "train" / "good")]
    return EvalCategory(name, str(root), train, items, has_masks)


def discover(paths: list[str | Path]) -> list[EvalCategory]:
    """Each path is a category in MVTec layout, a folder of such categories, or a VisA root (split_csv/1cls.csv)."""
    cats: list[EvalCategory] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise DatasetError(f"{p}: expected a folder (an MVTec-layout category or a folder of categories)")
        if is_mvtec_category(p):
            cats.append(load_mvtec_category(p))
            continue
        from assistant.evaluation.visa import is_visa_root, load_visa  # VisA split_csv/1cls.csv layout

        if is_visa_root(p):
            cats.extend(load_visa(p))
            continue
        subs = [d for d in sorted(p.iterdir()) if d.is_dir() and is_mvtec_category(d)]
        if not subs:
            raise DatasetError(f"{p}: neither a category (test/<defect>/...) nor a folder of categories")
        cats.extend(load_mvtec_category(d) for d in subs)
    names = [c.name for c in cats]
    dup = {n for n in names if names.count(n) > 1}
    if dup:  # same category name from two roots: prefix with the parent folder
        for c in cats:
            if c.name in dup:
                c.name = f"{Path(c.root).parent.name}/{c.name}"
                for it in c.items:
                    it.category = c.name
    return cats


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
