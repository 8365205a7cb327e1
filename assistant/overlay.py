"""Evidence pictures for people: heat-map overlay with mask outline and boxes, and the binary mask.

The one place that draws an AnomalyResult (app, `chat --overlay`, `detect` -> overlay.png/mask.png all
call these two functions):

    render_overlay(image, result, caption=False) -> (H, W, 3) uint8 RGB
        # JET heat-map blended over the image, mask contour in white, numbered boxes in red;
        # caption=True also writes "ANOMALOUS 1.23 / thr 1.00" in the corner (for standalone files)
    render_mask(result, size=None) -> (H, W) uint8 0/255   # predicted defect pixels

The colour scale is anchored at the result's pixel threshold (threshold = middle of the scale), so a
normal image looks cool instead of being stretched to full red by per-image min-max normalisation.
Drawing uses OpenCV (applyColorMap, addWeighted, findContours, rectangle).
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from assistant.expert import AnomalyResult

HEAT_ALPHA = 0.45  # weight of the heat-map in the blend
BOX_COLOUR = (255, 40, 40)  # RGB of box outlines
CONTOUR_COLOUR = (255, 255, 255)  # RGB of the mask outline


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """PIL image or array -> contiguous (H, W, 3) uint8 RGB."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    else:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
        arr = arr[:, :, :3]
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def normalise_map(result: AnomalyResult) -> np.ndarray:
    """(H, W) float32 in [0, 1]: 0.5 at the pixel threshold, 1 at twice its distance from the map minimum."""
    amap = np.nan_to_num(result.anomaly_map.astype(np.float32))
    lo = float(amap.min()) if amap.size else 0.0
    t = float(result.pixel_threshold)
    if t > lo:
        v = (amap - lo) / (2.0 * (t - lo))
    else:  # no usable threshold: plain min-max
        hi = float(amap.max()) if amap.size else 1.0
        v = (amap - lo) / max(hi - lo, 1e-12)
    return np.clip(v, 0.0, 1.0)


def render_mask(result: AnomalyResult, size: tuple[int, int] | None = None) -> np.ndarray:
    """Predicted mask as (H, W) uint8 0/255; `size` = (W, H) resizes it (nearest)."""
    mask = result.pred_mask.astype(np.uint8) * 255
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        mask = cv2.resize(mask, tuple(size), interpolation=cv2.INTER_NEAREST)
    return mask


def render_overlay(image: Image.Image | np.ndarray, result: AnomalyResult, alpha: float = HEAT_ALPHA,
                   caption: bool = False) -> np.ndarray:
    """Heat-map over the image with the mask outline and boxes; (H, W, 3) uint8 RGB at the image's size.

    The map/mask/boxes may be computed at another resolution (e.g. the tower's input size); they are
    rescaled to the image here.
    """
    rgb = _as_rgb_array(image)
    h, w = rgb.shape[:2]
    mh, mw = result.anomaly_map.shape
    heat = (normalise_map(result) * 255).astype(np.uint8)  # (mh, mw)
    if (mh, mw) != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    heat_rgb = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(rgb, 1.0 - alpha, heat_rgb, alpha, 0.0)
    thick = max(1, round(min(h, w) / 200))
    mask = render_mask(result, size=(w, h))
    if mask.any():
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, CONTOUR_COLOUR, thick)
    sy, sx = h / mh, w / mw
    for i, b in enumerate(result.boxes):
        p0 = (round(b.x0 * sx), round(b.y0 * sy))
        p1 = (max(p0[0] + 1, round(b.x1 * sx) - 1), max(p0[1] + 1, round(b.y1 * sy) - 1))
        cv2.rectangle(out, p0, p1, BOX_COLOUR, thick + 1)
        label = f"#{i + 1}"
        scale = max(0.35, min(h, w) / 600)
        (_, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = p0[1] - 3 if p0[1] - th - 4 >= 0 else min(h - 1, p1[1] + th + 3)
        cv2.putText(out, label, (p0[0], ty), cv2.FONT_HERSHEY_SIMPLEX, scale, BOX_COLOUR, max(1, thick), cv2.LINE_AA)
    if caption:
        text = f"{'ANOMALOUS' if result.pred_label else 'NORMAL'} {result.pred_score:.2f} / thr {result.threshold:.2f}"
        scale = max(0.4, min(h, w) / 600)
        org = (8, int(24 * scale) + 4)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 80, 80) if result.pred_label else (80, 255, 80), thick, cv2.LINE_AA)
    return out
