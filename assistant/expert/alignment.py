"""Registration of a reference normal image to the query: is the reference a golden sample of the same view?

`register(query, reference)` finds the warp (translation + small rotation/scale) that maps the query's pixel grid
onto the reference, coarse to fine (`fit_warp`: phase correlation proposes a translation, OpenCV's ECC refines it,
a fixture's prior prefers the smaller of equally good warps), and judges it:

- `correlation`: zero-normalised cross-correlation (ZNCC) of the query and the warped reference, common area;
- `agreement`: the share of the reference's structured blocks (a grid of BLOCKS x BLOCKS) whose detail (band-pass:
  edges and fine texture, not shading) correlates with the query's there. An unrelated shot of the same kind of
  part reaches a fair global correlation through its background and shading alone; its detail does not line up.
  A defect spoils only the few blocks it covers;
- `residual`: mean absolute difference of the two z-scored grey images over the common area (what is left after
  registration, in units of the images' contrast).

`good` requires a warp within a fixture's motion (MAX_SHIFT, MAX_ROTATION, MAX_SCALE) and correlation and agreement
above their floors: the aligned comparison is used only when the reference shows the same view in the same place.
On the dev folders every DeepPCB template registered and no pair of the non-aligned folders (hazelnut,
magnetic tile, cookie) did (bench/golden.py). Everything here is NumPy/OpenCV on (H, W) float32 grey in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

COARSE_SIDE = 64  # registration starts at this side and doubles up to the full side
ECC_ITERATIONS = (50, 20, 10)  # ECC iterations at the coarsest, middle and finer levels
ECC_SIGMA = 1.0  # Gaussian blur (pixels of each level) before ECC: smooth cost surface on binarised images
MAX_SHIFT = 0.15  # largest translation, fraction of the image side, accepted as "the same view"
MAX_ROTATION = 10.0  # largest rotation, degrees
MAX_SCALE = 0.1  # largest |scale - 1| (and |anisotropy|) of the warp
MIN_CORRELATION = 0.5  # global ZNCC of query and warped reference below which the registration is not good
BLOCKS = 8  # agreement is measured on BLOCKS x BLOCKS blocks
DETAIL_SIGMAS = (1.0, 4.0)  # band-pass (difference of Gaussians, pixels) compared block by block
BLOCK_CORRELATION = 0.5  # a structured block agrees when the local ZNCC of its detail reaches this
MIN_AGREEMENT = 0.8  # share of agreeing structured blocks below which the registration is not good
MIN_BLOCK_STD = 0.01  # detail std (grey in [0, 1]) below which a block carries no structure (sensor noise)
FLAT_STD = 0.01  # a reference whose grey std is below this is plain: nothing to register (identity warp)
WARP_PRIOR = 0.01  # correlation a warp must gain per unit of `warp_size` to be preferred to a smaller one


@dataclass
class Registration:
    """How a reference maps onto a query and whether the pair can be compared position by position."""

    warp: np.ndarray  # (2, 3) float32 affine: query pixel (x, y, 1) -> reference pixel, at the registered size
    size: tuple[int, int]  # (H, W) of the grey images the warp refers to
    correlation: float  # ZNCC of query and warped reference over the common area, in [-1, 1]
    agreement: float  # share of structured reference blocks whose detail ZNCC >= BLOCK_CORRELATION, in [0, 1]
    residual: float  # mean |z(query) - z(warped reference)| over the common area (0 = identical)
    shift: tuple[float, float]  # (dx, dy) translation of the warp, pixels at `size`
    rotation: float  # degrees
    scale: float  # isotropic scale of the warp (1 = same size)
    good: bool  # True: the aligned (position-aware) comparison may be used
    reason: str = ""  # why not good ("" when good)

    def to_dict(self) -> dict:
        return {"correlation": round(self.correlation, 4), "agreement": round(self.agreement, 4),
                "residual": round(self.residual, 4), "shift": [round(self.shift[0], 2), round(self.shift[1], 2)],
                "rotation": round(self.rotation, 3), "scale": round(self.scale, 4), "good": bool(self.good),
                "reason": self.reason}


def grey(img: Image.Image | np.ndarray, side: int | tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) float32 grey image in [0, 1] from a PIL image or an (H, W[, 3]) array (integers: 0..255; floats:
    0..1), optionally resized to `side` (an int: square; a tuple: (H, W))."""
    if isinstance(img, Image.Image):
        arr = np.asarray(img.convert("L"), np.float32) / 255.0
    else:
        arr = np.asarray(img)
        integer = np.issubdtype(arr.dtype, np.integer)  # uint8 grey levels; floats are taken as [0, 1]
        arr = arr.astype(np.float32) / (255.0 if integer else 1.0)
        if arr.ndim == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    if side is not None:
        h, w = (side, side) if isinstance(side, int) else side
        if arr.shape != (h, w):
            arr = cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA)
    return arr


