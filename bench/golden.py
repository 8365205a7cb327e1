"""Golden-template inspection: the free path, template subtraction and the aligned/auto path side by side.

    python bench/golden.py [--pairs JSONL ...] [--data DIR ...] [--seeds 0] [--config offline-small]
                           [--set expert.material=dark] [--threads 2]

--pairs: question files that pair each query with its own golden template (default: the DeepPCB dev folder's
questions.jsonl); their paths are relative to the folder above the category folder. --data: MVTec-layout folders
without aligned references; each query gets one reference drawn from train/good as `evaluate` draws it (per seed).

Per folder and method: image AUROC, pixel AUROC (maps and masks at the tower side), balanced accuracy at the
calibrated threshold, missing/extra correct (flagged defective images whose type has a known polarity, one type in
the window: the share of their regions on the ground truth whose `change` is right), PCB type correct (defective
images of one printed-circuit-board type: the share whose top region's `shape` names that type; unflagged ones
count as wrong), the share of queries that
registered and took the aligned path, and ms/image of the expert's prediction (registration included; the tower's
forward pass, the same for every method, is printed below the table). Methods:
- free: today's path (`expert.alignment: free`);
- template: plain template subtraction (grey absolute difference, blurred, max; no registration), its threshold
  from the same camera-view null as the aligned path (no labels);
- auto: `expert.alignment: auto` (aligned where the reference registers, else free).
One table; never part of `make test`.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

from assistant.wording import PCB_SHAPES, PCB_TYPES

TEMPLATE_SIGMA = 2.0  # template subtraction: Gaussian blur of the absolute difference, pixels at 256 px
DEFAULT_PAIRS = "../shared/realdata/deeppcb__pcb/questions.jsonl"


def pair_items(jsonl: Path) -> list[dict]:
    """Unique queries of a question file: image, its references, label, mask, expected polarity (or None)."""
    root = jsonl.parent.parent
    types = {}
    prov = jsonl.parent / "provenance.csv"
    if prov.is_file():  # windows with several defect types: their polarity is known only when all agree
        with prov.open() as f:
            for row in csv.DictReader(f):
                types[row["file"]] = [t for t in row.get("types_in_window", "").split("|") if t]
    items, seen = [], set()
    for line in jsonl.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r["image"] in seen:
            continue
        seen.add(r["image"])
        kinds = types.get(r["image"]) or [Path(r["image"]).parent.name]
        pol = {PCB_TYPES.get(k) for k in kinds}
        items.append({"image": root / r["image"], "references": [root / x for x in r["references"]],
                      "label": int(r["label"]), "mask": root / r["mask"] if r.get("mask") else None,
                      "polarity": pol.pop() if len(pol) == 1 and r["label"] else None,
                      "type": kinds[0] if len(set(kinds)) == 1 and kinds[0] in PCB_TYPES and r["label"] else None})
    return items


def folder_items(folder: Path, seed: int) -> list[dict]:
    """Test images of an MVTec-layout folder, each with one reference drawn from train/good (seeded)."""
    ref = random.Random(seed).sample(sorted(p for p in (folder / "train" / "good").iterdir() if p.is_file()), 1)
    items = []
    for kind in sorted(d for d in (folder / "test").iterdir() if d.is_dir()):
        for img in sorted(p for p in kind.iterdir() if p.is_file()):
            mask = folder / "ground_truth" / kind.name / f"{img.stem}_mask.png"
            items.append({"image": img, "references": ref, "label": int(kind.name != "good"),
                          "mask": mask if mask.is_file() else None,
                          "polarity": PCB_TYPES.get(kind.name) if kind.name != "good" else None,
                          "type": kind.name if kind.name in PCB_TYPES else None})
    return items


def template_map(query, reference, side: int):
    """Template subtraction: |grey query - grey reference| blurred, at side x side; its score is the map's max."""
    import cv2
    import numpy as np

    from assistant.expert.alignment import grey

    d = np.abs(grey(query, side) - grey(reference, side))
    return cv2.GaussianBlur(d, (0, 0), TEMPLATE_SIGMA * side / 256.0)


