"""Preview mosaic of a built dataset: each tile is a sample with its mask outlined in red and its
defect type (or "normal") written underneath."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from assistant.imaging import load_image, load_mask
from data_synth.synth import SynthError


def parse_grid(grid: str) -> tuple[int, int]:
    try:
        cols, rows = (int(v) for v in grid.lower().split("x"))
    except ValueError:
        raise SynthError(f"--grid: expected COLSxROWS such as 6x6, got {grid!r}") from None
    if cols <= 0 or rows <= 0:
        raise SynthError(f"--grid: expected positive sizes, got {grid!r}")
    return cols, rows


def preview(out: str | Path, grid: str = "6x6", tile: int = 192, anomalous_first: bool = True) -> np.ndarray:
    """(rows * (tile + 16), cols * tile, 3) uint8 RGB mosaic of the first samples of the manifest."""
    out = Path(out)
    man = out / "manifest.jsonl"
    if not man.exists():
        raise SynthError(f"{out}: expected a built dataset with manifest.jsonl, found none")
    recs = [json.loads(line) for line in man.read_text().splitlines() if line.strip()]
    if not recs:
        raise SynthError(f"{man}: the manifest is empty")
    cols, rows = parse_grid(grid)
    if anomalous_first:  # mostly anomalous tiles, a few normals for comparison
        an = [r for r in recs if r["label"] == 1]
        no = [r for r in recs if r["label"] == 0]
        k = cols * rows
        recs = an[: k - min(len(no), k // 6)] + no[: k // 6]
        recs = (recs + [r for r in an + no if r not in recs])[:k]
    mosaic = np.zeros((rows * (tile + 16), cols * tile, 3), np.uint8)
    for j, r in enumerate(recs[: cols * rows]):
        img = np.asarray(load_image(out / r["image"])).copy()
        img = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
        if r["mask"]:
            m = load_mask(out / r["mask"]).astype(np.uint8)
            m = cv2.resize(m, (tile, tile), interpolation=cv2.INTER_NEAREST)
            cnts, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(img, cnts, -1, (255, 0, 0), 1)
        y, x = (j // cols) * (tile + 16), (j % cols) * tile
        mosaic[y:y + tile, x:x + tile] = img
        label = f"{r['defect_type']} {r['position']}" if r["label"] else f"normal {r['noun']}"
        cv2.putText(mosaic, label[:28], (x + 2, y + tile + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return mosaic


def save_preview(out: str | Path, path: str | Path, grid: str = "6x6", tile: int = 192) -> Path:
    mosaic = preview(out, grid, tile)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mosaic[..., ::-1])
    return path
