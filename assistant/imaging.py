"""Load, validate, orient and resize images. The only place in the library that opens image files.

Accepts a path, bytes, a PIL image or a numpy array; applies EXIF orientation; converts grayscale,
RGBA, palette, 16-bit and CMYK to RGB; rejects empty, truncated, non-image and oversized inputs with
one exception type (`ImageError`) whose message names the source and the problem.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray
DEFAULT_MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class ImageError(ValueError):
    """An input could not be used as an image; the message names the source and the problem."""


def _describe(src: ImageInput) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, bytes):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.mode} {src.size[0]}x{src.size[1]}>"
    if isinstance(src, np.ndarray):
        return f"<array {src.dtype} {tuple(src.shape)}>"
    return f"<{type(src).__name__}>"


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0
        arr = (arr / hi * 255.0) if hi > 255 else arr
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo + 1e-12) * 255.0
        img = Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: expected an array of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.size == 0:
        raise ImageError(f"{name}: the array is empty")
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(arr)) <= 1.0 else 1.0
        arr = np.clip(np.nan_to_num(arr) * scale, 0, 255).astype(np.uint8)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


def load_image(src: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return an RGB PIL image, EXIF-oriented. Raises ImageError with a clear message."""
    name = _describe(src)
    if isinstance(src, np.ndarray):
        img = _from_array(src, name)
    elif isinstance(src, Image.Image):
        img = src
    elif isinstance(src, (bytes, bytearray, str, os.PathLike)):
        if isinstance(src, (str, os.PathLike)):
            path = Path(src)
            if not path.exists():
                raise ImageError(f"{name}: file not found")
            if path.is_dir():
                raise ImageError(f"{name}: expected an image file, got a directory")
            data = path.read_bytes()
        else:
            data = bytes(src)
        if len(data) == 0:
            raise ImageError(f"{name}: the file is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels")
                img.load()
        except ImageError:
            raise
        except UnidentifiedImageError:
            kind = next((k for sig, k in _SIGNATURES if data.startswith(sig)), None)
            if kind:  # the header says what it is, but Pillow could not read it
                raise ImageError(f"{name}: corrupt or truncated {kind} image ({len(data)} bytes)") from None
            raise ImageError(f"{name}: not a recognised image format (expected PNG, JPEG, BMP, TIFF, WebP or another "
                             f"format Pillow reads; got {len(data)} bytes starting {data[:8]!r})") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"{name}: rejected as a decompression bomb ({e})") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{name}: corrupt or truncated image ({e})") from None
    else:
        raise ImageError(f"{name}: expected a path, bytes, PIL image or numpy array")
    w, h = img.size
    if w == 0 or h == 0:
        raise ImageError(f"{name}: image has zero size {w}x{h}")
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 -- broken EXIF must not lose the image
        warnings.warn(f"{name}: EXIF orientation ignored ({e})", stacklevel=2)
    return _to_rgb(img, name)


# file signatures of common image formats: a file that starts with one but does not open is damaged, not foreign
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WebP"))


def load_mask(src: ImageInput, size: tuple[int, int] | None = None) -> np.ndarray:
    """Binary mask (H, W) bool; pixel > 0 marks the defect. `size` is (W, H) to resize to (nearest)."""
    name = _describe(src)
    if isinstance(src, np.ndarray):
        arr = src
    else:
        if isinstance(src, (str, os.PathLike)) and not Path(src).exists():
            raise ImageError(f"{name}: mask file not found")
        try:
            img = Image.open(src if not isinstance(src, bytes) else io.BytesIO(src))
            img.load()
        except (UnidentifiedImageError, OSError) as e:
            raise ImageError(f"{name}: unreadable mask ({e})") from None
        if size is not None and img.size != tuple(size):
            img = img.convert("L").resize(tuple(size), Image.NEAREST)
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > 0


def resize(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """Resize to a square side or (W, H) with bicubic filtering."""
    wh = (size, size) if isinstance(size, int) else tuple(size)
    return img if img.size == wh else img.resize(wh, Image.BICUBIC)


def to_tensor(images: list[Image.Image], size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """List of RGB images -> normalised float tensor (B, 3, size, size)."""
    import torch  # imported here so `--help` and image checks do not pay for torch

    arrs = [np.asarray(resize(im, size), dtype=np.float32) / 255.0 for im in images]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Sorted image files under a folder. Raises ImageError when the folder is missing."""
    p = Path(folder)
    if not p.is_dir():
        raise ImageError(f"{folder}: expected a folder of images, but it does not exist or is not a folder")
    it = p.rglob("*") if recursive else p.iterdir()
    return sorted(x for x in it if x.is_file() and x.suffix.lower() in IMAGE_SUFFIXES)
