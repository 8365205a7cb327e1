"""Do the region descriptors' words agree with the ground truth, and is the named defect type right?

    python bench/describe_check.py [--data DIR ...] [--pairs JSONL ...] [--seeds 0,1,2] [--config offline-small]

Defaults: the hazelnut, magnetic-tile and cookie dev folders (--data) and the DeepPCB question file (--pairs).
Every defective test image with a ground-truth mask is judged the way `evaluate` judges it: one reference per
query (drawn from train/good per seed for --data folders, the query's own golden template for --pairs files, run
once at the first seed), maps at the tower's side, `expert.predict` with the query image, so each flagged box
carries the descriptor the product gives it (expert/describe.py, its type from the shipped classifier, or from
the change of material on the aligned path); nothing is recomputed here. Per category, one row (seeds pooled):
- flagged: defective images the expert flags; located: the share of those with a box on the ground truth;
- for the located ones, the box with the most ground-truth pixels against the ground-truth components it
  touches: position (3x3 grid word of the descriptor's centroid vs the ground truth's centroid), size (size word
  of the descriptor's area vs the ground truth's, as fractions of the image), form (line or elongated vs compact:
  the descriptor's form vs describe.geometry of the ground truth at the same scale), all (the three agree);
- typed: located defects whose folder type (pairs: whose change of material) maps to a vocabulary word
  (FOLDER_TYPES, POLARITY_TYPES); named: the share of those whose descriptor names a type (defect_type != "");
  type_acc: the share of the named ones whose type is right.
The mean row averages the category rows (counts summed). Diagnostics (boxes without a descriptor, the aligned
path's share, named types per folder type) go to stderr. One table; never part of `make test`.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from golden import DEFAULT_PAIRS, expert_arguments, expert_from_arguments, folder_items, pair_items

DEFAULT_DATA = ["../shared/realdata/mvtec-indknn__hazelnut", "../shared/realdata/mtd__magnetic_tile",
                "../shared/realdata/l4v-cookie__cookie"]
# dev mapping, per category (the folder name after "__"): test folder -> the vocabulary words counted right
FOLDER_TYPES = {
    "hazelnut": {"crack": {"crack"}, "cut": {"scratch"}, "hole": {"hole"}, "print": {"stain"}},
    "magnetic_tile": {"blowhole": {"hole"}, "break": {"missing part"}, "crack": {"crack"},
                      "fray": {"missing part"}, "uneven": {"discolouration"}},
    "cookie": {"crack": {"crack"}},
}
# aligned pairs (DeepPCB): the change of material of every type in the window -> the words counted right
POLARITY_TYPES = {"missing": {"missing part", "hole"}, "extra": {"foreign object"}}
WORDS = ("position", "size", "form", "all")
COLUMNS = ("flagged", "located", *WORDS, "typed", "named", "type_acc")


def expected_types(item: dict, category: str) -> set[str] | None:
    """The vocabulary words that name this item's defect rightly; None when its type is not mapped."""
    table = FOLDER_TYPES.get(category.split("__")[-1])
    if table is not None:
        return table.get(Path(item["image"]).parent.name)
    return POLARITY_TYPES.get(item.get("polarity"))


def gt_part(gt, box):
    """(H, W) bool: the ground-truth components that touch the box."""
    import cv2
    import numpy as np

    _, lab = cv2.connectedComponents(gt.astype(np.uint8), connectivity=8)
    ids = np.unique(lab[box.y0:box.y1, box.x0:box.x1])
    return np.isin(lab, ids[ids > 0])


def truth_words(mask) -> dict:
    """position, size and elongated flag of a bool ground-truth mask, by the descriptors' rules."""
    import numpy as np

    from assistant.expert.describe import SIDE, geometry
    from assistant.wording import position_word, size_word

    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    form = geometry(mask, SIDE / max(h, w))[2]
    return {"position": position_word((ys.mean() + 0.5) / h, (xs.mean() + 0.5) / w),
            "size": size_word(float(mask.mean())), "form": form != "compact"}


def descriptor_words(d, shape: tuple[int, int]) -> dict:
    """The same words of a box's Descriptor (area_px is at SIDE px on the longer side of a map of `shape`)."""
    from assistant.expert.describe import SIDE
    from assistant.wording import position_word, size_word

    h, w = shape
    image_px = SIDE * SIDE * h * w / max(h, w) ** 2
    return {"position": position_word(*d.centroid), "size": size_word(d.area_px / image_px),
            "form": d.form != "compact"}