def warp_image(img: np.ndarray, warp: np.ndarray, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(reference resampled on the query's grid, (H, W) bool mask of the query pixels that fall inside the
    reference). `warp` maps query pixels to reference pixels (Registration.warp); `img` may have channels."""
    h, w = size or img.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = cv2.warpAffine(img, warp, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    inside = (
        cv2.warpAffine(
            np.ones(img.shape[:2], np.uint8),
            warp,
            (w, h),
            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        > 0
    )
    return out, inside


def scale_warp(warp: np.ndarray, factor: float) -> np.ndarray:
    """The same geometric warp expressed on images `factor` times larger (pixel coordinates scale, the linear part
    does not)."""
    out = warp.astype(np.float32).copy()
    out[:, 2] *= factor
    return out


def decompose(warp: np.ndarray) -> tuple[tuple[float, float], float, float, float]:
    """((dx, dy), rotation degrees, isotropic scale, anisotropy) of a (2, 3) affine warp."""
    a = warp[:, :2].astype(np.float64)
    sx, sy = math.hypot(a[0, 0], a[1, 0]), math.hypot(a[0, 1], a[1, 1])
    rot = math.degrees(math.atan2(a[1, 0], a[0, 0]))
    return (
        (float(warp[0, 2]), float(warp[1, 2])),
        rot,
        math.sqrt(max(sx * sy, 1e-12)),
        abs(sx - sy) / max(sx, sy, 1e-12),
    )


def zncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Zero-normalised cross-correlation of two images (over `mask` when given); 0 when either is flat."""
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def phase_shift(query: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(dx, dy) such that reference(x + dx, y + dy) ~ query(x, y): phase correlation with a Hann window."""
    win = cv2.createHanningWindow(query.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(query.astype(np.float32), reference.astype(np.float32), win)
    return float(dx), float(dy)


def ecc(query: np.ndarray, reference: np.ndarray, init: np.ndarray, iterations: int, affine: bool = False,
        eps: float = 1e-4) -> tuple[np.ndarray, float] | None:
    """Refine a warp (query pixel -> reference pixel) by ECC, Euclidean (shift + rotation) or affine: (warp, its
    correlation), or None when ECC does not converge."""
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, eps)
    motion = cv2.MOTION_AFFINE if affine else cv2.MOTION_EUCLIDEAN
    try:
        cc, warp = cv2.findTransformECC(query, reference, init.astype(np.float32).copy(), motion, crit, None, 1)
    except cv2.error:
        return None
    return (warp, float(cc)) if np.all(np.isfinite(warp)) else None


def pyramid(img: np.ndarray, side: int) -> np.ndarray:
    """`img` brought to at most `side` (longer side) and blurred by ECC_SIGMA at that scale."""
    f = min(1.0, side / max(img.shape))
    if f < 1.0:
        img = cv2.resize(img, (max(8, round(img.shape[1] * f)), max(8, round(img.shape[0] * f))),
                         interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(img, (0, 0), ECC_SIGMA)


def detail(img: np.ndarray) -> np.ndarray:
    """Band-pass of a grey image (blurred by DETAIL_SIGMAS[0] minus blurred by DETAIL_SIGMAS[1]): the edges and fine
    texture that must line up on a golden sample, without the shading and background that unrelated shots share."""
    return cv2.GaussianBlur(img, (0, 0), DETAIL_SIGMAS[0]) - cv2.GaussianBlur(img, (0, 0), DETAIL_SIGMAS[1])


def block_agreement(query: np.ndarray, warped: np.ndarray, inside: np.ndarray, blocks: int = BLOCKS) -> float:
    """Share of the reference's structured blocks whose detail (`detail`) agrees with the query's: local ZNCC >=
    BLOCK_CORRELATION. A block is structured when the warped reference's detail varies there (std at least
    MIN_BLOCK_STD and at least half its own detail std over the image). 1.0 when the reference has no structure: a
    plain reference is compared with any query pixel by pixel."""
    dq, dr = detail(query), detail(warped)
    thr = max(MIN_BLOCK_STD, 0.5 * float(dr[inside].std()) if inside.any() else 0.0)
    h, w = query.shape
    ys = np.linspace(0, h, blocks + 1).astype(int)
    xs = np.linspace(0, w, blocks + 1).astype(int)
    agree = total = 0
    for i in range(blocks):
        for j in range(blocks):
            sl = (slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1]))
            if inside[sl].mean() < 0.9 or dr[sl].std() < thr:
                continue
            total += 1
            agree += zncc(dq[sl], dr[sl]) >= BLOCK_CORRELATION
    return agree / total if total else 1.0


def limits_reason(warp: np.ndarray, size: tuple[int, int]) -> str:
    """"" when a warp lies within the motion a fixture allows (MAX_SHIFT, MAX_ROTATION, MAX_SCALE), else why not."""
    shift, rotation, scale, anisotropy = decompose(warp)
    if max(abs(shift[0]) / size[1], abs(shift[1]) / size[0]) > MAX_SHIFT:
        return f"shift ({shift[0]:.1f}, {shift[1]:.1f}) px exceeds {MAX_SHIFT:.0%} of the image"
    if abs(rotation) > MAX_ROTATION:
        return f"rotation {rotation:.1f} deg exceeds {MAX_ROTATION:g} deg"
    if abs(scale - 1.0) > MAX_SCALE or anisotropy > MAX_SCALE:
        return f"scale {scale:.3f} (anisotropy {anisotropy:.3f}) outside 1 +/- {MAX_SCALE:g}"
    return ""


def judge(warp: np.ndarray, size: tuple[int, int], correlation: float, agreement: float) -> str:
    """"" when a registration is good, else the first reason it is not."""
    why = limits_reason(warp, size)
    if why:
        return why
    if correlation < MIN_CORRELATION:
        return f"correlation {correlation:.2f} below {MIN_CORRELATION:g}"
    if agreement < MIN_AGREEMENT:
        return f"only {agreement:.0%} of structured blocks agree (at least {MIN_AGREEMENT:.0%} needed)"
    return ""


def warp_size(warp: np.ndarray, size: tuple[int, int]) -> float:
    """How far a warp is from the identity: shift (fraction of the image side) + rotation (radians) + |log scale| +
    anisotropy. The prior of a fixture: among equally good fits, the smaller warp is the true one."""
    (dx, dy), rot, scale, aniso = decompose(warp)
    return math.hypot(dx / size[1], dy / size[0]) + abs(math.radians(rot)) + abs(math.log(scale)) + aniso


def fit_warp(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Warp (query pixel -> reference pixel) at q's size. Coarse to fine with Euclidean ECC (shift + rotation): at
    the coarsest level (COARSE_SIDE) ECC starts from the identity and from the translation phase correlation
    proposes; each finer level refines the better start. An affine refinement (adds scale) at the middle level is a
    further candidate. Candidates are ranked by their correlation minus WARP_PRIOR x `warp_size` on the full-size
    blurred images, the identity among them: edges of parallel lines or a periodic pattern correlate equally well
    under a large slide, a fixture moves a part only a little."""
    size = q.shape
    levels = [s for s in (COARSE_SIDE, 2 * COARSE_SIDE) if s < max(size)] + [max(size)]
    pyr = [(pyramid(q, side), pyramid(r, side)) for side in levels]
    fs = [p[0].shape[1] / size[1] for p in pyr]  # each level's pixels per full-size pixel

    def penalised(w: np.ndarray, cc: float, f: float) -> float:
        return cc - WARP_PRIOR * warp_size(scale_warp(w, 1.0 / f), size)

    qs, rs = pyr[0]
    dx, dy = phase_shift(qs, rs)
    starts = [np.eye(2, 3, dtype=np.float32), np.array([[1, 0, dx], [0, 1, dy]], np.float32)]
    fits = [x for x in (ecc(qs, rs, w, ECC_ITERATIONS[0]) for w in starts) if x is not None]
    if not fits:
        return np.eye(2, 3, dtype=np.float32)
    warp = max(fits, key=lambda x: penalised(x[0], x[1], fs[0]))[0]
    candidates = [np.eye(2, 3, dtype=np.float32)]
    for lv in range(1, len(levels)):
        start = scale_warp(warp, fs[lv] / fs[lv - 1])
        fit = ecc(*pyr[lv], start, ECC_ITERATIONS[min(lv, len(ECC_ITERATIONS) - 1)])
        warp = fit[0] if fit is not None else start
        if lv == 1 or len(levels) == 2:
            aff = ecc(*pyr[lv], warp, ECC_ITERATIONS[1], affine=True)
            if aff is not None:
                candidates.append(scale_warp(aff[0], 1.0 / fs[lv]))
    candidates.append(scale_warp(warp, 1.0 / fs[-1]))
    qb, rb = pyr[-1] if fs[-1] == 1.0 else (pyramid(q, max(size)), pyramid(r, max(size)))

    def score(w: np.ndarray) -> float:
        warped, inside = warp_image(rb, w, size)
        return zncc(qb, warped, inside if inside.mean() > 0.25 else None) - WARP_PRIOR * warp_size(w, size)

    within = [w for w in candidates if not limits_reason(w, size)]  # the identity always is
    return max(within, key=score)


def register(query: Image.Image | np.ndarray, reference: Image.Image | np.ndarray, side: int = 256,
             mask: np.ndarray | None = None) -> Registration:
    """Register `reference` to `query`, both brought to side x side grey (`fit_warp`), and judge the result
    (module docstring) on the query pixels in `mask` ((side, side) bool; default all). The warp maps query pixels
    at `side` to reference pixels at `side`; `warp_image(reference, reg.warp)` lays the reference over the query.
    A plain reference (grey std below FLAT_STD) has nothing to register: identity warp, judged by the warp limits
    only."""
    q, r = grey(query, side), grey(reference, side)
    size = q.shape
    plain = float(r.std()) < FLAT_STD
    warp = np.eye(2, 3, dtype=np.float32) if plain else fit_warp(q, r)
    qb, rb = cv2.GaussianBlur(q, (0, 0), ECC_SIGMA), cv2.GaussianBlur(r, (0, 0), ECC_SIGMA)
    warped, inside = warp_image(rb, warp, size)
    if mask is not None:
        if mask.shape != size:
            raise ValueError(f"register: expected a mask of shape {size}, got {mask.shape}")
        inside = inside & mask
    inner = inside if inside.mean() > 0.25 else np.ones_like(inside)
    corr = zncc(qb, warped, inner)
    shift, rotation, scale, _ = decompose(warp)
    zq = (qb[inner] - qb[inner].mean()) / max(float(qb[inner].std()), 1e-6)
    zr = (warped[inner] - warped[inner].mean()) / max(float(warped[inner].std()), 1e-6)
    residual = float(np.abs(zq - zr).mean())
    agreement = block_agreement(q, warp_image(r, warp, size)[0], inside)
    reason = judge(warp, size, 1.0 if plain else corr, agreement)
    return Registration(warp=warp.astype(np.float32), size=tuple(size), correlation=corr, agreement=agreement,
                        residual=residual, shift=shift, rotation=rotation, scale=scale, good=not reason, reason=reason)


def lighting(query: np.ndarray, warped: np.ndarray, inside: np.ndarray) -> tuple[float, float]:
    """(gain, offset) with query ~ gain x warped reference + offset over `inside` (least squares); a contrast change
    outside [0.5, 2] is the part's, not the lighting's (gain 1)."""
    x, y = warped[inside], query[inside]
    if x.size == 0:
        return 1.0, 0.0
    var = float(x.var())
    gain = float(((x - x.mean()) * (y - y.mean())).mean() / var) if var > 1e-6 else 1.0
    gain = gain if 0.5 <= gain <= 2.0 else 1.0
    return gain, float(y.mean() - gain * x.mean())
