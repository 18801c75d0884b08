"""bmdbench's warnings are its own lines, printed once, and a long list in a message points
to a file with all of it (issue 31, item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bmdbench import messages
from bmdbench.errors import OutputError


def test_a_short_list_is_named_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert messages.shortened(["a", "b", "c"], "things") == "a; b; c"
    assert not (tmp_path / "bmdbench").exists()


def test_a_long_list_says_how_many_more_and_where_all_of_them_are(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    items = [f"image {i}" for i in range(7)]
    text = messages.shortened(items, "things")
    (file,) = (tmp_path / "bmdbench").glob("things-*.txt")
    assert text == f"image 0; image 1; image 2; and 4 more (all 7: {file})"
    assert file.read_text().splitlines() == items
    assert messages.shortened(items, "things") == text  # the same list: the same file


def test_a_list_file_that_cannot_be_written_is_left_out(monkeypatch):
    def refuse(path: Path, text: str) -> None:
        raise OutputError(f"cannot write {path}", "free some space")

    monkeypatch.setattr(messages.store, "write_text", refuse)
    assert messages.shortened(list("abcde"), "things") == "a; b; c; and 2 more"


SCRIPT = """
import warnings
from bmdbench.errors import BmdWarning
from bmdbench.messages import plain_warnings

def dropped():
    warnings.warn("dropped 2 images", BmdWarning, stacklevel=2)

with plain_warnings():
    dropped()  # raised from two places, and once after the filters changed:
    dropped()  # Python's own registry would print it again
    warnings.simplefilter("default")
    dropped()
    warnings.warn("a library's warning", UserWarning)
"""


def _stderr(*argv: str, **env: str) -> str:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env={**os.environ, **env}
    ).stderr


def test_bmdbenchs_warnings_are_one_plain_line_once_and_others_keep_their_form():
    lines = _stderr("-c", SCRIPT, BMDBENCH_DEBUG="").splitlines()
    assert lines[0] == "warning: dropped 2 images"
    assert [line for line in lines if "dropped" in line] == [lines[0]]
    assert any(line.endswith("UserWarning: a library's warning") for line in lines)
    debug = _stderr("-c", SCRIPT, BMDBENCH_DEBUG="1")
    assert "BmdWarning: dropped 2 images" in debug  # --debug: where it came from


def test_allow_overlap_prints_its_warning_once_in_bmdbenchs_words(tmp_path, manifest_factory):
    """A grid of a stage-2 method checks its cell and its stage-1 parent's, and so drew the
    split, and warned, twice; it fails afterwards, at the storage, before running."""
    clean = [f"u{j}.png,,u{j},unlabeled" for j in range(8)]
    repeats = [f"again{j}.png,,test{j % 4}," for j in range(5)]  # of test patients
    manifest = manifest_factory(tmp_path / "data", [*repeats, *clean])
    grid = ["grid", "--methods", "pi_model", "--backbones", "tiny", "--preset", "smoke"]
    options = ["--data", manifest, "--out", tmp_path / "out", "--storage", "notaurl"]
    err = _stderr(
        "-m",
        "bmdbench.cli",
        *grid,
        *map(str, options),
        "--allow-overlap",
        TMPDIR=str(tmp_path),
        BMDBENCH_CACHE=str(tmp_path / "cache"),
    )
    warned = [line for line in err.splitlines() if "dropped" in line]
    assert len(warned) == 1, err
    assert warned[0].startswith("warning: dropped from the unlabeled pool (--allow-overlap): 5")
    assert "Warning" not in err and "sources.py" not in err and "splits.py" not in err
    (file,) = (tmp_path / "bmdbench").glob("overlap-*.txt")
    assert warned[0].endswith(f"; and 2 more (all 5: {file})")
    assert len(file.read_text().splitlines()) == 5
    assert err.splitlines()[-1].startswith("error: cannot open storage 'notaurl'")
