"""Image readers: formats, bit depths, DICOM rescale/inversion, ROI crop and resize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from bmdbench.data.images import Roi, decode_bytes, load_pixels, read_header
from bmdbench.errors import DataError


def decode(path: Path, roi: Roi | None, size: int) -> np.ndarray:
    """A file on disk decoded as the image cache decodes it (from its bytes)."""
    return decode_bytes(path.read_bytes(), str(path), roi, size)


def write(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = photometric
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def stretched(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    scaled = (values - values.min()) * 65535 / (values.max() - values.min())
    return np.rint(scaled).astype(np.uint16)


def test_8bit_png_keeps_values(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (6, 6), dtype=np.uint8)
    out = decode(write(tmp_path / "a.png", pixels), None, 6)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, pixels)


def test_resize_is_square_and_keeps_constant_values(tmp_path: Path) -> None:
    out = decode(write(tmp_path / "a.png", np.full((12, 8), 200, np.uint8)), None, 4)
    assert out.shape == (4, 4) and out.dtype == np.uint8
    assert (out == 200).all()


def test_16bit_png_is_uint16_and_stretched(tmp_path: Path) -> None:
    pixels = (np.arange(36, dtype=np.uint16) * 100 + 300).reshape(6, 6)
    path = write(tmp_path / "a.png", pixels)
    assert Image.open(path).mode.startswith("I")
    out = decode(path, None, 6)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, stretched(pixels))
    assert out.min() == 0 and out.max() == 65535


def test_constant_16bit_image_maps_to_zero(tmp_path: Path) -> None:
    out = decode(write(tmp_path / "a.png", np.full((5, 5), 4000, np.uint16)), None, 3)
    assert out.dtype == np.uint16 and (out == 0).all()


def test_rgb_and_rgba_become_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0, 0] = rgb[0, 1, 1] = rgb[0, 2, 2] = 255  # red, green, blue
    rgba = np.concatenate([rgb, np.full((1, 3, 1), 7, np.uint8)], axis=2)
    for name, pixels in (("rgb.png", rgb), ("rgba.png", rgba)):
        out = load_pixels(write(tmp_path / name, pixels).read_bytes(), name)
        assert out.dtype == np.uint8
        np.testing.assert_allclose(out[0], [0.299 * 255, 0.587 * 255, 0.114 * 255], atol=1)


def test_jpeg_gray_and_colour(tmp_path: Path) -> None:
    gray = decode(write(tmp_path / "g.jpg", np.full((8, 8), 128, np.uint8)), None, 4)
    assert gray.dtype == np.uint8 and np.abs(gray.astype(int) - 128).max() <= 2
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    out = decode(write(tmp_path / "r.jpeg", red), None, 4)
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - 76).max() <= 3


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff_8_and_16_bit(tmp_path: Path, dtype: type[np.unsignedinteger]) -> None:
    pixels: np.ndarray = (np.arange(16).reshape(4, 4) * 10 + 5).astype(dtype)
    out = decode(write(tmp_path / "a.tif", pixels), None, 4)
    assert out.dtype == dtype
    expected = pixels if dtype == np.uint8 else stretched(pixels)
    np.testing.assert_array_equal(out, expected)


def test_dicom_rescale_slope_intercept(tmp_path: Path) -> None:
    raw = np.array([[0, 100], [200, 1000]], np.uint16)
    path = write_dicom(tmp_path / "a.dcm", raw, slope=2.0, intercept=-10.0)
    np.testing.assert_allclose(load_pixels(path.read_bytes(), str(path)), raw * 2.0 - 10.0)
    out = decode(path, None, 2)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, stretched(raw * 2.0 - 10.0))


def test_dicom_negative_slope_inverts_order(tmp_path: Path) -> None:
    raw = np.array([[0, 100], [200, 1000]], np.uint16)
    out = decode(write_dicom(tmp_path / "a.dcm", raw, slope=-1.0), None, 2)
    np.testing.assert_array_equal(out, stretched(-raw.astype(np.float64)))


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    raw = np.array([[10, 20], [30, 50]], np.uint16)
    path = write_dicom(tmp_path / "a.dcm", raw, photometric="MONOCHROME1", slope=3, intercept=5)
    modality = raw * 3.0 + 5.0
    inverted = modality.max() + modality.min() - modality
    np.testing.assert_allclose(load_pixels(path.read_bytes(), str(path)), inverted)
    out = decode(path, None, 2)
    assert out[1, 1] == 0 and out[0, 0] == 65535  # brightest raw value becomes darkest


def test_dicom_found_by_marker_without_suffix(tmp_path: Path) -> None:
    raw = np.array([[1, 2], [3, 4]], np.uint16)
    path = write_dicom(tmp_path / "scan.dcm", raw).rename(tmp_path / "scan.bin")
    np.testing.assert_array_equal(decode(path, None, 2), stretched(raw))
    assert read_header(path) == read_header(write_dicom(tmp_path / "b.dcm", raw))
    assert read_header(path).format == "DICOM" and read_header(path).bits == 16


def test_roi_crop_on_known_pattern(tmp_path: Path) -> None:
    pattern = np.arange(10 * 12).reshape(10, 12).astype(np.uint8)  # value = 12 y + x
    path = write(tmp_path / "p.png", pattern)
    np.testing.assert_array_equal(decode(path, (2, 3, 6, 7), 4), pattern[3:7, 2:6])
    np.testing.assert_array_equal(decode(path, (1.5, 1.5, 4.2, 4.2), 4), pattern[1:5, 1:5])
    assert decode(path, (0, 0, 12, 10), 3).shape == (3, 3)  # the whole image is a valid ROI


def test_roi_crop_happens_before_resize(tmp_path: Path) -> None:
    pixels = np.zeros((16, 16), np.uint8)
    pixels[4:12, 4:12] = 200
    out = decode(write(tmp_path / "a.png", pixels), (4, 4, 12, 12), 3)
    assert (out == 200).all()  # no bleed from the dark frame outside the ROI


def test_roi_outside_image_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "a.png", np.zeros((10, 8), np.uint8))
    with pytest.raises(DataError, match="outside") as err:
        decode(path, (0, 0, 9, 10), 4)
    assert str(path) in err.value.what and "8×10" in err.value.what and err.value.fix


def test_a_corrupt_file_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="cannot decode") as err:
        decode(bad, None, 4)
    assert str(bad) in err.value.what and "replace it" in err.value.fix
    # a missing file: tests/data/test_manifest.py (test_missing_image_file)


def test_read_header_does_not_need_pixels(tmp_path: Path) -> None:
    header = read_header(write(tmp_path / "a.png", np.zeros((5, 7), np.uint16)))
    assert (header.width, header.height, header.bits, header.format) == (7, 5, 16, "PNG")
    header = read_header(write(tmp_path / "b.jpg", np.zeros((3, 4, 3), np.uint8)))
    assert (header.width, header.height, header.bits, header.format) == (4, 3, 8, "JPEG")
