"""VisA in its original layout: `ROOT/split_csv/1cls.csv` lists every image.

CSV columns: object, split (train|test), label (normal|anomaly), image, mask — paths relative to ROOT,
e.g. `candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png`.
Mask pixels > 0 mark the defect. Each object becomes one EvalCategory (train normals are the reference
candidates; test images are the items), the same objects the MVTec-layout loader produces. The
MVTec-style converted VisA layout is an ordinary MVTec folder (mvtec.py).
"""
from __future__ import annotations

import csv
from pathlib import Path

from assistant.evaluation.data.items import DatasetError, EvalCategory, EvalItem

SPLIT_CSV = "split_csv/1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")


def is_visa_root(path: str | Path) -> bool:
    return (Path(path) / SPLIT_CSV).is_file()


def load_visa(root: str | Path, split_csv: str = SPLIT_CSV, categories: list[str] | None = None,
              check_files: bool = True) -> list[EvalCategory]:
    """EvalCategories (sorted by name) from a VisA root and its split CSV.

    categories: keep only these objects (None = all). check_files: fail when a listed image is missing.
    """
    root = Path(root)
    path = root / split_csv
    if not path.is_file():
        raise DatasetError(f"{root}: expected the VisA split file {split_csv} there")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing_cols = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing_cols:
            raise DatasetError(f"{path}: expected columns {list(COLUMNS)}, missing {missing_cols} "
                               f"(has {reader.fieldnames})")
        rows = list(reader)
    train: dict[str, list[str]] = {}
    items: dict[str, list[EvalItem]] = {}
    for ln, row in enumerate(rows, start=2):
        obj, split, label = row["object"].strip(), row["split"].strip().lower(), row["label"].strip().lower()
        if categories is not None and obj not in categories:
            continue
        if split not in ("train", "test") or label not in ("normal", "anomaly"):
            raise DatasetError(f"{path}:{ln}: expected split train|test and label normal|anomaly, "
                               f"got {split!r}, {label!r}")
        img = root / row["image"].strip()
        if check_files and not img.is_file():
            raise DatasetError(f"{path}:{ln}: image {img} not found")
        if split == "train":
            if label == "normal":
                train.setdefault(obj, []).append(str(img))
            continue
        mask = row.get("mask", "").strip()
        lab = int(label == "anomaly")
        items.setdefault(obj, []).append(EvalItem(
            image=str(img), label=lab, mask=str(root / mask) if (lab and mask) else None, category=obj,
            defect="good" if lab == 0 else "anomaly"))
    if categories is not None:
        unknown = sorted(set(categories) - set(items) - set(train))
        if unknown:
            raise DatasetError(f"{path}: no rows for object(s) {unknown}")
    if not items:
        raise DatasetError(f"{path}: no test images listed")
    cats = []
    for obj in sorted(items):
        its = sorted(items[obj], key=lambda it: it.image)
        has_masks = any(it.label for it in its) and all(it.mask for it in its if it.label)
        cats.append(EvalCategory(obj, str(root / obj), sorted(train.get(obj, [])), its, has_masks))
    return cats
