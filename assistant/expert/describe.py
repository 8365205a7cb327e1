"""Measured descriptors of each flagged region: what the defect looks like, in numbers and a few fixed words.

Extent words come from the region of the anomaly map the user is shown (its mask inside the box): area, length and
width of the smallest rotated rectangle, elongation = length / width, the form ("elongated" / "compact") and, when
elongated, the orientation of the long side. All lengths are at 256 px, so words do not change with resolution.

What the defect looks like comes from the image itself. The map's cells are 8-32 px, so inside the region the
pixels that make the defect (its "core") are found first: the region is inpainted from the part around it (OpenCV
Telea) as an estimate of the surface without the defect (with an aligned golden sample, the reference at the same
place is that estimate), and the pixels that differ from the estimate by more than the Otsu level of the region's
differences are the core. From the core:
- tone: lightness (CIELAB L*) against the estimate: "darker" / "brighter" / "similar";
- colour: the nearest PALETTE name of the core's mean colour when its hue or saturation differs from the estimate;
- edge: "sharp" when the lightness changes within EDGE_PX pixels across the core's border, else "soft";
- thinness: the core's width; a thin, long core makes the form "line";
- count: separate pieces of the core.
`features` turns a descriptor into the vector the defect-type classifier (expert/defect_type.py) reads.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from PIL import Image

SIDE = 256.0  # lengths are reported at this side (the longer image side scaled to it)
NOISE_FACTOR = 2.5  # core pixels differ from the estimate by more than this x the region's median difference
MIN_PIXELS = 6  # fewer core pixels (at 256 px) than this: the map's region is the core
LINE_ELONGATION = 4.0  # core length / width at or above: "line" when also thin (core width <= LINE_WIDTH)
LINE_WIDTH = 8.0  # px at 256 px
ELONGATED = 2.0  # region length / width at or above: "elongated"
TONE_DELTA = 4.0  # |mean L* difference| above this (L* in 0..100): darker / brighter
COLOUR_DELTA = 8.0  # chroma-plane (a*, b*) distance above this: a colour shift, named
EDGE_PX = 3.0  # transition width (px at 256 px) at or below which the border is "sharp"

# palette: name -> sRGB; the defect's mean colour is named by the nearest entry in CIELAB
PALETTE = {
    "black": (20, 20, 20), "dark grey": (70, 70, 70), "grey": (128, 128, 128), "light grey": (190, 190, 190),
    "white": (245, 245, 245), "brown": (110, 70, 35), "dark brown": (60, 40, 20), "beige": (200, 180, 140),
    "red": (190, 40, 40), "orange": (220, 130, 40), "yellow": (220, 200, 50), "green": (60, 150, 60),
    "blue": (50, 90, 190), "purple": (120, 60, 150), "pink": (230, 150, 170), "rust": (160, 75, 30),
}


@dataclass
class Descriptor:
    # extent: the map's region (what the user is shown), lengths at 256 px
    area_px: int
    length_px: float  # long side of the smallest rotated rectangle around the region
    width_px: float  # its short side
    elongation: float  # length / width (>= 1)
    form: str  # "line" (elongated region, thin long core) | "elongated" | "compact"
    orientation: str  # "horizontal" | "vertical" | "diagonal"; "" when compact
    centroid: tuple[float, float]  # (y, x) of the region, fractions of the image height and width
    # look: the core (pixels that stand out from the defect-free estimate)
    core_px: int
    core_width_px: float  # short side of the core's rotated rectangle
    core_elongation: float
    count: int  # separate pieces of the core
    tone: str  # lightness against the surface around it: "darker" | "brighter" | "similar"
    contrast: float  # mean L* difference (core - estimate), L* in 0..100
    chroma: float  # distance in the (a*, b*) plane between the core's mean colour and the estimate's
    colour: str  # PALETTE name of the core's mean colour when chroma > COLOUR_DELTA, else ""
    edge: str  # "sharp" | "soft"
    edge_px: float  # pixels (at 256 px) the lightness takes to change across the core's border
    reference_tone: str = ""  # aligned golden sample: lightness against the reference at the same place
    # expert/defect_type.py: the named type ("" when not confident), its probability, and every type's
    defect_type: str = ""
    type_confidence: float = 0.0
    type_probs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["centroid"] = [round(v, 4) for v in self.centroid]
        for k in ("length_px", "width_px", "elongation", "core_width_px", "core_elongation", "contrast", "chroma",
                  "edge_px", "type_confidence"):
            out[k] = round(float(out[k]), 3)
        out["type_probs"] = {k: round(float(v), 3) for k, v in self.type_probs.items()}
        return out


_LAB_SCALE = np.array([100 / 255, 1, 1], np.float32)  # OpenCV 8-bit Lab: L* x 255/100, a*/b* + 128


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 sRGB -> (H, W, 3) float32 CIELAB (L* 0..100, a*, b* centred on 0)."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab).astype(np.float32)
    lab[..., 1:] -= 128.0
    return lab * _LAB_SCALE


def colour_name(lab: np.ndarray) -> str:
    """Nearest PALETTE name of one CIELAB colour (3,)."""
    names = list(PALETTE)
    pal = to_lab(np.array([PALETTE[n] for n in names], np.uint8)[None])[0]  # (K, 3)
    return names[int(np.argmin(((pal - lab[None]) ** 2).sum(1)))]


def image_rgb(image: Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 sRGB of an image at `size` (H, W), the anomaly map's size."""
    arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[:2] != tuple(size):
        arr = cv2.resize(arr, (int(size[1]), int(size[0])), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(arr[..., :3].astype(np.uint8))


def background(rgb: np.ndarray, region: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, 3) uint8: the region's pixels inpainted from the surface around them (the part without the defect)."""
    radius = max(3, round(6 * scale))
    return cv2.inpaint(rgb, region.astype(np.uint8), radius, cv2.INPAINT_TELEA)


def refine(diff: np.ndarray, region: np.ndarray, min_pixels: int) -> np.ndarray:
    """(H, W) bool: the pixels of `region` whose difference from the estimate stands out (Otsu level of the region's
    differences, at least NOISE_FACTOR x their median); the region itself when fewer than min_pixels do."""
    vals = diff[region]
    if vals.size < min_pixels:
        return region
    top = float(vals.max())
    if top <= 0:
        return region
    u8 = np.clip(vals / top * 255, 0, 255).astype(np.uint8)
    otsu = cv2.threshold(u8.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]
    # Otsu's foreground is u8 > otsu, i.e. vals >= (otsu + 1) / 255 * top: the same cut on the unrounded values
    level = max((otsu + 1.0) / 255.0 * top, NOISE_FACTOR * float(np.median(vals)))
    out = region & (diff >= level)
    return out if out.sum() >= min_pixels else region


def rect(mask: np.ndarray, scale: float) -> tuple[float, float, float]:
    """(length, width, angle of the long side to the horizontal in 0..90 degrees) of the smallest rotated rectangle
    around a bool (H, W) mask; lengths multiplied by `scale`."""
    pts = np.column_stack(np.nonzero(mask)[::-1]).astype(np.float32)  # (N, 2) x, y
    (_, _), (w, h), angle = cv2.minAreaRect(pts)
    w, h = w + 1.0, h + 1.0  # a one-pixel line has width 1, not 0
    long_angle = angle if w >= h else angle + 90.0  # OpenCV's angle is that of the side of length w
    return max(w, h) * scale, min(w, h) * scale, abs(((long_angle + 90.0) % 180.0) - 90.0)


def geometry(mask: np.ndarray, scale: float) -> tuple[float, float, str, str]:
    """(length, width, form, orientation) of a bool (H, W) region by its rotated rectangle; the form here is
    "elongated" or "compact" (describe_region makes an elongated region with a thin core a "line")."""
    length, width, a = rect(mask, scale)
    form = "elongated" if length / max(width, 1e-6) >= ELONGATED else "compact"
    orient = "" if form == "compact" else ("horizontal" if a < 22.5 else "vertical" if a > 67.5 else "diagonal")
    return length, width, form, orient


def tone_word(delta: float) -> str:
    return "darker" if delta < -TONE_DELTA else "brighter" if delta > TONE_DELTA else "similar"


def edge_width(lightness: np.ndarray, core: np.ndarray, contrast: float, scale: float) -> float:
    """Pixels (at 256 px) the lightness takes to span |contrast| across the core's border (75th percentile of the
    border's gradient); large when there is no contrast."""
    border = core & ~cv2.erode(core.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if not border.any() or abs(contrast) < 1e-3:
        return 99.0
    gx = cv2.Sobel(lightness, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(lightness, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    grad = float(np.percentile(np.hypot(gx, gy)[border], 75))  # L* per pixel at the border
    return min(99.0, abs(contrast) / max(grad, 1e-6) * scale)


def describe_region(rgb: np.ndarray, region: np.ndarray, reference: np.ndarray | None = None) -> Descriptor:
    """Descriptor of one region (bool (H, W) of the map's mask) of an (H, W, 3) uint8 image. `reference`: the
    aligned golden sample warped onto the image, (H, W, 3) uint8, used as the estimate of the defect-free part."""
    scale = SIDE / max(rgb.shape[:2])
    lab = to_lab(rgb)
    est = reference if reference is not None else background(rgb, region, 1.0 / scale)
    est_lab = to_lab(est)
    diff = np.linalg.norm(lab - est_lab, axis=2)
    core = refine(diff, region, max(2, round(MIN_PIXELS / scale / scale)))
    length, width, form, orient = geometry(region, scale)
    core_len, core_width, _ = rect(core, scale)
    if form == "elongated" and core_width <= LINE_WIDTH and core_len / core_width >= LINE_ELONGATION:
        form = "line"
    d_lab = lab[core].mean(0) - est_lab[core].mean(0)  # (3,) core - estimate
    contrast, chroma = float(d_lab[0]), float(np.hypot(d_lab[1], d_lab[2]))
    edge_px = edge_width(lab[..., 0], core, contrast, scale)
    ys, xs = np.nonzero(region)
    return Descriptor(
        area_px=int(round(region.sum() * scale * scale)), length_px=length, width_px=width,
        elongation=length / max(width, 1e-6), form=form, orientation=orient,
        centroid=(float(ys.mean() + 0.5) / rgb.shape[0], float(xs.mean() + 0.5) / rgb.shape[1]),
        core_px=int(round(core.sum() * scale * scale)), core_width_px=core_width,
        core_elongation=core_len / max(core_width, 1e-6),
        count=int(cv2.connectedComponents(core.astype(np.uint8), connectivity=8)[0] - 1),
        tone=tone_word(contrast), contrast=contrast, chroma=chroma,
        colour=colour_name(lab[core].mean(0)) if chroma > COLOUR_DELTA else "",
        edge="sharp" if edge_px <= EDGE_PX else "soft", edge_px=edge_px,
        reference_tone=tone_word(contrast) if reference is not None else "")


FEATURES = ("log_area", "log_length", "log_width", "log_elongation", "log_core", "core_share", "log_core_width",
            "log_core_elongation", "log_count", "contrast", "abs_contrast", "chroma", "log_edge")


def features(d: Descriptor) -> np.ndarray:
    """(len(FEATURES),) float32: the descriptor as the defect-type classifier reads it (logs of lengths and
    areas, so scale acts additively)."""
    return np.array([
        math.log1p(d.area_px), math.log1p(d.length_px), math.log1p(d.width_px), math.log(max(d.elongation, 1.0)),
        math.log1p(d.core_px), d.core_px / max(d.area_px, 1), math.log1p(d.core_width_px),
        math.log(max(d.core_elongation, 1.0)), math.log1p(d.count), d.contrast / 10.0, abs(d.contrast) / 10.0,
        d.chroma / 10.0, math.log1p(d.edge_px),
    ], np.float32)


def box_region(mask: np.ndarray, box) -> np.ndarray:
    """(H, W) bool: the mask's pixels inside a Box."""
    region = np.zeros_like(mask, dtype=bool)
    region[box.y0:box.y1, box.x0:box.x1] = mask[box.y0:box.y1, box.x0:box.x1]
    return region


def measure(image: Image.Image | np.ndarray, region: np.ndarray, reference: np.ndarray | None = None) -> Descriptor:
    """describe_region of a bool (H, W) region of the anomaly map (an image of any size), measured with the longer
    side at most SIDE: lengths are reported at SIDE anyway, the tower saw the part at about that size, and the
    inpainting's cost grows with the region's pixels times its radius (seconds at 2048 px). `reference`: the aligned
    golden sample at the map's size."""
    h, w = region.shape
    s = min(1.0, SIDE / max(h, w))
    size = (max(1, round(h * s)), max(1, round(w * s)))
    if size != (h, w):
        cover = cv2.resize(region.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        region = cover >= 0.5 if (cover >= 0.5).any() else cover > 0  # a region thinner than a pixel stays
        if reference is not None:
            reference = cv2.resize(reference, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return describe_region(image_rgb(image, size), region, reference)


def describe(result, image: Image.Image | np.ndarray, reference: np.ndarray | None = None, classifier=None,
             out=None, index: int = 0) -> None:
    """Set `descriptor` on each of the result's boxes (in place); `reference` as in describe_region, at the map's
    size; `classifier` (expert/defect_type.py TypeClassifier) names the type, reading the region's tower tokens from
    `out` (the query's VisionOutput, image `index`) when it was trained with them. Boxes whose region is empty keep
    None."""
    for box in result.boxes:
        region = box_region(result.pred_mask, box)
        if region.any():
            describe_box(box, image, region, reference, classifier, out, index)


def describe_box(box, image: Image.Image | np.ndarray, region: np.ndarray, reference: np.ndarray | None = None,
                 classifier=None, out=None, index: int = 0) -> None:
    """Set one Box's `descriptor` from its bool (H, W) region of the map (measure) and name its type (a classifier
    that needs tower tokens names none without `out`: the type is left unestimated)."""
    box.descriptor = measure(image, region, reference)
    if classifier is None or (classifier.tower_dims and out is None):
        return
    from assistant.expert.defect_type import region_tokens

    classifier.name(box.descriptor, region_tokens(out, region, index) if classifier.tower_dims else None)
