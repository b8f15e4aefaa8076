"""decode_gray on generated images of every supported format and mode, and on broken or hostile files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.errors import DecodeError
from cxr.imaging.decode import DecodeLimits, decode_gray


def _rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _gray(h: int = 40, w: int = 56) -> np.ndarray:
    return _rng().integers(0, 256, (h, w), dtype=np.uint8)


def _rgb(h: int = 40, w: int = 56) -> np.ndarray:
    return _rng().integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize(
    "suffix,kw", [(".png", {}), (".bmp", {}), (".tif", {}), (".webp", {"lossless": True})]
)
def test_lossless_8bit_gray_roundtrips_exactly(tmp_path: Path, suffix: str, kw: dict[str, object]) -> None:
    g = _gray()
    path = _save(Image.fromarray(g, mode="L"), tmp_path / f"g{suffix}", **kw)
    out = decode_gray(path)
    assert out.dtype == np.uint8 and out.shape == g.shape
    np.testing.assert_array_equal(out, g)


def test_bytes_and_path_give_the_same_pixels(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_gray(), mode="L"), tmp_path / "g.png")
    np.testing.assert_array_equal(decode_gray(path.read_bytes()), decode_gray(str(path)))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "CMYK", "1"])
def test_8bit_modes_convert_by_luma_and_drop_alpha(tmp_path: Path, mode: str) -> None:
    rgb = Image.fromarray(_rgb(), mode="RGB")
    if mode == "RGBA":
        img = rgb.copy()
        img.putalpha(Image.fromarray(_gray(), mode="L"))  # random alpha must not change the gray values
        expected = np.asarray(rgb.convert("L"))
    elif mode == "LA":
        img = Image.merge("LA", [Image.fromarray(_gray(), mode="L"), Image.new("L", rgb.size, 7)])
        expected = np.asarray(img.getchannel("L"))
    else:
        img = rgb.convert(mode)
        expected = np.asarray(img.convert("L"))
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "1" else "PNG"
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    out = decode_gray(buf.getvalue())
    if fmt == "JPEG":  # lossy: compare with what Pillow itself decodes
        expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    np.testing.assert_array_equal(out, expected)


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    a = np.linspace(1000, 60000, 48 * 32).reshape(48, 32).astype(np.uint16)
    img = Image.fromarray(a)
    assert img.mode.startswith("I;16")
    path = _save(img, tmp_path / "x16.png")
    out = decode_gray(path)
    expected = np.rint((a.astype(np.float64) - 1000) * 255.0 / 59000).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255
    assert (out == 255).mean() < 0.01  # clipping at 255 would saturate almost everything


@pytest.mark.parametrize("mode,dtype", [("I", np.int32), ("F", np.float32)])
def test_32bit_int_and_float_tiffs_are_scaled(tmp_path: Path, mode: str, dtype: type) -> None:
    a = np.linspace(-5000, 70000, 30 * 20).reshape(30, 20).astype(dtype)
    img = Image.fromarray(a, mode=mode)
    path = _save(img, tmp_path / f"x{mode}.tif")
    out = decode_gray(path)
    expected = np.rint((a.astype(np.float64) + 5000) * 255.0 / 75000).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_constant_16bit_image_becomes_zeros(tmp_path: Path) -> None:
    path = _save(Image.fromarray(np.full((9, 9), 4000, np.uint16)), tmp_path / "c.png")
    assert not decode_gray(path).any()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    a = np.zeros((40, 80), np.uint8)
    a[:16, :16] = 255  # bright block top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(Image.fromarray(a, mode="L"), tmp_path / "rot.jpg", exif=exif, quality=95)
    out = decode_gray(path)
    assert out.shape == (80, 40)
    assert out[:16, -16:].mean() > 200 and out[:16, :16].mean() < 50  # the block moved to the top-right


@pytest.mark.parametrize(
    "content,name,message",
    [
        (b"", "empty.png", "empty file"),
        (b"just some text, not pixels\n" * 20, "notes.png", "not an image"),
        (b"just some text, not pixels\n" * 20, "notes.txt", "not an image"),
        (b"GIF89a" + bytes(100), "anim.gif", "not an image"),  # a format outside the supported list
    ],
)
def test_non_images_are_refused_with_the_file_name(
    tmp_path: Path, content: bytes, name: str, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=message) as info:
        decode_gray(path)
    assert name in info.value.message


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_is_refused(tmp_path: Path, suffix: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(_rgb(200, 200), mode="RGB").save(buf, format="PNG" if suffix == ".png" else "JPEG")
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DecodeError, match="truncated|cannot be opened"):
        decode_gray(path)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(100_000, 100_000), (12_000, 9_000)])
def test_huge_declared_size_is_refused_before_decoding(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(*size))
    with pytest.raises(DecodeError, match="implausibly large|pixel limit"):
        decode_gray(path)


def test_limits_are_configurable(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_gray(40, 56), mode="L"), tmp_path / "g.png")
    with pytest.raises(DecodeError, match="2240 pixels is over the 2000-pixel limit"):
        decode_gray(path, DecodeLimits(max_pixels=2000))
    with pytest.raises(DecodeError, match="over the 100-byte limit"):
        decode_gray(path, DecodeLimits(max_bytes=100))
    with pytest.raises(DecodeError, match="over the 100-byte limit"):
        decode_gray(path.read_bytes(), DecodeLimits(max_bytes=100))
    assert decode_gray(path, DecodeLimits(max_pixels=2240)).shape == (40, 56)


def test_multipage_tiff_is_refused(tmp_path: Path) -> None:
    pages = [Image.fromarray(_gray(), mode="L") for _ in range(2)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(DecodeError, match="2 frames"):
        decode_gray(path)


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_missing_file_and_folder_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.png" if kind == "missing" else tmp_path
    with pytest.raises(DecodeError, match="no such file|is a folder"):
        decode_gray(path)


def test_real_external_images_decode(shared_data: Path) -> None:
    files = sorted((shared_data / "external-dev").glob("*.*"))
    assert len(files) >= 5
    for path in files:
        out = decode_gray(path)
        with Image.open(path) as img:
            w, h = img.size
        assert out.dtype == np.uint8 and out.ndim == 2
        assert sorted(out.shape) == sorted((h, w))
        assert out.std() > 10, f"{path.name} decoded to a flat image"


def test_real_rgb_png_from_kaggle_equals_its_luma(shared_data: Path) -> None:
    path = next((shared_data / "radiography-dev" / "COVID" / "images").glob("*.png"))
    with Image.open(path) as img:
        expected = np.asarray(img.convert("L"))
    np.testing.assert_array_equal(decode_gray(path), expected)
