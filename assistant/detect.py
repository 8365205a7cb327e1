"""`python -m assistant detect --image Q [--reference R ...] [--config C] --out DIR`.

Writes DIR/overlay.png (heat-map over the image with boxes), DIR/mask.png and DIR/result.json; prints the
verdict, score, calibrated threshold and time.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from assistant.cli import add_config_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, help="query image")
    p.add_argument("--reference", action="append", default=[], metavar="R", help="reference normal image (repeatable)")
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="output folder")


def run(args) -> int:
    from assistant.config import load_config
    from assistant.evaluation.cli import load_expert
    from assistant.imaging import load_image
    from assistant.overlay import render_mask, render_overlay

    cfg = load_config(args.config, args.overrides)
    query = load_image(args.image, cfg.serve.max_pixels)
    refs = [load_image(r, cfg.serve.max_pixels) for r in args.reference]
    tower, expert = load_expert(cfg)
    t0 = time.perf_counter()
    state = expert.fit_references(tower, refs)
    t1 = time.perf_counter()
    result = expert.predict(tower.encode([query]), state, (query.height, query.width))[0]
    t2 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    img = np.asarray(query)
    cv2.imwrite(str(out / "overlay.png"), cv2.cvtColor(render_overlay(img, result, caption=True), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out / "mask.png"), render_mask(result))
    info = result.to_dict()
    info.update({"image": str(args.image), "references": list(args.reference),
                 "seconds": {"references": round(t1 - t0, 3), "query": round(t2 - t1, 3)}})
    (out / "result.json").write_text(json.dumps(info, indent=2))
    verdict = "anomalous" if result.pred_label else "normal"
    print(f"verdict: {verdict} ({result.severity})")
    print(f"score: {result.pred_score:.4f}  threshold: {result.threshold:.4f} (calibrated, {state.n_shots} reference(s))")
    if result.pred_label and result.boxes:
        print(f"where: {result.position}, size: {result.size} ({100 * result.area_fraction:.1f}% of the image), "
              f"{len(result.boxes)} region(s)")
    print(f"time: references {t1 - t0:.2f} s, query {t2 - t1:.3f} s -> {out}/overlay.png, mask.png, result.json")
    return 0