def template_threshold(reference, side: int, expert, seed: int) -> float:
    """The template path's threshold from camera views of the reference (the aligned path's null, no labels)."""
    import numpy as np

    from assistant.expert.calibration import NullModel, camera_view, estimate_threshold, masked_map
    from assistant.expert.golden import NULL_VIEWS

    rng = random.Random(seed)
    null = []
    for _ in range(NULL_VIEWS):
        view, valid = camera_view(reference.resize((side, side)), rng)
        null.append(float(masked_map(template_map(view, reference, side), valid).max()))
    return estimate_threshold([np.array([x]) for x in null], 1, NullModel(), expert.cfg.target_overkill,
                              expert.cfg.review_confidence, seed=seed).threshold


def evaluate(name: str, items: list[dict], tower, expert, seed: int) -> dict[str, dict]:
    """Per method: labels, scores, predictions, maps, masks, polarity checks, registered flags and timings."""
    import numpy as np
    import torch

    from assistant.imaging import load_image, load_mask

    side = tower.image_size
    runs = {m: {"scores": [], "preds": [], "maps": [], "ms": [], "pol": [], "type": [], "registered": []}
            for m in ("free", "template", "auto")}
    states, encode_ms = {}, []
    for it in items:
        refs = tuple(it["references"])
        ref_images = [load_image(r) for r in refs]
        if refs not in states:
            expert.cfg.alignment = "auto"
            states[refs] = (expert.fit_references(tower, ref_images, seed=seed),
                            template_threshold(ref_images[0], side, expert, seed))
        state, t_thr = states[refs]
        img = load_image(it["image"])
        t0 = time.perf_counter()
        with torch.no_grad():
            out = tower.encode([img])
        encode_ms.append(1000 * (time.perf_counter() - t0))
        gt = load_mask(it["mask"], (side, side)) if it["mask"] is not None else np.zeros((side, side), bool)
        it["gt"] = gt
        for method in ("free", "auto"):
            expert.cfg.alignment = method
            t0 = time.perf_counter()
            res = expert.predict(out, state, (side, side), images=[img], tower=tower)[0]
            runs[method]["ms"].append(1000 * (time.perf_counter() - t0))
            r = runs[method]
            r["scores"].append(res.pred_score)
            r["preds"].append(res.pred_label)
            r["maps"].append(res.anomaly_map)
            r["registered"].append(res.alignment == "aligned")
            if it["label"] and it["polarity"] and res.pred_label:
                r["pol"] += [b.change == it["polarity"] for b in res.boxes if gt[b.y0:b.y1, b.x0:b.x1].any()]
            if it["label"] and it.get("type"):  # the type the top region's shape names (unflagged: none)
                top = max(res.boxes, key=lambda b: b.score) if res.pred_label and res.boxes else None
                r["type"].append(top is not None and PCB_SHAPES.get(top.shape) == it["type"])
        t0 = time.perf_counter()
        m = template_map(img, ref_images[0], side)
        score = float(m.max())
        runs["template"]["ms"].append(1000 * (time.perf_counter() - t0))
        runs["template"]["scores"].append(score)
        runs["template"]["preds"].append(score > t_thr)
        runs["template"]["maps"].append(m)
    expert.cfg.alignment = "auto"
    for r in runs.values():
        r["encode_ms"] = float(np.median(encode_ms))
    return runs


