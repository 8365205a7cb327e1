"""Normal images from files: folders of a user's good parts, conformal-clip-data textiles, scikit-image
textures."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from assistant.imaging import IMAGE_SUFFIXES, list_images, load_image
from data_synth.sources.base import Category, NormalSource
from data_synth.synth import SynthError

cv2.setNumThreads(1)


def augment_texture(img: np.ndarray, rng: np.random.Generator, size: int, min_scale: float = 0.4) -> np.ndarray:
    """Random square crop (scale min_scale..1 of the short side), flips, 90-degree turns, resize."""
    h, w = img.shape[:2]
    s = int(min(h, w) * rng.uniform(min_scale, 1.0))
    y = int(rng.integers(0, h - s + 1))
    x = int(rng.integers(0, w - s + 1))
    crop = img[y:y + s, x:x + s]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.rot90(crop, int(rng.integers(4)))
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA)


class ImageCache:
    """Tiny per-process cache of decoded arrays (files are re-read otherwise for every sample)."""

    def __init__(self, limit: int = 256):
        self.limit, self.data = limit, {}

    def get(self, path: Path) -> np.ndarray:
        key = str(path)
        if key not in self.data:
            if len(self.data) >= self.limit:
                self.data.pop(next(iter(self.data)))
            self.data[key] = np.asarray(load_image(path))
        return self.data[key]


def _folder_noun(folder: Path) -> str:
    for part in reversed(folder.resolve().parts):
        if part.lower() not in {"good", "train", "test", "normal", "images", "ok", "nominal"}:
            return part.replace("_", " ").replace("-", " ").lower()
    return "object"


class FolderSource(NormalSource):
    """Every folder (searched recursively) is one category; e.g. a user's `train/good`."""

    name = "folder"

    def __init__(self, folders: list[str | Path], is_object: bool | None = None):
        if not folders:
            raise SynthError("--normal: expected at least one folder of normal images, got none")
        self.files: dict[str, list[Path]] = {}
        self.cats: list[Category] = []
        for i, f in enumerate(folders):
            files = list_images(f)  # ImageError when the folder is missing
            if not files:
                raise SynthError(f"{f}: expected normal images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder "
                                 "or below it, found none")
            noun = _folder_noun(Path(f))
            key = f"folder/{i}-{noun.replace(' ', '_')}"
            self.files[key] = files
            self.cats.append(Category(key, noun, is_object))
        self.cache = ImageCache()

    def categories(self) -> list[Category]:
        return self.cats

    def sample(self, cat: Category, rng: np.random.Generator, size: int) -> np.ndarray:
        files = self.files[cat.key]
        img = self.cache.get(files[int(rng.integers(len(files)))])
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


class TextileSource(NormalSource):
    """conformal-clip-data simulated textiles, nominal (defect-free) images only."""

    name = "textiles"

    def __init__(self):
        try:
            import conformal_clip_data
        except ImportError:
            raise SynthError("--source textiles needs the package conformal-clip-data "
                             "(pip install --no-deps conformal-clip-data)") from None
        self.files = list_images(conformal_clip_data.nominal_dir())
        if not self.files:
            raise SynthError(f"{conformal_clip_data.nominal_dir()}: no nominal textile images found")
        self.cache = ImageCache(2048)

    def categories(self) -> list[Category]:
        return [Category("textiles/nominal", "fabric", False)]

    def sample(self, cat: Category, rng: np.random.Generator, size: int) -> np.ndarray:
        img = self.cache.get(self.files[int(rng.integers(len(self.files)))])
        return augment_texture(img, rng, size, min_scale=0.7)


SKIMAGE_TEXTURES = {"brick": "brick wall", "grass": "grass", "gravel": "gravel"}  # textures in the skimage wheel


class SkimageSource(NormalSource):
    """scikit-image sample textures (brick, grass, gravel), random crops."""

    name = "skimage"

    def __init__(self):
        import skimage.data
        root = Path(skimage.data.__file__).parent
        self.paths = {k: root / f"{k}.png" for k in SKIMAGE_TEXTURES if (root / f"{k}.png").exists()}
        if not self.paths:
            raise SynthError(f"{root}: none of the scikit-image textures {list(SKIMAGE_TEXTURES)} is installed")
        self.cache = ImageCache()

    def categories(self) -> list[Category]:
        return [Category(f"skimage/{k}", SKIMAGE_TEXTURES[k], False) for k in self.paths]

    def sample(self, cat: Category, rng: np.random.Generator, size: int) -> np.ndarray:
        img = self.cache.get(self.paths[cat.key.split("/", 1)[1]])
        return augment_texture(img, rng, size, min_scale=0.3)
