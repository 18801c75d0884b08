"""The decode-once cache: decoded, resized images kept on disk between runs.

One cache file per (list of paths and ROIs, image size, :data:`CACHE_VERSION`)
lives in the cache folder (``$BMDBENCH_CACHE``, else ``~/.cache/bmdbench``) as
``images-<key>.npz``. It holds the stacked images, each file's stat signature
(size, mtime in ns), its SHA-256 content digest and its bit depth.

A warm load reads the one cache file and ``os.stat``\\ s every image; it opens
no image whose signature is unchanged. An image whose signature changed is
read and hashed, and decoded again only if its digest changed (a ``touch``
only refreshes the signature). A change that keeps both size and mtime goes
unnoticed, as in ``git`` and ``make``. The file is rewritten atomically
(temporary file + ``os.replace``) after any change, and never when decoding
fails. A cache that cannot be read is rebuilt; one that cannot be written is
skipped with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bmdbench.config import stable_hash
from bmdbench.data.images import Roi, decode_bytes
from bmdbench.errors import BmdWarning, DataError

CACHE_VERSION = 1
"""Bump when decoding changes, so old cache files are no longer used."""

_WORKERS = min(8, os.cpu_count() or 1)  # Pillow, pydicom's numpy and hashlib release the GIL


def default_cache_dir() -> Path:
    """``$BMDBENCH_CACHE`` if set, else ``~/.cache/bmdbench``."""
    env = os.environ.get("BMDBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bmdbench"


def cache_file(
    paths: Sequence[str | Path], rois: Sequence[Roi | None], size: int, cache_dir: Path
) -> Path:
    """The cache file for these images at this size."""
    entries = [[str(p), None if r is None else list(r)] for p, r in zip(paths, rois, strict=True)]
    key = stable_hash([CACHE_VERSION, size, entries])
    return cache_dir / f"images-{key[:32]}.npz"


def decode_all(
    paths: Sequence[str | Path],
    rois: Sequence[Roi | None],
    size: int,
    cache_dir: Path | None = None,
    where: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Decode every image (through the cache) into one ``(N, size, size)`` array.

    Returns the images and each file's SHA-256 content digest (hex). The array
    is ``uint16`` if any image has more than 8 bits, and then 8-bit images are
    scaled by 257 (255 → 65535); otherwise it is ``uint8``. ``where[i]``, if
    given, prefixes errors about image ``i`` (e.g. ``"manifest.csv line 5"``).
    Errors surface in input order; a failure leaves the cache untouched.
    """
    n = len(paths)
    assert len(rois) == n and (where is None or len(where) == n)
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    file = cache_file(paths, rois, size, cache_dir)
    signatures = np.array([_signature(p, where, i) for i, p in enumerate(paths)], np.int64)
    signatures = signatures.reshape(n, 2)
    entry = _load(file, n, size)
    if entry is None:
        images = np.zeros((n, size, size), np.uint8)
        digests = np.full(n, "", dtype="<U64")
        bits = np.zeros(n, np.uint8)
        stale = np.arange(n)
    else:
        images, old_signatures, digests, bits = entry
        stale = np.flatnonzero((old_signatures != signatures).any(axis=1))
    if len(stale):
        images, digests, bits = _refresh(paths, rois, size, where, stale, images, digests, bits)
        save_arrays(
            file,
            {"images": images, "signatures": signatures, "digests": digests, "bits": bits},
            "image cache",
        )
    return images, digests.tolist()


def _signature(path: str | Path, where: Sequence[str] | None, i: int) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as err:
        what = f"image file {path} not found ({err.strerror})"
        raise DataError(_at(where, i, what), "fix the path, or remove the row") from err
    return st.st_size, st.st_mtime_ns


def _at(where: Sequence[str] | None, i: int, what: str) -> str:
    return what if where is None else f"{where[i]}: {what}"


def _read_file(path: str | Path) -> bytes:
    """The only place that reads an image file (tests count its calls)."""
    return Path(path).read_bytes()


def _refresh(
    paths: Sequence[str | Path],
    rois: Sequence[Roi | None],
    size: int,
    where: Sequence[str] | None,
    stale: np.ndarray,
    images: np.ndarray,
    digests: np.ndarray,
    bits: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-read the ``stale`` entries; decode those whose content changed."""

    def work(i: int) -> tuple[str, np.ndarray | None]:
        try:
            data = _read_file(paths[i])
        except OSError as err:
            what = f"cannot read image {paths[i]}: {err.strerror}"
            raise DataError(_at(where, i, what), "check the file's permissions") from err
        digest = hashlib.sha256(data).hexdigest()
        if digest == digests[i]:
            return digest, None
        try:
            return digest, decode_bytes(data, str(paths[i]), rois[i], size)
        except DataError as err:
            raise DataError(_at(where, i, err.what), err.fix) from err

    with ThreadPoolExecutor(_WORKERS) as pool:
        results = list(pool.map(work, stale.tolist()))
    decoded = {int(i): img for i, (_, img) in zip(stale, results, strict=True) if img is not None}
    digests = digests.copy()
    digests[stale] = [digest for digest, _ in results]
    bits = bits.copy()
    for i, img in decoded.items():
        bits[i] = 16 if img.dtype == np.uint16 else 8
    wide = bool((bits == 16).any())
    if wide and images.dtype == np.uint8:
        images = images.astype(np.uint16) * 257
    elif not wide and images.dtype == np.uint16:
        images = (images // 257).astype(np.uint8)  # every image is 8-bit: exact
    for i, img in decoded.items():
        images[i] = img.astype(np.uint16) * 257 if wide and img.dtype == np.uint8 else img
    return images, digests, bits


def _load(file: Path, n: int, size: int) -> tuple[np.ndarray, ...] | None:
    """The cached arrays, or None when the file is missing, unreadable or inconsistent."""
    try:
        with np.load(file, allow_pickle=False) as z:
            entry = (z["images"], z["signatures"], z["digests"], z["bits"])
    except Exception:  # missing, damaged or foreign: rebuild, whatever np.load raised
        return None
    images, signatures, digests, bits = entry
    if images.shape != (n, size, size) or signatures.shape != (n, 2) or len(digests) != n:
        return None
    return images, signatures, digests.astype("<U64"), bits


def save_arrays(file: Path, arrays: dict[str, Any], what: str) -> None:
    """Write ``arrays`` to an .npz ``file`` atomically; warn (and go on) if it cannot be written.

    ``what`` names the cache in the warning ("image cache", "synthetic-data cache").
    """
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=file.parent, suffix=".tmp", delete=False) as f:
            tmp = f.name
            np.savez(f, **arrays)
        os.replace(tmp, file)
    except OSError as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        warnings.warn(
            f"could not write the {what} {file} ({err}); it will be computed "
            "again next time — set BMDBENCH_CACHE to a writable folder",
            BmdWarning,
            stacklevel=3,
        )