def metrics(items: list[dict], run: dict) -> dict:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    y = np.array([it["label"] for it in items])
    s, p = np.array(run["scores"]), np.array(run["preds"], bool)
    out = {
        "image_auroc": roc_auc_score(y, s) if 0 < y.sum() < len(y) else float("nan"),
        "balanced_accuracy": 1 - (p[y == 0].mean() + (~p[y == 1]).mean()) / 2 if 0 < y.sum() < len(y) else float("nan"),
        "ms": float(np.median(run["ms"])),
        "ms_p90": float(np.quantile(run["ms"], 0.9)),
    }
    with_mask = [i for i, it in enumerate(items) if it["mask"] is not None or it["label"] == 0]
    gts = np.concatenate([items[i]["gt"].reshape(-1) for i in with_mask]) if with_mask else np.zeros(0, bool)
    out["pixel_auroc"] = (
        roc_auc_score(gts, np.concatenate([np.asarray(run["maps"][i]).reshape(-1) for i in with_mask]))
        if gts.any() and not gts.all()
        else float("nan")
    )
    out["polarity"] = float(np.mean(run["pol"])) if run["pol"] else float("nan")
    out["polarity_n"] = len(run["pol"])
    out["type"] = float(np.mean(run["type"])) if run["type"] else float("nan")
    out["type_n"] = len(run["type"])
    out["registered"] = float(np.mean(run["registered"])) if run["registered"] else float("nan")
    return out


def expert_arguments(p: argparse.ArgumentParser, seeds: str) -> None:
    """The options the expert benches share: reference draws, config, overrides, threads."""
    p.add_argument("--seeds", default=seeds, help="reference draws for --data folders")
    p.add_argument("--config", default="offline-small")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=2)


def expert_from_arguments(args) -> tuple:
    """(tower, expert) of --config with --set overrides, torch and OpenCV on --threads threads."""
    import cv2
    import torch

    from assistant.config import load_config
    from assistant.expert import load_expert

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    return load_expert(load_config(args.config, args.overrides))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", nargs="*", default=None, help=f"question files pairing queries with templates "
                                                            f"(default {DEFAULT_PAIRS})")
    p.add_argument("--data", nargs="*", default=[], help="MVTec-layout folders without aligned references")
    expert_arguments(p, seeds="0")
    args = p.parse_args(argv)
    import numpy as np

    tower, expert = expert_from_arguments(args)
    pairs = [Path(x) for x in (args.pairs if args.pairs is not None else [DEFAULT_PAIRS])]
    sets = [(jl.parent.name, pair_items(jl), 0) for jl in pairs]
    sets += [(Path(d).name, folder_items(Path(d), int(s)), int(s)) for d in args.data for s in args.seeds.split(",")]
    rows, encode = [], []
    for name, items, seed in sets:
        runs = evaluate(name, items, tower, expert, seed)
        encode.append(runs["free"]["encode_ms"])
        for method in ("free", "template", "auto"):
            rows.append((name, seed, len(items), method, metrics(items, runs[method])))
        print(f"{name} (seed {seed}): done", file=sys.stderr)

    def f(x, nd=3):
        return "–" if np.isnan(x) else f"{x:.{nd}f}"

    print(f"\nGolden-template inspection ({args.config}, 1 reference per query, {args.threads} threads"
          + (f", {' '.join(args.overrides)}" if args.overrides else "") + ")\n")
    print(
        "| folder | seed | n | method | image AUROC | pixel AUROC | balanced acc. | missing/extra correct (regions) | "
        "PCB type correct (defects) | registered | ms/image (p90) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, seed, n, method, m in rows:
        pol = f"{f(m['polarity'])} ({m['polarity_n']})" if method == "auto" else "–"
        typ = f"{f(m['type'])} ({m['type_n']})" if method == "auto" else "–"
        reg = f(m["registered"], 2) if method == "auto" else "–"
        print(f"| {name} | {seed} | {n} | {method} | {f(m['image_auroc'])} | {f(m['pixel_auroc'])} | "
              f"{f(m['balanced_accuracy'])} | {pol} | {typ} | {reg} | {m['ms']:.1f} ({m['ms_p90']:.1f}) |")
    print(f"\nms/image: the expert's prediction after the tower (registration and the aligned path included); the "
          f"tower's forward pass took {np.median(encode):.1f} ms/image more (median).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
