"""Evidence pictures for people: heat-map overlay with mask outline and boxes, and the binary mask.

The one place that draws an AnomalyResult (app, `chat --overlay`, `detect` -> overlay.png/mask.png all
call these two functions):

    render_overlay(image, result, caption=False) -> (H, W, 3) uint8 RGB
        # JET heat-map blended over the image, mask contour in white, numbered boxes in red;
        # caption=True also writes "ANOMALOUS 1.23 / thr 1.00" in the corner (for standalone files)
    render_mask(result, size=None) -> (H, W) uint8 0/255   # predicted defect pixels
    render_comparison(query, reference, registration) -> [warped golden sample, query, signed difference]
        # aligned results only: the golden sample in the query's frame and where material is missing/extra

Aligned results (AnomalyResult.alignment == "aligned") colour and tag each box by its change (missing "-", extra
"+", altered "~") and add a small legend; free-path overlays are drawn exactly as before.

The colour scale is anchored at the result's pixel threshold (threshold = middle of the scale), so a
normal image looks cool instead of being stretched to full red by per-image min-max normalisation.
Drawing uses OpenCV (applyColorMap, addWeighted, findContours, rectangle).
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from assistant.expert import AnomalyResult
from assistant.expert.alignment import Registration, grey, warp_image
from assistant.expert.golden import PIXEL_FLOOR, material_side, pixel_difference
from assistant.wording import CHANGE_TAGS, change_label

HEAT_ALPHA = 0.45  # weight of the heat-map in the blend
BOX_COLOUR = (255, 40, 40)  # RGB of box outlines
CONTOUR_COLOUR = (255, 255, 255)  # RGB of the mask outline
# RGB of aligned regions by change; the signed difference uses the same two colours (extra red, missing blue)
CHANGE_COLOURS = {"missing": (40, 110, 255), "extra": (255, 40, 40), "altered": (255, 170, 0)}
DIFF_GREY = (96, 64)  # the difference picture's grey: base level + this much of the query's grey (context)
DIFF_FLOOR = 0.25  # differences below this fraction of the full-colour change stay grey (lighting-fit residue)


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
        colour = CHANGE_COLOURS.get(b.change, BOX_COLOUR)  # free-path boxes (change "") keep BOX_COLOUR
        cv2.rectangle(out, p0, p1, colour, thick + 1)
        label = f"#{i + 1}{CHANGE_TAGS.get(b.change, '')}"
        scale = max(0.35, min(h, w) / 600)
        (_, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = p0[1] - 3 if p0[1] - th - 4 >= 0 else min(h - 1, p1[1] + th + 3)
        cv2.putText(out, label, (p0[0], ty), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, max(1, thick), cv2.LINE_AA)
    draw_legend(out, [b.change for b in result.boxes])
    if caption:
        text = f"{'ANOMALOUS' if result.pred_label else 'NORMAL'} {result.pred_score:.2f} / thr {result.threshold:.2f}"
        scale = max(0.4, min(h, w) / 600)
        org = (8, int(24 * scale) + 4)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 80, 80) if result.pred_label else (80, 255, 80), thick, cv2.LINE_AA)
    return out


def draw_legend(out: np.ndarray, changes: list[str]) -> None:
    """In place: a small legend at the bottom left of an (H, W, 3) overlay naming the changes present (aligned
    regions); nothing when no region has one, so free-path overlays stay as they were."""
    present = [c for c in CHANGE_COLOURS if c in changes]
    if not present:
        return
    h, w = out.shape[:2]
    scale = max(0.3, min(h, w) / 700)
    (tw, th), _ = cv2.getTextSize(max((change_label(c) for c in present), key=len), cv2.FONT_HERSHEY_SIMPLEX,
                                  scale, 1)
    row, pad = th + 6, 3
    x0, y0 = pad, h - pad - row * len(present)
    cv2.rectangle(out, (0, max(0, y0 - pad)), (min(w - 1, x0 + th + 6 + tw + pad), h - 1), (0, 0, 0), -1)
    for k, c in enumerate(present):
        y = y0 + k * row
        cv2.rectangle(out, (x0, y + 1), (x0 + th, y + th + 1), CHANGE_COLOURS[c], -1)
        cv2.putText(out, change_label(c), (x0 + th + 4, y + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)


def display_warp(warp: np.ndarray, side: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """A (2, 3) warp between two images at `side` (H, W) expressed between the same images at `size` (H, W):
    pixel centres scale with the image (x_side = (x + 0.5) * side / size - 0.5), the warp sits in between."""
    def scaling(f_x: float, f_y: float) -> np.ndarray:
        return np.array([[f_x, 0, 0.5 * f_x - 0.5], [0, f_y, 0.5 * f_y - 0.5], [0, 0, 1]], np.float64)

    to_side = scaling(side[1] / size[1], side[0] / size[0])
    to_size = scaling(size[1] / side[1], size[0] / side[0])
    full = np.vstack([np.asarray(warp, np.float64), [0, 0, 1]])
    return (to_size @ full @ to_side)[:2].astype(np.float32)


def signed_difference_rgb(query_grey: np.ndarray, reference_grey: np.ndarray, warp: np.ndarray,
                          material: str = "auto") -> np.ndarray:
    """(H, W, 3) uint8 diverging picture of the aligned difference (golden.pixel_difference: lighting matched,
    edges a pixel or two off forgiven): red where the query has material the reference has not (extra), blue where
    the reference's material is absent (missing), grey (the query, faint) elsewhere. Full colour at half the
    reference's material/background contrast, the change `golden.polarity` counts."""
    signed, _ = pixel_difference(query_grey, reference_grey, warp)  # (H, W), > 0: brighter than the reference
    bright, contrast = material_side(reference_grey, material)
    towards = signed if bright else -signed  # > 0: towards the material (gained)
    t = np.clip(towards / max(0.5 * contrast, PIXEL_FLOOR), -1.0, 1.0)[..., None]  # (H, W, 1), 1 = full colour
    t = np.sign(t) * np.clip((np.abs(t) - DIFF_FLOOR) / (1.0 - DIFF_FLOOR), 0.0, 1.0)
    base = (DIFF_GREY[0] + DIFF_GREY[1] * query_grey)[..., None].repeat(3, -1)  # (H, W, 3) context
    red, blue = np.array(CHANGE_COLOURS["extra"], np.float32), np.array(CHANGE_COLOURS["missing"], np.float32)
    out = base * (1 - np.abs(t)) + np.where(t > 0, red, blue) * np.abs(t)
    return np.clip(out, 0, 255).astype(np.uint8)


def render_comparison(query: Image.Image | np.ndarray, reference: Image.Image | np.ndarray,
                      registration: Registration, material: str = "auto") -> list[np.ndarray]:
    """[golden sample warped into the query's frame, the query, signed difference], each (H, W, 3) uint8 RGB at
    the query's size. registration.warp maps query pixels to reference pixels with both images resized to
    registration.size (as the expert compares them); the reference is brought to the query's size and the warp to
    that scale, then sampled with WARP_INVERSE_MAP (alignment.warp_image)."""
    rgb = _as_rgb_array(query)
    h, w = rgb.shape[:2]
    ref = _as_rgb_array(reference)
    shrink = ref.shape[0] * ref.shape[1] > h * w
    ref = cv2.resize(ref, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    warp = display_warp(registration.warp, tuple(registration.size), (h, w))
    warped, _ = warp_image(ref, warp)
    diff = signed_difference_rgb(grey(rgb), grey(ref), warp, material)
    return [np.ascontiguousarray(warped), rgb, diff]
