"""Bad input fails before anything is written (issue 17).

Every test runs the real command line (``bmdbench.cli.main``) on the smoke preset and the
tiny backbone and asserts the three properties of a clean failure: exit status 2 (1 for a
failure of the environment, such as a full disk), at most one line of error, and an output
folder that is unchanged (or was never created).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bmdbench import cli, dispatch, store
from bmdbench.errors import BmdWarning, ConfigError
from bmdbench.hooks import EpochLog

SMOKE = ["--preset", "smoke", "--backbone", "tiny", "--device", "cpu"]


@dataclass
class Result:
    status: int
    out: str
    err: str


@pytest.fixture
def bmdbench(capsys, monkeypatch):
    """``bmdbench ARGS...`` in this process: (exit status, stdout, stderr)."""
    monkeypatch.setenv("BMDBENCH_DEBUG", "")  # restored (unset) after the test, --debug or not
    monkeypatch.setitem(cli._state, "debug", False)

    def call(*args: object) -> Result:
        monkeypatch.setattr(sys, "argv", ["bmdbench", *(str(a) for a in args)])
        try:
            cli.main()
            status = 0
        except SystemExit as exc:
            status = int(exc.code or 0)
        out, err = capsys.readouterr()
        return Result(status, out, err)

    return call


def listing(folder: Path) -> dict[str, tuple[int, int]] | None:
    """Every file and folder under ``folder`` (files with size and mtime); None if absent."""
    if not folder.exists():
        return None
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        if p.is_file()
        else (0, 0)
        for p in sorted(folder.rglob("*"))
    }


def assert_clean_failure(result: Result, status: int, *words: str) -> str:
    assert result.status == status, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.out + result.err
    for word in words:
        assert word in lines[0]
    return lines[0]


@pytest.fixture
def earlier_out(tmp_path) -> Path:
    """An output folder that already holds a run, as after earlier commands."""
    out = tmp_path / "results"
    (out / "runs" / "baseline-tiny-smoke-s0-0123456789").mkdir(parents=True)
    (out / "runs" / "baseline-tiny-smoke-s0-0123456789" / "record.json").write_text("{}\n")
    return out


# --- validation before the run starts --------------------------------------------------


def test_backbone_and_pretrained_weights_are_resolved_before_the_run_starts(bmdbench, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    other = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(3)}, other)
    cases = [
        (["--backbone", "nope"], "unknown backbone 'nope'"),
        (["--pretrained", tmp_path / "missing.pt"], "does not exist"),
        (["--pretrained", text], "cannot load"),
        (["--pretrained", tmp_path], "is a folder"),
        (["--pretrained", other], "has no weights for backbone 'tiny'"),
        (["--backbone", "vgg11_bn", "--set", "image_size=16"], "cannot take 16×16-pixel images"),
    ]
    out = tmp_path / "results"
    for extra, words in cases:
        result = bmdbench("run", "-m", "baseline", *SMOKE, "--out", out, *extra)
        assert_clean_failure(result, 2, words)
        assert result.out == ""  # no run header
        assert listing(out) is None


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--set", "stage1.lr=-1"], "stage1.lr=-1.0 is out of range — use a value > 0"),
        (["--set", "stage1.batch_size=0"], "stage1.batch_size=0 is out of range"),
        (["--set", "stage1.epochs=0"], "stage1.epochs=0 is out of range — use a value ≥ 1"),
        (["--n-labeled", "0"], "split.train=0.0 (--n-labeled) is out of range"),
        (["--n-labeled", "5"], "5 labeled training images do not fill one batch of 8"),
        (["-m", "atl", "--set", "stage1.batch_size=2"], "too small for atl"),
        (["--set", "augment.hflip=2"], "augment.hflip=2.0 is out of range"),
        (["--device", "gpu"], "device='gpu' is not known"),
        (["--seed", "-3"], "seed=-3 is out of range"),
    ],
)
def test_values_that_make_no_sense_are_refused(bmdbench, tmp_path, args, words):
    out = tmp_path / "results"
    result = bmdbench("run", "-m", "baseline", *SMOKE, "--out", out, *args)
    assert_clean_failure(result, 2, words)
    assert listing(out) is None


def test_a_gpu_the_machine_lacks(bmdbench, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    out = tmp_path / "results"
    args = ["run", "-m", "baseline", *SMOKE, "--device", "cuda:3", "--out", out]
    assert_clean_failure(bmdbench(*args), 2, "names GPU 3 but this machine has 1")
    assert listing(out) is None


def test_config_file_grid_and_tune_go_through_the_same_checks(bmdbench, tmp_path):
    config = tmp_path / "settings.toml"
    config.write_text("[stage1]\nepochs = 0\n")
    out = tmp_path / "results"
    for command in (
        ["run", "-m", "baseline", *SMOKE, "--config", config],
        ["grid", "--methods", "baseline", "--backbones", "tiny", "--preset", "smoke",
         "--set", "stage1.epochs=0"],
        ["tune", "lr", "-m", "baseline", *SMOKE, "--set", "stage1.epochs=0"],
    ):  # fmt: skip
        assert_clean_failure(bmdbench(*command, "--out", out), 2, "stage1.epochs=0")
        assert listing(out) is None


def test_grid_and_tune_resolve_every_run_before_they_start(bmdbench, tmp_path):
    out = tmp_path / "results"
    grid = ["grid", "--methods", "baseline", "--backbones", "tiny,nope", "--preset", "smoke"]
    assert_clean_failure(bmdbench(*grid, "--out", out), 2, "unknown backbone 'nope'")
    tune = ["tune", "margin", "-m", "atl", *SMOKE, "--backbone", "nope"]
    assert_clean_failure(bmdbench(*tune, "--out", out), 2, "unknown backbone 'nope'")
    budget = ["tune", "lr", "-m", "baseline", *SMOKE, "--set", "split.train=3"]
    assert_clean_failure(bmdbench(*budget, "--out", out), 2, "do not fill one batch")
    assert listing(out) is None


@pytest.mark.parametrize("target", ["1e300", "-1e300", "3.5e38"])  # 3.5e38: inf in float32
def test_manifest_target_out_of_range_names_the_row(bmdbench, tmp_path, target):
    rows = ["image,target,patient_id"]
    for i in range(30):
        Image.fromarray(np.full((8, 8), 10 + i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{target if i == 7 else 0.5 + i / 100},p{i}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "results"
    words = (f"{manifest} line 9", f"target '{target}' is out of range")
    result = bmdbench("run", "-m", "baseline", *SMOKE, "--data", manifest, "--out", out)
    assert_clean_failure(result, 2, *words)
    assert_clean_failure(bmdbench("data", "check", manifest), 2, *words)
    assert listing(out) is None


def _overlapping_manifest(manifest_factory, folder: Path) -> Path:
    """A manifest whose unlabeled rows hold 8 clean images and one of test patient test1."""
    clean = [f"u{j}.png,,u{j},unlabeled" for j in range(8)]
    return manifest_factory(folder, ["later.png,,test1,", *clean])


def test_test_patients_images_in_the_unlabeled_pool(bmdbench, tmp_path, manifest_factory):
    manifest = _overlapping_manifest(manifest_factory, tmp_path / "data")
    out = tmp_path / "results"
    words = (f"{manifest} line 22: later.png (patient 'test1' is in test)", "--allow-overlap")
    smoke = ["--preset", "smoke", "--device", "cpu", "--data", manifest, "--out", out]
    for command in (
        ["run", "-m", "pi_model", "-b", "tiny"],
        ["grid", "--methods", "pi_model", "--backbones", "tiny"],
        ["tune", "lr", "-m", "pi_model", "-b", "tiny"],
    ):
        assert_clean_failure(bmdbench(*command, *smoke), 2, *words)
        assert listing(out) is None
    # --allow-overlap reaches the runs of a grid and a search: they fail later, at --storage
    for command in (
        ["grid", "--methods", "pi_model", "--backbones", "tiny"],
        ["tune", "lr", "-m", "pi_model", "-b", "tiny"],
    ):
        with pytest.warns(BmdWarning, match="dropped from the unlabeled pool"):
            result = bmdbench(*command, *smoke, "--allow-overlap", "--storage", "notaurl")
        assert_clean_failure(result, 2, "cannot open storage 'notaurl'")


def test_allow_overlap_drops_them_and_the_run_goes_on(bmdbench, tmp_path, manifest_factory):
    manifest = _overlapping_manifest(manifest_factory, tmp_path / "data")
    args = ["run", "-m", "pi_model", *SMOKE, "--data", manifest, "--out", tmp_path / "results"]
    dropped = r"dropped from the unlabeled pool \(--allow-overlap\): 1 image of .*later\.png"
    with pytest.warns(BmdWarning, match=dropped):
        result = bmdbench(*args, "--allow-overlap", "--quiet")
    assert result.status == 0, result.err
    run_dir = Path(result.out.strip().splitlines()[-1])
    record = store.read_record(run_dir)
    assert record is not None
    assert record.ok and record.config["split"]["allow_overlap"] is True
    assert record.data.sizes == {"train": 12, "val": 4, "test": 4, "unlabeled": 8}
    assert "later.png" not in json.loads((run_dir / "split.json").read_text())["unlabeled"]
    assert record.data.unit == "g/cm²"  # the manifest's unit column
    assert "values are in g/cm²" in result.out


# --- errors instead of tracebacks ---------------------------------------------------------


def test_out_that_is_a_file_or_not_writable(bmdbench, tmp_path, monkeypatch):
    file = tmp_path / "results"
    file.write_text("my notes\n")
    for command in (
        ["run", "-m", "baseline", *SMOKE],
        ["grid", "--methods", "baseline", "--backbones", "tiny", "--preset", "smoke"],
        ["tune", "lr", "-m", "baseline", *SMOKE],
        ["table", "table2"],
    ):
        result = bmdbench(*command, "--out", file)
        assert_clean_failure(result, 2, f"--out {file} is a file")
    assert file.read_text() == "my notes\n"

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(store.os, "access", lambda path, mode: Path(path) != locked)
    result = bmdbench("run", "-m", "baseline", *SMOKE, "--out", locked / "results")
    assert_clean_failure(result, 2, "is not writable", "permission denied")
    assert listing(locked) == {}


def _finished_run(folder: Path, epochs: str) -> Path:
    folder.mkdir(parents=True)
    # a finished run's record (format 1) with the files beside it that a test needs
    shutil.copy(
        Path(__file__).with_name("records") / "format1-pi_model.json", folder / store.RECORD
    )
    (folder / "predictions_test.csv").write_text("id,target,prediction\na,0.7,0.71\nb,0.9,0.85\n")
    (folder / "epochs.jsonl").write_text(epochs)
    return folder


def test_plot_checks_the_run_before_writing_a_figure(bmdbench, tmp_path):
    run = _finished_run(tmp_path / "runs" / "baseline-tiny-smoke-s0-0123456789", "")
    figures = tmp_path / "figures"
    result = bmdbench("plot", run, "--out", figures)
    assert_clean_failure(result, 2, "epochs.jsonl holds no epochs to plot")
    assert listing(figures) is None
    (run / "predictions_test.csv").unlink()
    assert_clean_failure(bmdbench("plot", run, "--out", figures), 2, "cannot read")
    assert_clean_failure(
        bmdbench("plot", run / "record.json", "--out", figures), 2, "not a finished run"
    )
    assert listing(figures) is None


# --- failures while writing -----------------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("failing", ["checkpoint.pt", "record.json"])
def test_disk_full_while_writing_a_run_leaves_nothing_behind(
    bmdbench, earlier_out, monkeypatch, failing
):
    """The run's file is written to /dev/full, where every write fails with ENOSPC."""
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        if Path(name).name.startswith(f".{failing}."):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, name

    monkeypatch.setattr(store.tempfile, "mkstemp", mkstemp)
    before = listing(earlier_out)
    result = bmdbench("run", "-m", "baseline", *SMOKE, "--quiet", "--out", earlier_out)
    line = assert_clean_failure(result, 1, failing, os.strerror(errno.ENOSPC))
    assert ".tmp" in line  # the run's staging folder, now removed
    assert listing(earlier_out) == before


