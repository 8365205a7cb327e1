"""Anomaly synthesizers: a normal RGB image in, a defective image + exact binary mask + metadata out.

Public API (used by training/ and by the expert's threshold calibration):

    synthesize(image, method, rng, other=None, is_object=None, cfg=None) -> SynthResult
    METHODS  # names accepted by synthesize

Every method works on an (H, W, 3) uint8 RGB array and is driven only by `rng` (same rng state ->
same bytes). The defect is composed with a feathered alpha that is exactly zero farther than
`feather` pixels (Chebyshev) from the returned mask, so pixels outside the dilated mask are untouched.
For object images (plain background) defects land on the foreground; for textures anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from data_synth.defects import BLENDING_METHODS, DEFECT_TYPES, DEFECTS, METHODS
from data_synth.masks import compose, contrast_in, foreground_mask, mask_stats, severity_word

__all__ = ["BLENDING_METHODS", "DEFECT_TYPES", "METHODS", "SynthConfig", "SynthError", "SynthResult", "check_image",
           "foreground_mask", "mask_stats", "synthesize", "synthesize_many", "synthesize_multi"]

cv2.setNumThreads(1)  # determinism and fair sharing of the CPU


@dataclass
class SynthConfig:
    min_area: float = 0.001  # smallest accepted mask area (fraction of the image)
    max_area: float = 0.25  # largest accepted mask area (fraction of the image)
    min_contrast: float = 14.0  # mean max-channel |change| inside the mask (0..255) for a visible defect
    max_tries: int = 8  # attempts per sample before falling back to a stain
    patch_min: float = 0.10  # NSA / CutPaste patch side, fraction of the short image side (min)
    patch_max: float = 0.30  # NSA / CutPaste patch side (max)
    max_components: int = 3  # Perlin masks keep at most this many largest blobs
    fg_threshold: float = 28.0  # colour distance from the border median that counts as foreground


@dataclass
class SynthResult:
    image: np.ndarray  # (H, W, 3) uint8 RGB with the defect
    mask: np.ndarray  # (H, W) bool, True on defect pixels
    meta: dict = field(default_factory=dict)  # method, defect_type, bbox, area_fraction, position, size, ...


class SynthError(ValueError):
    """Bad input to a synthesizer (message names what was expected and what came)."""


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise SynthError(f"{name}: expected a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SynthError(f"{name}: expected (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if min(image.shape[:2]) < 16:
        raise SynthError(f"{name}: expected at least 16x16 pixels, got {image.shape[1]}x{image.shape[0]}")
    return image


def synthesize(image: np.ndarray, method: str, rng: np.random.Generator, other: np.ndarray | None = None,
               is_object: bool | None = None, cfg: SynthConfig | None = None) -> SynthResult:
    """Synthesize one anomaly of `method` on a normal RGB uint8 image.

    other: another normal image of the same source (NSA's patch donor; the image itself when None).
    is_object: True = parts on a plain background (defects on the foreground), False = texture
    (anywhere), None = decide from the image (uniform border and a 3..85% foreground).
    The mask is never empty; when no draw meets the area/visibility limits in cfg.max_tries, a stain is
    drawn instead and meta["fallback"] names the original method.
    """
    cfg = cfg or SynthConfig()
    if method not in DEFECTS:
        raise SynthError(f"unknown synthesis method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(rng, np.random.Generator):
        raise SynthError(f"rng: expected numpy.random.Generator, got {type(rng).__name__}")
    image = check_image(image)
    if other is not None:
        other = check_image(other, "other")
    fg, auto_obj = foreground_mask(image, cfg.fg_threshold)
    obj = auto_obj if is_object is None else bool(is_object)
    if not obj or not auto_obj:  # texture, or a caller-declared object without a plain border: whole image
        fg = np.ones(image.shape[:2], bool)
    h, w = image.shape[:2]
    donor = None
    if method == "nsa" and other is not None:
        o = other if other.shape == image.shape else cv2.resize(other, (w, h), interpolation=cv2.INTER_AREA)
        donor = (o, foreground_mask(o, cfg.fg_threshold)[0] if obj else np.ones((h, w), bool))
    best, tried_all = _draw(image, method, fg, obj, rng, donor, other, cfg)
    fallback = method if tried_all and method != "stain" else None
    if best is None:  # nothing drawable (e.g. a degenerate foreground): a stain anywhere
        alt, mask, feather, params = DEFECTS["stain"].draw(image, np.ones((h, w), bool), False, rng, other, cfg)
        out = compose(image, alt, mask, feather)
        best, fallback = ("stain", out, mask, params, contrast_in(image, out, mask)), method
    m, out, mask, params, con = best
    stats = mask_stats(mask)
    meta = {"method": m, "requested": method, "defect_type": DEFECT_TYPES[m], **stats,
            "severity": severity_word(stats["area_fraction"], con), "contrast": round(con, 2),
            "is_object": bool(obj), "fallback": fallback, "params": params}
    return SynthResult(image=out, mask=mask, meta=meta)


def _draw(image, method: str, fg, obj: bool, rng, donor, other, cfg: SynthConfig) -> tuple[tuple | None, bool]:
    """cfg.max_tries draws of `method`, then one stain: ((method, image, mask, params, contrast) of the first draw
    within cfg's area and visibility limits, else the best kept (the first with a mask, replaced by any more visible
    one within the area limits), None when no draw gave a mask; whether the last try, the stain, was reached)."""
    best = None
    for attempt in range(cfg.max_tries + 1):
        m = method if attempt < cfg.max_tries else "stain"
        got = DEFECTS[m].draw(image, fg, obj, rng, donor if m == "nsa" else other, cfg)
        if got is None:
            continue
        alt, mask, feather, params = got
        mask = mask.astype(bool)
        area = mask.mean()
        if not mask.any():
            continue
        out = compose(image, alt, mask, feather)
        con = contrast_in(image, out, mask)
        in_area = cfg.min_area <= area <= cfg.max_area
        if in_area and con >= cfg.min_contrast * DEFECTS[m].contrast_factor:
            return (m, out, mask, params, con), attempt == cfg.max_tries
        if best is None or (in_area and con > best[4]):
            best = (m, out, mask, params, con)
    return best, True


def synthesize_multi(image: np.ndarray, methods: list[str], n: int, rng: np.random.Generator,
                     other: np.ndarray | None = None, is_object: bool | None = None,
                     cfg: SynthConfig | None = None) -> SynthResult:
    """`n` separate defects on one image (methods drawn from `methods`): each one after the first is kept only
    when its mask stays clear of the earlier ones (a gap of 2% of the image side), so the mask has at least
    as many connected regions as defects were kept; up to cfg.max_tries draws per extra defect.
    meta is the first defect's, with the union mask's statistics, `n_defects`, and defect_type "defect" when the
    kept defects are of different types."""
    cfg = cfg or SynthConfig()
    if n < 1:
        raise SynthError(f"synthesize_multi: expected n >= 1 defects, got {n}")
    first = synthesize(image, methods[int(rng.integers(len(methods)))], rng, other=other, is_object=is_object, cfg=cfg)
    out, union, types = first.image, first.mask.copy(), [first.meta["defect_type"]]
    gap = max(1, int(0.02 * max(image.shape[:2])))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap + 1, 2 * gap + 1))
    for _ in range(n - 1):
        for _try in range(cfg.max_tries):
            res = synthesize(out, methods[int(rng.integers(len(methods)))], rng, other=other, is_object=is_object,
                             cfg=cfg)
            if not (res.mask & (cv2.dilate(union.astype(np.uint8), kernel) > 0)).any():
                out, union = res.image, union | res.mask
                types.append(res.meta["defect_type"])
                break
    stats = mask_stats(union)
    meta = {**first.meta, **stats, "n_defects": len(types),
            "defect_type": types[0] if len(set(types)) == 1 else "defect",
            "severity": severity_word(stats["area_fraction"], first.meta["contrast"])}
    return SynthResult(image=out, mask=union, meta=meta)


def synthesize_many(normals: list[np.ndarray], n: int, rng: np.random.Generator, methods: list[str] | None = None,
                    is_object: bool | None = None, cfg: SynthConfig | None = None) -> list[SynthResult]:
    """`n` anomalies on a user's normal images (e.g. the references, for threshold calibration): image
    j % len(normals), method drawn uniformly from `methods`, NSA donor = another normal when there is one."""
    methods = list(methods or METHODS)
    if not normals:
        raise SynthError("normals: expected at least one normal image, got none")
    if n <= 0:
        raise SynthError(f"n: expected a positive number of anomalies, got {n}")
    bad = [m for m in methods if m not in DEFECTS]
    if bad:
        raise SynthError(f"unknown synthesis method(s) {bad}; expected some of {', '.join(METHODS)}")
    out = []
    for j in range(n):
        i = j % len(normals)
        other = normals[(i + 1) % len(normals)] if len(normals) > 1 else None
        m = methods[int(rng.integers(len(methods)))]
        out.append(synthesize(normals[i], m, rng, other=other, is_object=is_object, cfg=cfg))
    return out
