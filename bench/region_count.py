"""Do the expert's regions count the defects? Region count of flagged anomalous images against the ground truth.

    python bench/region_count.py --data DIR [DIR ...] [--synth BUILD ...] [--cells 0,1,2,4] [--seeds 0,1,2]

For each MVTec-layout category (1-shot, references drawn as in `evaluate`) and each data_synth build (per category,
the first record's first reference), every anomalous image with a mask that the expert flags is counted right when
its number of boxes (`mask_boxes`, the boxes the app draws and the "regions: N" the chat is given) equals the
number of connected components of its ground-truth mask. Each --cells value merges mask parts closer than that
many cells of the map's patch grid (`expert.box_merge_cells`; 0 = raw connected components). Prints one table.
Never part of `make test`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def gt_regions(mask) -> int:
    import cv2
    import numpy as np

    return cv2.connectedComponents(np.asarray(mask, np.uint8), connectivity=8)[0] - 1


def synth_sets(build: Path) -> list[tuple[str, list, list[Path]]]:
    """[(name, items, [reference]), ...] per category of a data_synth build: anomalous records with masks."""
    from types import SimpleNamespace

    from data_synth.build import read_manifest

    by_cat: dict[str, list[dict]] = {}
    for r in read_manifest(build):  # paths made absolute
        by_cat.setdefault(r["category"], []).append(r)
    out = []
    for cat, recs in sorted(by_cat.items()):
        items = [SimpleNamespace(image=r["image"], mask=r["mask"]) for r in recs if r["label"] == 1 and r.get("mask")]
        if items and recs[0].get("references"):
            out.append((f"synth:{cat}", items, [recs[0]["references"][0]]))
    return out


def count_hits(expert, tower, items, ref_sets, cells: list[float]) -> tuple[int, list[int]]:
    """(flagged anomalous images over all reference sets, hits per cells value)."""
    from assistant.evaluation.expert.runner import encode_items, slice_features
    from assistant.expert import mask_boxes
    from assistant.imaging import load_image, load_mask

    size = tower.image_size
    feats = encode_items(tower, items, 16, "")
    gts = [gt_regions(load_mask(it.mask, size=(size, size))) for it in items]
    flagged, hits = 0, [0] * len(cells)
    for refs in ref_sets:
        state = expert.fit_references(tower, [load_image(r) for r in refs], seed=0)
        for j in range(0, len(items), 16):
            part = list(range(j, min(j + 16, len(items))))
            for r, gt in zip(expert.predict(slice_features(feats, part), state, (size, size)), [gts[i] for i in part]):
                if not r.pred_label:
                    continue
                flagged += 1
                cell = r.box_merge_px  # one cell (the config is run with box_merge_cells=1)
                for k, c in enumerate(cells):
                    hits[k] += len(mask_boxes(r.pred_mask, r.anomaly_map, expert.cfg.min_box_area, c * cell)) == gt
    return flagged, hits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="*", default=[], help="MVTec-layout category folders (or roots)")
    p.add_argument("--synth", nargs="*", default=[], help="data_synth build folders (e.g. a --multi-ratio build)")
    p.add_argument("--config", default="configs/offline-small.yaml")
    p.add_argument("--cells", default="0,1,2,4", help="merge distances in patch-grid cells")
    p.add_argument("--seeds", default="0,1,2", help="reference draws for --data")
    args = p.parse_args(argv)
    if not args.data and not args.synth:
        p.error("expected --data and/or --synth folders, got neither")
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from assistant.cli_args import parse_int_list
    from assistant.config import load_config
    from assistant.evaluation.data import discover, sample_references
    from assistant.expert import load_expert

    cells = [float(c) for c in args.cells.split(",")]
    seeds = parse_int_list(args.seeds, "--seeds")
    tower, expert = load_expert(load_config(args.config, ["expert.box_merge_cells=1"]))
    rows = []
    for cat in discover(args.data) if args.data else []:
        items = [it for it in cat.items if it.label and it.mask]
        if items and cat.train_good:
            rows.append((cat.name, *count_hits(expert, tower, items,
                                               [sample_references(cat.train_good, 1, s) for s in seeds], cells)))
    synth = [s for b in args.synth for s in synth_sets(Path(b))]
    if synth:
        tot, hits = 0, [0] * len(cells)
        for _, items, refs in synth:
            n, h = count_hits(expert, tower, items, [refs], cells)
            tot, hits = tot + n, [a + b for a, b in zip(hits, h)]
        rows.append((f"synthetic ({len(synth)} categories)", tot, hits))
    print(f"\nRegion count = ground-truth regions, flagged anomalous images ({args.config}; 1-shot)\n")
    print("| folder | flagged | " + " | ".join(f"merge {c:g} cells" for c in cells) + " |")
    print("|---|---|" + "---|" * len(cells))
    for name, n, h in rows:
        print(f"| {name} | {n} | " + " | ".join(f"{x / n:.3f}" if n else "-" for x in h) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
