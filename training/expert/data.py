"""Training data of the expert: manifest records of data_synth folders, the frozen tower's features of every
image (computed once, cached in one safetensors file), patch-grid targets from the masks, categories."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data_synth.build import read_manifest  # noqa: F401  (re-exported: the trainer's records)
from training.checkpoint import save_tensors


@torch.no_grad()
def encode_cached(tower, recs: list[dict], cache: Path, batch: int = 16):
    """Frozen features for every record: (L x (S, N, C) half tensors, (S, G) global, grid), cached on disk."""
    key = hashlib.sha1(json.dumps([tower.name, tower.image_size, getattr(tower, "levels", None),
                                   [r["image"] for r in recs]]).encode()).hexdigest()[:16]
    if cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") == key:
                n = int(meta["levels"])
                grid = tuple(int(x) for x in meta["grid"].split(","))
                return [f.get_tensor(f"tokens_{i}") for i in range(n)], f.get_tensor("global"), grid
    tokens, glob, grid = encode_all(tower, recs, batch)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_tensors({**{f"tokens_{i}": t for i, t in enumerate(tokens)}, "global": glob}, cache,
                 metadata={"key": key, "levels": str(len(tokens)), "grid": f"{grid[0]},{grid[1]}"})
    return tokens, glob, grid


@torch.no_grad()
def encode_all(tower, recs: list[dict], batch: int = 16):
    """(L x (S, N, C), (S, G), grid) of every record's image, in half precision on the CPU."""
    from assistant.imaging import load_image

    toks, globs, grid = None, [], None
    for i in tqdm(range(0, len(recs), batch), desc="encode (frozen tower)", unit="batch"):
        out = tower.encode([load_image(r["image"]) for r in recs[i:i + batch]])
        toks = [[] for _ in out.patch_tokens] if toks is None else toks
        for lv, t in enumerate(out.patch_tokens):
            toks[lv].append(t.cpu().half())
        globs.append(out.global_token.cpu().half())
        grid = out.grid
    return [torch.cat(t) for t in toks], torch.cat(globs), grid


def grid_masks(recs: list[dict], grid: tuple[int, int], size: int) -> torch.Tensor:
    """(S, h*w) soft targets: fraction of each patch covered by the defect mask."""
    from assistant.imaging import load_mask

    out = torch.zeros(len(recs), grid[0] * grid[1])
    for i, r in enumerate(recs):
        if r.get("mask"):
            m = torch.from_numpy(load_mask(r["mask"], size=(size, size)).astype(np.float32))[None, None]
            out[i] = F.adaptive_avg_pool2d(m, grid).flatten()
    return out


def indices_by_category(recs: list[dict]) -> dict[str, list[int]]:
    """{category: indices of its records, in file order} ("all" for records without a category)."""
    by_cat: dict[str, list[int]] = {}
    for i, r in enumerate(recs):
        by_cat.setdefault(r.get("category", "all"), []).append(i)
    return by_cat


def features(tokens, glob, grid, idx: list[int]):
    """The cached features of records `idx` as the tower's VisionOutput (float32)."""
    from assistant.vision.base import VisionOutput

    return VisionOutput([t[idx].float() for t in tokens], glob[idx].float(), grid)