def judge(res, gt, want: set[str] | None, stats: Counter) -> dict:
    """One flagged defective image: located, word agreement of its top box, typed / named / right."""
    hits = [(int(gt[b.y0:b.y1, b.x0:b.x1].sum()), i) for i, b in enumerate(res.boxes)]
    hits = [h for h in hits if h[0] > 0]
    stats["boxes"] += len(res.boxes)
    stats["boxes without descriptor"] += sum(b.descriptor is None for b in res.boxes)
    stats["aligned"] += res.alignment == "aligned"
    if not hits:
        return {"located": False}
    top = res.boxes[max(hits)[1]]
    d = top.descriptor
    if d is None:
        stats["top box without descriptor"] += 1
        return {"located": True}
    truth, got = truth_words(gt_part(gt, top)), descriptor_words(d, res.anomaly_map.shape)
    rec = {"located": True, **{k: got[k] == truth[k] for k in truth}}
    rec["all"] = all(rec[k] for k in truth)
    if want is not None:
        rec.update(typed=True, named=bool(d.defect_type), right=d.defect_type in want, named_as=d.defect_type)
    return rec


def check(items: list[dict], category: str, tower, expert, seed: int, stats: Counter) -> list[dict]:
    """One record per flagged defective image of `items` (see judge); named types counted in `stats`."""
    import torch

    from assistant.imaging import load_image, load_mask

    side = tower.image_size
    out, states = [], {}
    for it in items:
        if not it["label"] or it["mask"] is None:
            continue
        refs = tuple(it["references"])
        if refs not in states:
            states[refs] = expert.fit_references(tower, [load_image(r) for r in refs], seed=seed)
        img = load_image(it["image"])
        with torch.no_grad():
            res = expert.predict(tower.encode([img]), states[refs], (side, side), images=[img], tower=tower)[0]
        if not res.pred_label:
            continue
        out.append(judge(res, load_mask(it["mask"], (side, side)), expected_types(it, category), stats))
        if out[-1].get("typed"):  # folder type -> the named type
            stats[f"{Path(it['image']).parent.name}->{out[-1]['named_as'] or '(none)'}"] += 1
    return out


def row(records: list[dict]) -> dict:
    """The table's columns of one category's records."""
    import numpy as np

    def share(rs, key):
        return float(np.mean([r[key] for r in rs])) if rs else float("nan")

    located = [r for r in records if r["located"] and "all" in r]
    typed = [r for r in located if r.get("typed")]
    named = [r for r in typed if r["named"]]
    return {"flagged": len(records), "located": share(records, "located"),
            **{k: share(located, k) for k in WORDS}, "typed": len(typed), "named": share(typed, "named"),
            "type_acc": share(named, "right")}


def print_table(rows: list[tuple[str, dict]]) -> None:
    import numpy as np

    def cell(v):
        return str(v) if isinstance(v, int) else "–" if np.isnan(v) else f"{v:.3f}"

    mean = {k: (sum(r[k] for _, r in rows) if k in ("flagged", "typed")
                else float(np.nanmean([r[k] for _, r in rows])) if any(not np.isnan(r[k]) for _, r in rows)
                else float("nan")) for k in COLUMNS}
    print(f"| category | {' | '.join(COLUMNS)} |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, r in [*rows, ("mean", mean)]:
        print(f"| {name} | {' | '.join(cell(r[k]) for k in COLUMNS)} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="*", default=DEFAULT_DATA, help="MVTec-layout folders with ground-truth masks")
    p.add_argument("--pairs", nargs="*", default=[DEFAULT_PAIRS], help="question files pairing queries with templates")
    expert_arguments(p, seeds="0,1,2")
    args = p.parse_args(argv)
    tower, expert = expert_from_arguments(args)
    if expert.type_classifier is None:
        print("warning: the expert has no defect-type classifier; no type is named", file=sys.stderr)
    seeds = [int(s) for s in args.seeds.split(",")]
    sets = [(Path(d).name, lambda s, d=d: folder_items(Path(d), s), seeds) for d in args.data]
    sets += [(Path(j).parent.name, lambda s, j=j: pair_items(Path(j)), seeds[:1]) for j in args.pairs]
    rows = []
    for name, make, ss in sets:
        stats = Counter()
        rows.append((name, row([r for s in ss for r in check(make(s), name, tower, expert, s, stats)])))
        print(f"{name}: {dict(sorted(stats.items()))}", file=sys.stderr)
    print(f"\nDescriptor words vs ground truth ({args.config}, seeds {args.seeds}"
          + (f", {' '.join(args.overrides)}" if args.overrides else "") + ")\n")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
