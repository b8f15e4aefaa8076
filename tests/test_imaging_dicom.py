"""DICOM decoding: rescale -> VOI -> MONOCHROME1 inversion -> 8 bit, guards, and every refusal path.

Generated datasets check each transform against the formula of PS3.3 C.11; the real files in
../shared/data/dicom check the plain, JPEG-compressed, preamble-less and MONOCHROME1 cases.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxr.errors import DecodeError
from cxr.imaging.decode import DecodeLimits, decode_gray
from cxr.imaging.dicom import decode_dicom

LIMITS = DecodeLimits()


def make_dicom(
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    preamble: bool = True,
    frames: int = 1,
    **attrs: Any,
) -> bytes:
    """A minimal single-image DICOM (uncompressed) holding ``arr``; ``attrs`` set extra elements."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    h, w = arr.shape[-3:-1] if arr.ndim == 3 + (frames > 1) else arr.shape[-2:]
    ds.Rows, ds.Columns = int(h), int(w)
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in attrs.items():
        setattr(ds, key, value)
    if "PixelData" not in attrs:
        ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    else:
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def _ramp(lo: int, hi: int, dtype: type = np.uint16, shape: tuple[int, int] = (24, 40)) -> np.ndarray:
    return np.linspace(lo, hi, shape[0] * shape[1]).round().reshape(shape).astype(dtype)


