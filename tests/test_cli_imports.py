"""What the CLI imports before it answers (issue 31: one source of truth, the live registry).

``--help``, ``--version`` and mistakes in run-wide arguments, config files and manifests
are answered without importing torch, timm or torchvision. The methods and backbones a
command names are checked by the registries themselves, imported only then (they import
torch): an unknown method or a bad ``--set METHOD.KEY`` is one line and exit status 2,
before any image is read or anything written. Each case runs in a fresh interpreter, where
nothing else has imported them.
"""

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
status = 0
try:
    cli.main()
except SystemExit as exc:
    status = exc.code
print(json.dumps([status, [m for m in {heavy!r} if m in sys.modules]]))
"""


def probe(*argv: str) -> tuple[int, list[str], str]:
    """Exit status, the heavy modules imported and stderr of ``bmdbench ARGV`` in a fresh
    interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(argv)],
        capture_output=True,
        text=True,
        check=True,
    )
    status, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    return status or 0, heavy, done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("--version",),
        ("run", "--help"),
        ("list", "presets"),
        ("list", "methods", "--format", "xml"),  # the format is checked first
        ("list", "runs", "--out", "/nonexistent-bmdbench-store"),
        # argument, config and manifest errors: resolved and checked before the registries
        ("run", "--preset", "nope"),
        ("run", "--preset", "smoke", "--set", "stage1.lr=-1"),
        ("run", "--set", "stage1.lrr=1"),  # the default preset too is found without torch
        ("run", "--set", "image_size"),
        ("run", "--config", "/nonexistent-bmdbench.toml"),
        ("run", "--preset", "smoke", "--data", "/nonexistent-bmdbench.csv"),
        ("run", "--preset", "smoke", "--unlabeled", "/tmp"),  # beside the synthetic data
        ("data", "check", "/nonexistent-bmdbench.csv"),
        ("grid", "table2", "--seeds", "0"),
        ("grid", "--methods", "baseline", "--backbones", "tiny", "--workers", "0"),
        ("tune", "margin", "--timeout", "-1"),
        ("table", "table9"),
        ("table", "table2", "--format", "xls"),
    ],
)
def test_answers_without_torch(argv: tuple[str, ...]) -> None:
    status, heavy, _ = probe(*argv)
    assert heavy == []
    assert status in (0, 2)


@pytest.mark.parametrize(
    "argv",
    [
        ("run", "--method", "nosuch"),
        ("run", "--backbone", "nope"),
        ("run", "--set", "proposed.margn=1"),
        ("run", "--set", "propsed.margin=1"),
        ("run", "--set", "proposed.margin=-1"),  # a hyperparameter's value: its declared rule
        ("run", "--set", "ucvme.dropout=1"),
        ("run", "--set", "proposed.stage1=pi_model"),
        ("grid", "--methods", "baseline,propsed", "--backbones", "tiny"),
        ("tune", "nope"),  # the searches are the kinds the methods declare
        ("tune", "margin", "--method", "propsed"),
        ("tune", "ema", "--method", "atl"),  # a search the method has nothing for
    ],
)
def test_names_and_method_settings_are_checked_by_the_registry(
    argv: tuple[str, ...], tmp_path: Path
) -> None:
    """Told in one line and exit status 2, before any image is read (the phantoms' cache
    stays empty) or anything written under --out; the unknown method's error names the
    methods there are."""
    out, cache = tmp_path / "results", tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-m", "bmdbench.cli", *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "BMDBENCH_CACHE": str(cache)},
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error: ")
    assert not out.exists() and not cache.exists()
    if argv[1:] == ("--method", "nosuch"):
        assert "known methods: baseline, triplet, atl, pi_model" in done.stderr


def test_a_listing_of_the_registries_imports_them() -> None:
    # the probe must see torch when a command does import it, or the tests above prove nothing
    assert "torch" in probe("list", "methods")[1]
    # the names and descriptions come from the registry without timm; sizes build the networks
    assert probe("list", "backbones")[1] == ["torch"]
    assert set(probe("list", "backbones", "--sizes")[1]) == set(HEAVY)


def _piped(*argv: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "bmdbench.cli", *argv],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout


def test_piped_lists_keep_every_name_whole_and_json_parses():
    from bmdbench.backbones import backbone_names
    from bmdbench.methods import METHODS

    piped = _piped("list", "methods")  # rich would lay a table out for 80 columns here
    names = [line.split("\t")[0] for line in piped.splitlines()[1:]]
    assert names == list(METHODS)  # in full, one per line, in registration order
    assert "temporal_ensembling" in piped and "…" not in piped
    rows = json.loads(_piped("list", "methods", "--format", "json"))
    assert [row["method"] for row in rows] == list(METHODS)
    assert rows[METHODS.names().index("proposed")]["stage-1 parent"] == "atl"
    # the values a preset gives a method, as the method declares them
    assert rows[METHODS.names().index("atl")]["preset values"] == "quick: weight=0.05"
    rows = json.loads(_piped("list", "backbones", "--format", "json"))
    assert [row["backbone"] for row in rows] == backbone_names()
    assert rows[0]["description"].startswith("VGG-11 with batch norm")
    rows = json.loads(_piped("list", "backbones", "--sizes", "--format", "json"))
    assert [row["backbone"] for row in rows] == backbone_names()
    assert {row["backbone"]: row["embedding"] for row in rows}["resnet50"] == "2048"
