"""Independent checker of a built dataset: recomputes area fractions, 3x3 position cells, size words
and component counts from the mask PNGs with plain numpy/OpenCV (no data_synth code) and compares them
with the manifest and with every sentence in the descriptions and conversations.

    python -m data_synth check OUT
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np

from assistant.imaging import load_mask

GRID = [["top left", "top", "top right"], ["left", "center", "right"], ["bottom left", "bottom", "bottom right"]]
WORD_RE = re.compile(r"\b(top left|top right|bottom left|bottom right|top|bottom|left|right|center)\b")
PCT_RE = re.compile(r"(less than 0\.1|\d+(?:\.\d+)?)%")
SIZE_RE = re.compile(r"\b(tiny|small|medium|large)\b")


def _truth(mask: np.ndarray) -> dict:
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    area = ys.size / (h * w)
    r, c = min(int(ys.mean() / h * 3), 2), min(int(xs.mean() / w * 3), 2)
    size = "tiny" if area < 0.005 else "small" if area < 0.02 else "medium" if area < 0.08 else "large"
    n = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1
    return {"area": area, "word": GRID[r][c], "size": size, "n": n}


def _pct_ok(text: str, area: float) -> bool:
    for m in PCT_RE.findall(text):
        if m == "less than 0.1":
            if area * 100 >= 0.1:
                return False
        elif abs(float(m) - area * 100) > (0.051 if "." in m else 0.51):
            return False
    return True


def check(out: str | Path) -> dict:
    out = Path(out)
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    convs = {c["id"]: c for c in json.loads((out / "conversations.json").read_text())}
    stats = {"samples": len(recs), "anomalous": 0, "manifest_position": 0, "manifest_area": 0, "text_position": 0,
             "text_percent": 0, "text_size": 0, "text_count": 0, "first_answer": 0, "normal_first_answer": 0,
             "texts_checked": 0}
    bad: list[str] = []
    for r in recs:
        conv = convs[r["id"]]
        answers = [t["value"] for t in conv["conversations"] if t["from"] == "gpt"]
        texts = [r["description"]] + answers
        if r["label"] == 0:
            stats["normal_first_answer"] += answers[0].startswith("No, the object looks normal")
            continue
        stats["anomalous"] += 1
        t = _truth(load_mask(out / r["mask"]))
        stats["manifest_position"] += r["position"] == t["word"]
        stats["manifest_area"] += abs(r["area_fraction"] - t["area"]) < 1e-4
        stats["first_answer"] += answers[0].startswith("Yes, there is an anomaly")
        ok_pos = ok_pct = ok_size = ok_n = True
        for text in texts:
            words = set(WORD_RE.findall(text))
            if words and words != {t["word"]}:
                ok_pos = False
            ok_pct &= _pct_ok(text, t["area"])
            sizes = set(SIZE_RE.findall(text))
            if sizes and sizes != {t["size"]}:
                ok_size = False
            m = re.search(r"There (?:is one|are (\d+)) defective region", text)
            if m and (1 if m.group(1) is None else int(m.group(1))) != t["n"]:
                ok_n = False
        stats["texts_checked"] += len(texts)
        stats["text_position"] += ok_pos
        stats["text_percent"] += ok_pct
        stats["text_size"] += ok_size
        stats["text_count"] += ok_n
        if not (ok_pos and ok_pct and ok_size and ok_n):
            bad.append(r["id"])
    a, n_norm = max(stats["anomalous"], 1), max(stats["samples"] - stats["anomalous"], 1)
    rates = {k: round(stats[k] / a, 4) for k in ("manifest_position", "manifest_area", "text_position",
                                                  "text_percent", "text_size", "text_count", "first_answer")}
    rates["normal_first_answer"] = round(stats["normal_first_answer"] / n_norm, 4)
    return {"counts": stats, "agreement": rates, "disagreeing_ids": bad[:20]}
