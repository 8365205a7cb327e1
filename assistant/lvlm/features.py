"""The image-processor role: pooled tower features of a query and its references, and the expert's evidence.

`image_features` runs once per query (+ references) and does not depend on the thresholds: pooled patch
tokens of the query (coarse grid for the image tokens, finer grid for the look-twice selector), of every
reference, and of the zoomed suspicious crop (the second look). `visual_inputs` adds what does depend on the
thresholds: the expert's map and mask resized to MAP_SIZE, the calibrated threshold and the verdict in words.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from assistant.wording import result_evidence

MAP_SIZE = 64  # the expert's map and mask are resized to MAP_SIZE x MAP_SIZE for the prompt learner


def pool_patch_tokens(patch_tokens: Sequence[torch.Tensor], grid: tuple[int, int], side: int,
                      levels: Sequence[int] | None = None) -> torch.Tensor:
    """Concatenate the selected levels' channels and average-pool the (h, w) grid to side x side.

    patch_tokens: L tensors (B, N, C_l) -> (B, side * side, sum C_l)."""
    toks = list(patch_tokens) if levels is None else [patch_tokens[i] for i in levels]
    x = torch.cat(toks, dim=-1)  # (B, N, C)
    b, n, c = x.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"patch tokens: expected {h}x{w}={h * w} tokens per image, got {n}")
    x = x.transpose(1, 2).reshape(b, c, h, w)
    x = F.adaptive_avg_pool2d(x.float(), side)  # (B, C, side, side)
    return x.flatten(2).transpose(1, 2)  # (B, side^2, C)


@dataclass
class ImageFeatures:
    """Pooled tower features of one query (+ its references); independent of the thresholds."""
    query: torch.Tensor  # (P, C) pooled query patch features, P = pool^2
    look: torch.Tensor  # (G, C) finer-pooled query features for the look-twice selector, G = (2 pool)^2
    global_token: torch.Tensor  # (C_g,) query global feature
    refs: torch.Tensor  # (k, P, C) pooled reference features; k may be 0
    crop: torch.Tensor | None  # (P2, C) pooled features of the zoomed suspicious crop (second look)


@dataclass
class VisualInputs(ImageFeatures):
    """ImageFeatures + the expert's map and verdict: everything the LVLM needs for one query."""
    anomaly_map: torch.Tensor = None  # (S, S) expert map resized to MAP_SIZE, raw score scale
    pred_mask: torch.Tensor = None  # (S, S) predicted mask resized to MAP_SIZE, 0/1 float
    threshold: float = 1.0  # calibrated image threshold (same scale as the map)
    evidence: str = ""  # the expert's verdict in words

    def to(self, device) -> VisualInputs:
        def mv(t):
            return None if t is None else t.to(device)

        return VisualInputs(mv(self.query), mv(self.look), mv(self.global_token), mv(self.refs), mv(self.crop),
                            mv(self.anomaly_map), mv(self.pred_mask), self.threshold, self.evidence)


def crop_side(pool: int) -> int:
    """Tokens per side of the second-look crop (half the image grid, at least 1)."""
    return max(1, pool // 2)


def suspicious_crop(anomaly_map: np.ndarray, image_size: tuple[int, int],
                    zoom: float = 2.0) -> tuple[int, int, int, int]:
    """Box (x0, y0, x1, y1) in pixels of an image of `image_size` (W, H): a 1/zoom-side window centred on the
    map's maximum (map may have any resolution), shifted to stay inside the image. The second look re-encodes
    this crop, so the LM sees the most suspicious region at twice the resolution."""
    w, h = image_size
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.ndim != 2 or amap.size == 0:
        raise ValueError(f"anomaly_map: expected a non-empty (H, W) array, got shape {amap.shape}")
    r, c = np.unravel_index(int(np.argmax(amap)), amap.shape)
    cy, cx = (r + 0.5) / amap.shape[0] * h, (c + 0.5) / amap.shape[1] * w
    cw, ch = max(1, round(w / zoom)), max(1, round(h / zoom))
    x0 = int(min(max(cx - cw / 2, 0.0), w - cw))
    y0 = int(min(max(cy - ch / 2, 0.0), h - ch))
    return x0, y0, x0 + cw, y0 + ch


@torch.no_grad()
def image_features(tower, query_out, pool: int, query_image=None, anomaly_map=None, ref_out=None,
                   levels: Sequence[int] | None = None, second_look: bool = True, index: int = 0) -> ImageFeatures:
    """ImageFeatures of image `index` of `query_out` (VisionOutput) and all images of `ref_out`.

    The second look crops `query_image` (PIL) around the maximum of `anomaly_map` and re-encodes it."""
    pt = [t[index:index + 1] for t in query_out.patch_tokens]
    q = pool_patch_tokens(pt, query_out.grid, pool, levels)[0]
    look = pool_patch_tokens(pt, query_out.grid, 2 * pool, levels)[0]
    if ref_out is not None and ref_out.patch_tokens[0].shape[0] > 0:
        refs = pool_patch_tokens(ref_out.patch_tokens, ref_out.grid, pool, levels)  # (k, P, C)
    else:
        refs = q.new_zeros((0, *q.shape))
    crop = None
    if second_look:
        if query_image is None or anomaly_map is None:
            raise ValueError("second look: the query image and its anomaly map are needed to crop the "
                             "suspicious region")
        box = suspicious_crop(anomaly_map, query_image.size)
        c_out = tower.encode([query_image.crop(box)])
        crop = pool_patch_tokens(c_out.patch_tokens, c_out.grid, crop_side(pool), levels)[0].float().cpu()
    return ImageFeatures(q.float().cpu(), look.float().cpu(), query_out.global_token[index].float().cpu(),
                         refs.float().cpu(), crop)


def resize_map(anomaly_map: np.ndarray, pred_mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) map and mask -> (MAP_SIZE, MAP_SIZE) float tensors (area resize; mask re-binarised)."""
    amap = torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float32))[None, None]
    mask = torch.from_numpy(np.ascontiguousarray(pred_mask, dtype=np.float32))[None, None]
    amap = F.interpolate(amap, size=(MAP_SIZE, MAP_SIZE), mode="area")[0, 0]
    mask = F.interpolate(mask, size=(MAP_SIZE, MAP_SIZE), mode="area")[0, 0].gt(0.5).float()
    return amap, mask


def visual_inputs(feats: ImageFeatures, result, evidence: str | None = None, changes: bool = False,
                  looks: bool = False) -> VisualInputs:
    """Combine features with an AnomalyResult (its map, mask, threshold and verdict in words; `changes`:
    lvlm.evidence_changes, `looks`: lvlm.evidence_looks)."""
    amap, mask = resize_map(result.anomaly_map, result.pred_mask)
    said = result_evidence(result, changes, looks) if evidence is None else evidence
    return VisualInputs(feats.query, feats.look, feats.global_token, feats.refs, feats.crop, amap, mask,
                        float(result.threshold), said)