def test_epoch_log_that_cannot_be_written_leaves_nothing_behind(bmdbench, earlier_out, monkeypatch):
    def full(self, state):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    monkeypatch.setattr(EpochLog, "after_epoch", full)
    before = listing(earlier_out)
    result = bmdbench("run", "-m", "baseline", *SMOKE, "--quiet", "--out", earlier_out)
    assert_clean_failure(result, 1, "the run stopped at", "epochs.jsonl", "No space left")
    assert listing(earlier_out) == before


# --- one line for storage errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("notaurl", "cannot open storage 'notaurl'"),
        ("mysql://user@localhost/db", "the database driver for mysql is not installed"),
        ("postgresql+nodriver://user@localhost/db", "cannot open storage"),
        ("sqlite:////no/such/folder/x.db", "unable to open database file"),
    ],
)
def test_storage_errors_are_one_line(bmdbench, tmp_path, url, words):
    out = tmp_path / "results"
    grid = ["grid", "--methods", "baseline", "--backbones", "tiny", "--preset", "smoke"]
    for command in (grid, ["tune", "lr", "-m", "baseline", *SMOKE]):
        result = bmdbench(*command, "--storage", url, "--out", out)
        assert_clean_failure(result, 2, words)
        assert result.out == ""  # not even the grid's plan
        assert listing(out) is None


