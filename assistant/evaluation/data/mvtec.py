"""Evaluation datasets in MVTec AD layout (one category, or a root folder holding several).

Layout: `<category>/train/good/*`, `<category>/test/good/*`, `<category>/test/<defect>/*`,
`<category>/ground_truth/<defect>/<stem>_mask.png` (optional; pixel > 0 = defect).

`discover` takes MVTec-layout categories, folders of them and VisA roots (visa.py) alike; each category
becomes an `EvalCategory` of `EvalItem`s (items.py).
"""
from __future__ import annotations

from pathlib import Path

from assistant.evaluation.data.items import DatasetError, EvalCategory, EvalItem
from assistant.evaluation.data.visa import is_visa_root, load_visa
from assistant.imaging import IMAGE_SUFFIXES


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
        if is_visa_root(p):  # VisA split_csv/1cls.csv layout
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
