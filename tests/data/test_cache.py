"""The decode-once cache: warm loads read no image, changed files are re-decoded alone."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bmdbench.data import cache
from bmdbench.data.cache import decode_all, default_cache_dir
from bmdbench.errors import BmdWarning, DataError

SIZE = 4


def write(path: Path, pixels: np.ndarray, mtime_s: int = 1_000_000) -> Path:
    """Save ``pixels`` and set a distinct mtime (robust to coarse filesystem clocks)."""
    Image.fromarray(pixels).save(path)
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))
    return path


def images(tmp_path: Path, n: int = 3) -> list[Path]:
    return [write(tmp_path / f"{i}.png", np.full((6, 6), 10 * (i + 1), np.uint8)) for i in range(n)]


class Spy:
    """Counts calls to a wrapped function, by first argument."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls: list[object] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(args[0])
        return self.fn(*args, **kwargs)


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> tuple[Spy, Spy]:
    reads, decodes = Spy(cache._read_file), Spy(cache.decode_bytes)
    monkeypatch.setattr(cache, "_read_file", reads)
    monkeypatch.setattr(cache, "decode_bytes", decodes)
    return reads, decodes


def test_second_load_reads_no_image_file(tmp_path: Path, spies: tuple[Spy, Spy]) -> None:
    reads, decodes = spies
    paths = images(tmp_path)
    first, digests = decode_all(paths, [None] * 3, SIZE, tmp_path / "cache")
    assert len(reads.calls) == 3 and len(decodes.calls) == 3
    reads.calls.clear()
    decodes.calls.clear()
    second, again = decode_all(paths, [None] * 3, SIZE, tmp_path / "cache")
    assert reads.calls == [] and decodes.calls == []
    np.testing.assert_array_equal(first, second)
    assert digests == again and len(digests[0]) == 64
    assert first.shape == (3, SIZE, SIZE) and first.dtype == np.uint8
    assert [int(img[0, 0]) for img in first] == [10, 20, 30]


def test_touched_file_is_hashed_not_decoded(tmp_path: Path, spies: tuple[Spy, Spy]) -> None:
    reads, decodes = spies
    paths = images(tmp_path)
    decode_all(paths, [None] * 3, SIZE, tmp_path / "cache")
    reads.calls.clear()
    decodes.calls.clear()
    os.utime(paths[1], ns=(2 * 10**18, 2 * 10**18))
    decode_all(paths, [None] * 3, SIZE, tmp_path / "cache")
    assert reads.calls == [paths[1]] and decodes.calls == []
    reads.calls.clear()
    decode_all(paths, [None] * 3, SIZE, tmp_path / "cache")
    assert reads.calls == []  # the new signature was saved


def test_changed_file_alone_is_decoded_again(tmp_path: Path, spies: tuple[Spy, Spy]) -> None:
    reads, decodes = spies
    paths = images(tmp_path)
    _, before = decode_all(paths, [None] * 3, SIZE, tmp_path / "cache")
    reads.calls.clear()
    decodes.calls.clear()
    write(paths[2], np.full((6, 6), 99, np.uint8), mtime_s=2_000_000)
    out, after = decode_all(paths, [None] * 3, SIZE, tmp_path / "cache")
    assert reads.calls == [paths[2]] and len(decodes.calls) == 1
    assert (out[2] == 99).all() and (out[0] == 10).all()
    assert after[:2] == before[:2] and after[2] != before[2]


def test_mixed_bit_depths_stack_as_uint16(tmp_path: Path) -> None:
    paths = images(tmp_path, 2)
    wide = np.arange(36, dtype=np.uint16).reshape(6, 6) * 1000
    write(paths[1], wide, mtime_s=2_000_000)
    out, _ = decode_all(paths, [None, None], SIZE, tmp_path / "cache")
    assert out.dtype == np.uint16 and (out[0] == 10 * 257).all()
    write(paths[1], np.full((6, 6), 7, np.uint8), mtime_s=3_000_000)  # back to 8 bits only
    out, _ = decode_all(paths, [None, None], SIZE, tmp_path / "cache")
    assert out.dtype == np.uint8 and (out[0] == 10).all() and (out[1] == 7).all()


def test_failed_decode_writes_no_cache(tmp_path: Path) -> None:
    paths = images(tmp_path)
    paths[1].write_bytes(b"not an image")
    with pytest.raises(DataError, match="row two") as err:
        decode_all(paths, [None] * 3, SIZE, tmp_path / "cache", where=["row one", "row two", "x"])
    assert str(paths[1]) in str(err.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        decode_all([tmp_path / "none.png"], [None], SIZE, tmp_path / "cache")


def test_rois_and_size_key_the_cache(tmp_path: Path) -> None:
    paths = images(tmp_path, 1)
    decode_all(paths, [None], SIZE, tmp_path / "cache")
    decode_all(paths, [(0, 0, 3, 3)], SIZE, tmp_path / "cache")
    out, _ = decode_all(paths, [None], 2, tmp_path / "cache")
    assert out.shape == (1, 2, 2)
    files = sorted(p.suffix for p in (tmp_path / "cache").iterdir())
    assert files == [".npz"] * 3  # one file each, no temporary file left behind


def test_damaged_cache_file_is_rebuilt(tmp_path: Path, spies: tuple[Spy, Spy]) -> None:
    _, decodes = spies
    paths = images(tmp_path, 2)
    decode_all(paths, [None] * 2, SIZE, tmp_path / "cache")
    (file,) = (tmp_path / "cache").iterdir()
    file.write_bytes(b"truncated")
    out, _ = decode_all(paths, [None] * 2, SIZE, tmp_path / "cache")
    assert len(decodes.calls) == 4 and (out[1] == 20).all()


def test_unwritable_cache_warns_and_still_decodes(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(BmdWarning, match="BMDBENCH_CACHE"):
        out, _ = decode_all(images(tmp_path, 1), [None], SIZE, blocker / "cache")
    assert (out == 10).all()


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BMDBENCH_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("BMDBENCH_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "bmdbench"