def test_library_warnings_are_hidden_unless_debug(bmdbench, tmp_path, monkeypatch, caplog):
    def noisy_storage(*args, **kwargs):
        warnings.warn("a library warning", UserWarning, stacklevel=1)
        logging.getLogger("sqlalchemy.engine").warning("a library log line")
        raise RuntimeError("server says no")

    monkeypatch.setattr(dispatch, "RDBStorage", noisy_storage)
    command = ["tune", "lr", "-m", "baseline", *SMOKE, "--storage", "sqlite:///x.db"]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        result = bmdbench(*command, "--out", tmp_path / "results")
    assert_clean_failure(result, 2, "RuntimeError: server says no")
    assert not shown and "a library log line" not in caplog.text
    with warnings.catch_warnings(record=True) as shown, pytest.raises(ConfigError):
        warnings.simplefilter("always")
        bmdbench("--debug", *command, "--out", tmp_path / "results")
    assert [str(w.message) for w in shown] == ["a library warning"]
    assert "a library log line" in caplog.text


def test_storage_error_is_one_line_in_a_fresh_process(tmp_path):
    """End to end, with every warning shown: the installed command prints one line."""
    command = [sys.executable, "-W", "always", "-m", "bmdbench.cli", "grid", "--methods",
               "baseline", "--backbones", "tiny", "--preset", "smoke", "--storage",
               "postgresql://user@127.0.0.1:1/db", "--out", str(tmp_path / "results")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "BMDBENCH_DEBUG"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot open storage"), done.stderr
    assert listing(tmp_path / "results") is None