def _linear_window(y: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255."""
    c, w = center - 0.5, width - 1
    out = np.clip(((y - c) / w + 0.5), 0.0, 1.0) * 255.0
    out[y <= c - w / 2] = 0.0
    out[y > c + w / 2] = 255.0
    return np.rint(out).astype(np.uint8)


def test_8bit_without_transforms_is_kept_as_is() -> None:
    a = _ramp(3, 250, np.uint8)
    np.testing.assert_array_equal(decode_dicom(make_dicom(a), "x.dcm", LIMITS), a)


def test_12bit_without_window_is_scaled_from_its_own_range() -> None:
    a = _ramp(100, 3000)
    out = decode_dicom(make_dicom(a, bits_stored=12), "x.dcm", LIMITS)
    expected = np.rint((a - 100.0) * 255.0 / 2900.0).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_rescale_then_window() -> None:
    a = _ramp(0, 4095)
    data = make_dicom(
        a, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=1500, WindowWidth=3000
    )
    out = decode_dicom(data, "x.dcm", LIMITS)
    np.testing.assert_array_equal(out, _linear_window(a * 2.0 - 1024.0, 1500, 3000))
    assert out.min() == 0 and out.max() == 255  # the window cuts both ends of this ramp


def test_window_is_applied_after_the_rescale_not_before() -> None:
    a = _ramp(0, 4095)
    with_rescale = decode_dicom(
        make_dicom(
            a, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=500, WindowWidth=800
        ),
        "x.dcm",
        LIMITS,
    )
    without = decode_dicom(make_dicom(a, bits_stored=12, WindowCenter=500, WindowWidth=800), "x.dcm", LIMITS)
    assert not np.array_equal(with_rescale, without)


def test_signed_pixels_with_window() -> None:
    a = _ramp(-1000, 1000, np.int16)
    out = decode_dicom(make_dicom(a, WindowCenter=0, WindowWidth=1000), "x.dcm", LIMITS)
    np.testing.assert_array_equal(out, _linear_window(a.astype(np.float64), 0, 1000))


def test_voi_lut_sequence_is_used() -> None:
    a = _ramp(0, 255, np.uint8)
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, 16])  # LUT Descriptor: 256 entries from 0, 16 bits
    item.add_new(0x00283006, "US", [(255 - v) * 10 for v in range(256)])  # decreasing: output is inverted
    out = decode_dicom(
        make_dicom(a, VOILUTSequence=[item], WindowCenter=128, WindowWidth=10), "x.dcm", LIMITS
    )
    np.testing.assert_array_equal(out, 255 - a)  # the LUT wins over the window


@pytest.mark.parametrize("window", [False, True])
def test_monochrome1_is_inverted(window: bool) -> None:
    a = _ramp(0, 1023)
    attrs: dict[str, Any] = {"WindowCenter": 512, "WindowWidth": 1024} if window else {}
    mono2 = decode_dicom(make_dicom(a, bits_stored=10, **attrs), "x.dcm", LIMITS)
    mono1 = decode_dicom(make_dicom(a, bits_stored=10, photometric="MONOCHROME1", **attrs), "x.dcm", LIMITS)
    assert np.abs(mono1.astype(int) - (255 - mono2.astype(int))).max() <= 1
    assert mono1[0, 0] == 255 and mono1[-1, -1] == 0  # low values are white in MONOCHROME1


def test_rgb_dicom_becomes_luma() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    out = decode_dicom(make_dicom(rgb, photometric="RGB"), "x.dcm", LIMITS)
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(rgb, mode="RGB").convert("L")))


@pytest.mark.parametrize("name", ["<upload>", "scan.png", "IM000001"])
def test_preamble_less_dicom_is_found_by_content(tmp_path: Path, name: str) -> None:
    a = _ramp(0, 1023)
    data = make_dicom(a, bits_stored=10, preamble=False)
    assert data[128:132] != b"DICM"
    expected = decode_dicom(make_dicom(a, bits_stored=10), "x.dcm", LIMITS)
    if name == "<upload>":
        out = decode_gray(data)
    else:
        (tmp_path / name).write_bytes(data)
        out = decode_gray(tmp_path / name)
    np.testing.assert_array_equal(out, expected)


def test_dicom_suffix_on_a_png_still_decodes_the_png(tmp_path: Path) -> None:
    a = _ramp(0, 255, np.uint8)
    Image.fromarray(a, mode="L").save(tmp_path / "really_png.dcm", format="PNG")
    np.testing.assert_array_equal(decode_gray(tmp_path / "really_png.dcm"), a)


def test_multiframe_is_refused() -> None:
    a = np.stack([_ramp(0, 255, np.uint8)] * 3)
    with pytest.raises(DecodeError, match="3 frames"):
        decode_dicom(make_dicom(a, frames=3), "cine.dcm", LIMITS)


def test_no_pixel_data_is_refused() -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    with pytest.raises(DecodeError, match="no pixel data"):
        decode_dicom(buf.getvalue(), "report.dcm", LIMITS)


def test_pixel_guard_uses_rows_and_columns_before_decoding() -> None:
    tiny = np.zeros((2, 2), np.uint8)
    data = make_dicom(tiny, Rows=20_000, Columns=20_000, PixelData=tiny.tobytes())  # header lies about size
    with pytest.raises(DecodeError, match="400000000 pixels is over the 100000000-pixel limit"):
        decode_dicom(data, "bomb.dcm", LIMITS)
    with pytest.raises(DecodeError, match="pixel limit"):
        decode_dicom(make_dicom(_ramp(0, 255, np.uint8)), "x.dcm", DecodeLimits(max_pixels=100))


def test_truncated_pixel_data_is_refused() -> None:
    a = _ramp(0, 255, np.uint8, (64, 64))
    data = make_dicom(a, PixelData=a.tobytes()[:100])
    with pytest.raises(DecodeError, match="corrupt or truncated"):
        decode_dicom(data, "cut.dcm", LIMITS)


@pytest.mark.parametrize("content", [b"", b"DICM", bytes(300)])
def test_garbage_with_dicom_suffix_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match="junk.dcm"):
        decode_gray(path)


# ---- the real files in ../shared/data/dicom ----


@pytest.fixture(scope="module")
def dicom_dir(shared_data: Path) -> Path:
    folder = shared_data / "dicom"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


def test_real_plain_8bit_dx_is_its_stored_pixels(dicom_dir: Path) -> None:
    path = dicom_dir / "nih_cxr14_dx_chest.dcm"
    out = decode_gray(path)
    np.testing.assert_array_equal(out, pydicom.dcmread(path).pixel_array)


def test_real_jpeg_baseline_decodes_and_monochrome1_header_inverts_it(dicom_dir: Path) -> None:
    plain = decode_gray(dicom_dir / "siim_acr_cr_chest_jpegbaseline.dcm")
    fake_mono1 = decode_gray(dicom_dir / "txv_Fake_MONOCHROME1_header_edit.dcm")
    assert plain.shape == (1024, 1024) and plain.std() > 20
    np.testing.assert_array_equal(fake_mono1, 255 - plain)


def test_real_preamble_less_10bit_monochrome1(dicom_dir: Path) -> None:
    path = dicom_dir / "barre_CR-MONO1-10-chest.dcm"
    data = path.read_bytes()
    assert data[128:132] != b"DICM"
    out = decode_gray(path)
    ds = pydicom.dcmread(path, force=True)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    expected = 255 - _linear_window(ds.pixel_array.astype(np.float64), 550, 1024)
    assert out.shape == (440, 440)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    # Lungs (dark in a displayed chest X-ray) must be darker than the mediastinum after the inversion.
    assert out[150:300, 60:150].mean() < out[150:300, 200:240].mean()
    np.testing.assert_array_equal(decode_gray(data), out)  # by content, without name or preamble


def test_real_jpeg_lossless_needs_a_decoder_package(dicom_dir: Path) -> None:
    from pydicom.pixels import get_decoder

    path = dicom_dir / "fodicom_CR-ModalitySequenceLUT_dental.dcm"
    if get_decoder("1.2.840.10008.1.2.4.70").is_available:
        out = decode_gray(path)
        assert out.dtype == np.uint8 and out.shape == (1576, 1976)
    else:
        with pytest.raises(DecodeError) as info:
            decode_gray(path)
        text = str(info.value)
        assert "JPEG Lossless" in info.value.message and "pylibjpeg-libjpeg" in text and "python-gdcm" in text
