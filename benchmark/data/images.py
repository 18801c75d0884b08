"""Image readers and preprocessing: decode → single channel → ROI crop → resize.

Supported sources: PNG, JPEG and TIFF (8 or 16 bit, grayscale or colour) via
Pillow, and DICOM via pydicom (``.dcm`` files, or any file with ``DICM`` at
byte 128). Pixel values follow two rules:

- an 8-bit source keeps its values and decodes to ``uint8``;
- a source with more than 8 bits (16-bit PNG/TIFF, 32-bit integer or float
  TIFF, every DICOM) is min–max stretched, per image and over the whole image
  before cropping, to the full ``uint16`` range 0..65535 (a constant image
  maps to 0). Absolute intensities of such sources are therefore not kept.

Colour images become luminance (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B);
an alpha channel is dropped. The ROI is cropped before resizing, and the crop
is resized to a square without keeping its aspect ratio.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut

from bmdbench.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")
"""File suffixes (lower case) taken from a folder of images."""

Roi = tuple[float, float, float, float]
"""A region of interest ``(x0, y0, x1, y1)`` in pixels: x0, y0 inclusive, x1, y1 exclusive."""

_READ_FIX = (
    "check that the file opens in an image viewer and is PNG, JPEG, TIFF or DICOM "
    "(compressed DICOM may need `pip install pylibjpeg pylibjpeg-libjpeg`); "
    "replace it or remove its row"
)
_LUMA = np.array([0.299, 0.587, 0.114])
_PIL_WIDE_MODES = ("I", "F")  # 32-bit integer / float: more than 8 bits
_PIL_BITS = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16}  # else 8


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, without decoding its pixels."""

    width: int
    height: int
    bits: int  # bits per sample: 8, 16, 32 (1 for bilevel images)
    format: str  # "PNG", "JPEG", "TIFF", "DICOM", ...


def is_dicom(name: str | Path, data: bytes) -> bool:
    """True for a ``.dcm`` file or one whose first 132 bytes carry the ``DICM`` marker."""
    return Path(name).suffix.lower() == ".dcm" or data[128:132] == b"DICM"


def decode_bytes(data: bytes, name: str, roi: Roi | None, size: int) -> np.ndarray:
    """Decode a file's bytes (``name``: its path) and return its ROI resized to ``(size, size)``.

    Returns ``uint8`` for 8-bit sources and ``uint16`` (min–max stretched, see
    the module docstring) for sources with more than 8 bits. ``roi`` is
    ``(x0, y0, x1, y1)`` in pixels of the original image (fractional values are
    widened to whole pixels); ``None`` keeps the whole image. Resizing is
    bilinear with antialiasing (Pillow on float32) and ignores the aspect
    ratio. An undecodable file, or a ROI outside the image, raises
    :class:`DataError`.
    """
    pixels = load_pixels(data, name)
    if pixels.dtype != np.uint8:
        pixels = stretch(pixels)
    return crop_resize(pixels, roi, size, name)


def load_pixels(data: bytes, name: str) -> np.ndarray:
    """Full-resolution single-channel pixels of an encoded image.

    Returns ``uint8`` for 8-bit sources and ``float64`` otherwise: raw 16-bit
    (or 32-bit) values for Pillow formats; for DICOM the modality values (the
    Modality LUT or ``RescaleSlope``/``RescaleIntercept`` applied), inverted as
    ``max + min - x`` when the photometric interpretation is MONOCHROME1.
    """
    try:
        if is_dicom(name, data):
            return _dicom_pixels(data, name)
        return _pil_pixels(data)
    except DataError:
        raise
    except Exception as err:  # decoders raise many kinds of errors on a corrupt file
        raise DataError(f"cannot decode image {name}: {err}", _READ_FIX) from err


def _pil_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode.startswith("I;16") or img.mode in _PIL_WIDE_MODES:
            return np.asarray(img, dtype=np.float64)
        gray = img if img.mode == "L" else img.convert("L")  # colour → luminance; alpha dropped
        return np.asarray(gray, dtype=np.uint8)


def _dicom_pixels(data: bytes, name: str) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(
            f"DICOM {name} has {frames} frames; only single-frame images are supported",
            "export the frame to use as its own file",
        )
    pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        return pixels @ _LUMA  # pydicom returns colour DICOM as RGB
    pixels = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    return pixels


def stretch(pixels: np.ndarray) -> np.ndarray:
    """Min–max stretch to [0, 65535] as float64 (not rounded); a constant image maps to 0."""
    lo, hi = float(pixels.min()), float(pixels.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise DataError("image has NaN or infinite pixel values", _READ_FIX)
    if hi == lo:
        return np.zeros(pixels.shape, dtype=np.float64)
    return (pixels - lo) * (65535.0 / (hi - lo))


def check_roi(roi: Roi, width: int, height: int, name: str) -> tuple[int, int, int, int]:
    """Whole-pixel box ``(x0, y0, x1, y1)`` of ``roi`` inside a ``width`` × ``height`` image.

    Fractional coordinates are widened (x0, y0 floored; x1, y1 ceiled). A ROI
    reaching outside the image raises :class:`DataError`.
    """
    x0, y0, x1, y1 = roi
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise DataError(
            f"ROI ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside image {name} "
            f"of {width}×{height} pixels",
            f"fix the roi_* columns: 0 ≤ x0 < x1 ≤ {width} and 0 ≤ y0 < y1 ≤ {height}",
        )
    return math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)


def crop_resize(pixels: np.ndarray, roi: Roi | None, size: int, name: str) -> np.ndarray:
    """Crop ``pixels`` (H, W) to ``roi`` and resize to ``(size, size)``.

    ``uint8`` input gives ``uint8`` output; any other input is taken to be on
    the 0..65535 scale and gives ``uint16``. Values are rounded to nearest.
    """
    if roi is not None:
        x0, y0, x1, y1 = check_roi(roi, pixels.shape[1], pixels.shape[0], name)
        pixels = pixels[y0:y1, x0:x1]
    dtype = np.uint8 if pixels.dtype == np.uint8 else np.uint16
    if pixels.shape != (size, size):
        img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
        pixels = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    elif pixels.dtype == dtype:
        return pixels.copy()
    top = np.iinfo(dtype).max
    return np.clip(np.rint(pixels), 0, top).astype(dtype)


def read_header(path: str | Path) -> ImageHeader:
    """Size, bit depth and format from the file's header (no pixel decoding).

    Pillow's lazy open reads only the header; DICOM is read up to its pixel data.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(132)
            f.seek(0)
            if is_dicom(path, head):
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
                bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
                return ImageHeader(int(ds.Columns), int(ds.Rows), bits, "DICOM")
            with Image.open(f) as img:
                bits = _PIL_BITS.get(img.mode, 8)
                return ImageHeader(img.width, img.height, bits, img.format or "?")
    except Exception as err:  # as in load_pixels: readers raise many kinds of errors
        raise DataError(f"cannot read the header of image {path}: {err}", _READ_FIX) from err
