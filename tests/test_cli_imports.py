"""The CLI answers ``--help`` without importing torch, timm or torchvision (issue: an
instant CLI). Checked in a fresh interpreter, where nothing else has imported them."""

from __future__ import annotations

import json
import subprocess
import sys

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


def heavy_imports(*argv: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(argv)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("run", "--help"),
        ("list", "presets"),
        ("list", "runs", "--out", "/nonexistent-bmdbench-store"),
        # argument, config and manifest errors: resolved and checked before the engine loads
        ("run", "--preset", "nope"),
        ("run", "--preset", "smoke", "--set", "stage1.lr=-1"),
        ("run", "--set", "stage1.lrr=1"),  # the default preset too is found without torch
        ("run", "--set", "image_size"),
        ("run", "--preset", "smoke", "--data", "/nonexistent-bmdbench.csv"),
        ("run", "--preset", "smoke", "--n-labeled", "2"),
        ("data", "check", "/nonexistent-bmdbench.csv"),
        ("grid", "table2", "--seeds", "0"),
        ("table", "table9"),
        ("table", "table2", "--format", "xls"),
    ],
)
def test_answers_without_torch(argv: tuple[str, ...]) -> None:
    assert heavy_imports(*argv) == []


def test_the_probe_sees_an_import_of_torch() -> None:
    # the same probe on a command that trains must report torch, or the test above proves nothing
    assert "torch" in heavy_imports("list", "methods")
