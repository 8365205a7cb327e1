"""GIMP patterns (.pat) as normal textures: the reader, a writer for tests, and the source."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from assistant.imaging import ImageError, load_image
from data_synth.sources.base import Category, NormalSource
from data_synth.synth import SynthError

cv2.setNumThreads(1)


GIMP_PATTERN_DIRS = ["/usr/share/gimp/2.0/patterns", "/usr/share/gimp/3.0/patterns"]


def read_pat(src: str | Path | bytes) -> tuple[np.ndarray, str]:
    """Decode a GIMP pattern (.pat): big-endian header (header_size, version 1, width, height, bytes per
    pixel 1..4, magic b"GPAT", NUL-terminated UTF-8 name), then width*height*bpp pixel bytes.
    Returns ((H, W, 3) uint8 RGB, name)."""
    name = f"<{len(src)} bytes>" if isinstance(src, bytes) else str(src)
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    if len(data) < 24:
        raise ImageError(f"{name}: not a GIMP pattern (expected a 24+ byte header, got {len(data)} bytes)")
    hsize, version, w, h, bpp = struct.unpack(">5I", data[:20])
    if data[20:24] != b"GPAT" or version != 1:
        raise ImageError(f"{name}: not a GIMP pattern (expected magic GPAT version 1, got {data[20:24]!r} v{version})")
    if bpp not in (1, 2, 3, 4) or w == 0 or h == 0 or hsize < 24:
        raise ImageError(f"{name}: bad GIMP pattern header ({w}x{h}, {bpp} bytes per pixel, header {hsize})")
    need = hsize + w * h * bpp
    if len(data) < need:
        raise ImageError(f"{name}: truncated GIMP pattern (expected {need} bytes, got {len(data)})")
    title = data[24:hsize].split(b"\0", 1)[0].decode("utf-8", "replace")
    px = np.frombuffer(data, np.uint8, w * h * bpp, hsize).reshape(h, w, bpp)
    arr = np.asarray(load_image(px[..., 0] if bpp == 2 else px))  # validate + RGB (alpha over white)
    return arr, title


def write_pat(path: str | Path, image: np.ndarray, name: str = "pattern") -> None:
    """Write an (H, W) or (H, W, C) uint8 array as a GIMP .pat file (used by tests)."""
    img = image if image.ndim == 3 else image[..., None]
    h, w, c = img.shape
    title = name.encode("utf-8") + b"\0"
    header = struct.pack(">5I", 24 + len(title), 1, w, h, c) + b"GPAT" + title
    Path(path).write_bytes(header + np.ascontiguousarray(img, np.uint8).tobytes())


class GimpSource(NormalSource):
    """GIMP patterns (Debian gimp-data) or any folder of .pat files; one category per pattern."""

    name = "gimp"

    def __init__(self, folders: list[str | Path] | None = None):
        dirs = [Path(d) for d in (folders or GIMP_PATTERN_DIRS)]
        files = sorted(p for d in dirs if d.is_dir() for p in d.rglob("*.pat"))
        if not files:
            raise SynthError(f"no GIMP .pat patterns in {', '.join(map(str, dirs))}; install Debian gimp-data "
                             "or pass folders of images with --normal")
        self.patterns: dict[str, np.ndarray] = {}
        self.cats: list[Category] = []
        for f in files:
            arr, title = read_pat(f)
            key = f"gimp/{f.stem}"
            self.patterns[key] = arr
            self.cats.append(Category(key, f"{(title or f.stem).lower()} pattern", False))

    def categories(self) -> list[Category]:
        return self.cats

    def sample(self, cat: Category, rng: np.random.Generator, size: int) -> np.ndarray:
        pat = self.patterns[cat.key]
        zoom = rng.uniform(1.0, 2.0) * max(1.0, 48 / min(pat.shape[:2]))
        pat = cv2.resize(pat, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
        reps = (size // pat.shape[0] + 2, size // pat.shape[1] + 2, 1)
        big = np.tile(pat, reps)
        y = int(rng.integers(pat.shape[0]))
        x = int(rng.integers(pat.shape[1]))
        return np.ascontiguousarray(big[y:y + size, x:x + size])
