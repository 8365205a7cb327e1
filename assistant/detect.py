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


def overlay(image: np.ndarray, result, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 (H, W, 3) image + result -> RGB overlay: JET heat-map of the map, mask contour, boxes."""
    h, w = image.shape[:2]
    amap = cv2.resize(result.anomaly_map, (w, h), interpolation=cv2.INTER_LINEAR)
    lo = min(float(amap.min()), result.pixel_threshold * 0.5)
    hi = max(float(amap.max()), result.pixel_threshold * 1.5, lo + 1e-6)
    norm = np.clip((amap - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(norm, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)
    mh, mw = result.pred_mask.shape
    sx, sy = w / mw, h / mh
    if result.pred_mask.any():
        mask = cv2.resize(result.pred_mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, round(min(h, w) / 300)))
    thick = max(2, round(min(h, w) / 200))
    for b in result.boxes:
        p0, p1 = (int(b.x0 * sx), int(b.y0 * sy)), (int(b.x1 * sx) - 1, int(b.y1 * sy) - 1)
        cv2.rectangle(out, p0, p1, (255, 40, 40), thick)
    verdict = f"{'ANOMALOUS' if result.pred_label else 'NORMAL'} {result.pred_score:.2f} / thr {result.threshold:.2f}"
    scale = max(0.4, min(h, w) / 600)
    cv2.putText(out, verdict, (8, int(24 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2)
    cv2.putText(out, verdict, (8, int(24 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 80, 80) if result.pred_label else (80, 255, 80), thick)
    return out


def run(args) -> int:
    from assistant.config import load_config
    from assistant.evaluation.cli import load_expert
    from assistant.imaging import load_image

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
    cv2.imwrite(str(out / "overlay.png"), cv2.cvtColor(overlay(img, result), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out / "mask.png"), result.pred_mask.astype(np.uint8) * 255)
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
