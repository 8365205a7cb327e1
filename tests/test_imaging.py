"""assistant.imaging: one test per bad-input case, every accepted input type, and the mode conversions."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from assistant.imaging import ImageError, list_images, load_image, load_mask, resize, to_tensor


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(w=12, h=8) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.arange(w, dtype=np.uint8)[None] * 20
    arr[: h // 2, :, 1] = 200
    return Image.fromarray(arr)


# ---------------------------------------------------------------- rejected inputs (one exception type)

def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png.*empty \(0 bytes\)"):
        load_image(p)


def test_zero_bytes_object():
    with pytest.raises(ImageError, match="0 bytes"):
        load_image(b"")


def test_truncated_file(tmp_path):
    data = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.png.*(truncated|corrupt)"):
        load_image(p)


def test_truncated_jpeg(tmp_path):
    data = _png(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match=r"cut\.jpg.*(truncated|corrupt)"):
        load_image(p)


def test_png_header_only_is_called_truncated_not_foreign(tmp_path):
    data = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    p = tmp_path / "head.png"
    p.write_bytes(data[:40])  # signature + header chunk, cut before the pixels: Pillow cannot identify it
    with pytest.raises(ImageError, match=r"head\.png: corrupt or truncated PNG image \(40 bytes\)"):
        load_image(p)


def test_non_image_file(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is text, not pixels\n" * 10)
    with pytest.raises(ImageError, match=r"notes\.png.*not a recognised image") as e:
        load_image(p)
    assert "expected PNG, JPEG" in str(e.value) and "got 250 bytes starting b'this is '" in str(e.value)


def test_decompression_bomb_over_limit(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png(Image.new("L", (300, 200))))  # 60,000 pixels, tiny file
    with pytest.raises(ImageError, match=r"bomb\.png.*300x200 = 60000 pixels exceeds the limit of 50000"):
        load_image(p, max_pixels=50_000)
    assert load_image(p, max_pixels=60_000).size == (300, 200)


def test_pixel_limit_applies_to_arrays_and_pil():
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=9_999)
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=9_999)


def test_missing_path(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.png: file not found"):
        load_image(tmp_path / "nope.png")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ImageError, match="got a directory"):
        load_image(tmp_path)


def test_wrong_type():
    with pytest.raises(ImageError, match="expected a path, bytes, PIL image or numpy array"):
        load_image(12345)


def test_bad_array_shape():
    with pytest.raises(ImageError, match=r"expected an array of shape .*got \(4, 4, 5\)"):
        load_image(np.zeros((4, 4, 5), np.uint8))


def test_image_error_is_value_error():
    assert issubclass(ImageError, ValueError)


# ---------------------------------------------------------------- accepted inputs

def test_path_bytes_pil_numpy_agree(tmp_path):
    img = _rgb()
    p = tmp_path / "a.png"
    img.save(p)
    ref = np.asarray(img)
    for src in (p, str(p), p.read_bytes(), img, ref):
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (12, 8)
        np.testing.assert_array_equal(np.asarray(out), ref)


def test_numpy_float_and_bool_and_single_channel():
    f = np.full((4, 5, 3), 0.5, np.float32)  # floats in [0, 1] scale to 0..255
    assert np.asarray(load_image(f))[0, 0, 0] == 127
    b = np.zeros((4, 5), bool)
    b[0, 0] = True
    out = np.asarray(load_image(b))
    assert out.shape == (4, 5, 3) and out[0, 0, 0] == 255 and out[1, 1, 0] == 0
    g = np.full((4, 5, 1), 77, np.uint8)
    assert np.asarray(load_image(g))[2, 2].tolist() == [77, 77, 77]


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = load_image(_png(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)  # width and height swapped
    arr = np.asarray(out).astype(int)
    assert arr[:8, :, 0].mean() > 200 and arr[-8:, :, 0].mean() < 60  # left stripe is now on top


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK", "1", "F"])
def test_modes_convert_to_rgb(mode):
    base = _rgb(16, 16)
    if mode == "I;16":
        arr = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 256)  # 16-bit values up to 65280
        img = Image.fromarray(arr)
    elif mode == "F":
        img = Image.fromarray(np.linspace(-3, 7, 256, dtype=np.float32).reshape(16, 16), "F")
    else:
        img = base.convert(mode)
    fmt = {"CMYK": "JPEG", "F": "TIFF", "1": "PNG"}.get(mode, "PNG")
    for src in (img, _png(img, fmt)):
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (16, 16), (mode, type(src))


def test_16bit_keeps_dynamic_range():
    arr = np.zeros((8, 8), np.uint16)
    arr[:, 4:] = 65535
    arr[:, :4] = 1000
    out = np.asarray(load_image(_png(Image.fromarray(arr))))
    assert out[0, 7, 0] == 255 and 0 < out[0, 0, 0] < 10  # scaled by the max, not clipped to 255


def test_rgba_composited_on_white():
    arr = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    out = np.asarray(load_image(Image.fromarray(arr, "RGBA")))
    assert (out == 255).all()


def test_palette_with_transparency():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.info["transparency"] = 0
    out = np.asarray(load_image(_png(img)))
    assert (out == 255).all()


def test_cmyk_colours_roughly_preserved():
    img = Image.new("RGB", (8, 8), (200, 30, 30)).convert("CMYK")
    out = np.asarray(load_image(_png(img, "JPEG", quality=100))).astype(int)
    assert out[..., 0].mean() > 150 and out[..., 1].mean() < 80


# ---------------------------------------------------------------- helpers

def test_resize_and_to_tensor():
    img = _rgb(12, 8)
    assert resize(img, 6).size == (6, 6) and resize(img, (5, 3)).size == (5, 3)
    x = to_tensor([img, img], 8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_load_mask(tmp_path):
    m = np.zeros((10, 20), np.uint8)
    m[2:5, 3:9] = 255
    p = tmp_path / "m.png"
    Image.fromarray(m).save(p)
    mask = load_mask(p)
    assert mask.dtype == bool and mask.shape == (10, 20) and mask.sum() == 18
    assert load_mask(p, size=(40, 20)).sum() == 72
    with pytest.raises(ImageError, match="mask file not found"):
        load_mask(tmp_path / "missing.png")


def test_list_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "sub/c.bmp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.bmp"]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["a.JPG", "b.png"]
    with pytest.raises(ImageError, match="expected a folder of images"):
        list_images(tmp_path / "nothing")


def test_numpy_uint16_array():
    arr = np.full((4, 4, 3), 65535, np.uint16)
    arr[0, 0] = 0
    out = np.asarray(load_image(arr))
    assert out.dtype == np.uint8 and out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]
