"""The CLI answers ``--help``, ``list`` and mistakes in its arguments without importing
torch, timm or torchvision (issue: an instant CLI). Checked in a fresh interpreter, where
nothing else has imported them, with the registries' catalogues written by an earlier
command (:mod:`bmdbench.catalogue`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "timm", "torchvision")

PROBE = """
import json, sys
sys.argv = ["bmdbench", *json.loads(sys.argv[1])]
from bmdbench import cli
try:
    cli.main()
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


def heavy_imports(*argv: str, cache: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(argv)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BMDBENCH_CACHE": str(cache)},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def catalogued(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding both catalogues, written as a user's first listing writes
    them (that listing imports torch: the catalogue is built from the registries)."""
    cache = tmp_path_factory.mktemp("cache")
    assert "torch" in heavy_imports("list", "methods", cache=cache)
    assert "timm" in heavy_imports("list", "backbones", cache=cache)
    return cache


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("run", "--help"),
        ("list", "presets"),
        ("list", "methods"),
        ("list", "backbones"),
        ("list", "runs", "--out", "/nonexistent-bmdbench-store"),
        # argument, config and manifest errors: resolved and checked before the engine loads
        ("run", "--preset", "nope"),
        ("run", "--preset", "smoke", "--set", "stage1.lr=-1"),
        ("run", "--set", "stage1.lrr=1"),  # the default preset too is found without torch
        ("run", "--set", "image_size"),
        ("run", "--method", "propsed"),  # unknown names and keys: from the catalogues
        ("run", "--backbone", "nope"),
        ("run", "--set", "proposed.margn=1"),
        ("run", "--set", "propsed.margin=1"),
        ("run", "--set", "proposed.margin=-1"),  # a hyperparameter's value: its declared rule
        ("run", "--set", "ucvme.dropout=1"),
        ("run", "--set", "proposed.stage1=pi_model"),
        ("grid", "--methods", "baseline,propsed", "--backbones", "tiny", "--seeds", "1"),
        ("tune", "nope"),
        ("tune", "margin", "--method", "propsed"),
        ("tune", "ema", "--method", "atl"),  # a search the method has nothing for
        ("tune", "margin", "--timeout", "-1"),
        ("run", "--preset", "smoke", "--data", "/nonexistent-bmdbench.csv"),
        ("run", "--preset", "smoke", "--n-labeled", "2"),
        ("data", "check", "/nonexistent-bmdbench.csv"),
        ("grid", "table2", "--seeds", "0"),
        ("table", "table9"),
        ("table", "table2", "--format", "xls"),
    ],
)
def test_answers_without_torch(argv: tuple[str, ...], catalogued: Path) -> None:
    assert heavy_imports(*argv, cache=catalogued) == []


def test_the_probe_sees_an_import_of_torch(tmp_path: Path) -> None:
    # a listing without a catalogue imports the registry: the probe must see it, or the test
    # above proves nothing
    assert "torch" in heavy_imports("list", "methods", cache=tmp_path)


def test_piped_lists_keep_every_name_whole_and_json_parses():
    from bmdbench.methods import METHODS

    piped = subprocess.run(
        [sys.executable, "-m", "bmdbench.cli", "list", "methods"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = [line.split("\t")[0] for line in piped.splitlines()[1:]]
    assert names == list(METHODS)  # in full, one per line, in registration order
    assert "temporal_ensembling" in [line.split("\t")[0] for line in piped.splitlines()]
    as_json = subprocess.run(
        [sys.executable, "-m", "bmdbench.cli", "list", "backbones", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(as_json)
    assert {"backbone", "embedding", "parameters"} <= set(rows[0])
    assert "vgg11_bn_se" in [row["backbone"] for row in rows]
