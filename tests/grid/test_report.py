"""`bmdbench report`: one self-contained HTML page of a store, loaded in a real browser."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from bmdbench.experiments import Request, read_requests
from bmdbench.rendering import BOLD, file_stem, html_table

# 8 of the labeled training images as labels: the rest join the unlabeled pool with their
# truth kept, so that pseudo-labels have an error to show
SMALL = ["--set", "stage1.epochs=2", "--set", "stage2.epochs=1", "--set", "split.train=8"]


def bmdbench(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bmdbench.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding Table 2 (smoke, tiny, 2 seeds) on two small manifests of different
    content, and the report written from it."""
    from conftest import write_manifest

    root = tmp_path_factory.mktemp("report")
    out = root / "results"
    unlabeled = [f"u{j}.png,,u{j}," for j in range(8)]
    for site, train in (("siteA", 12), ("siteB", 14)):
        manifest = write_manifest(
            root / site, unlabeled, (("train", train), ("val", 4), ("test", 4))
        )
        done = bmdbench(
            *["grid", "table2", "--backbones", "tiny", "--preset", "smoke", "--seeds", 2],
            *["--data", manifest, "--device", "cpu", "--out", out, *SMALL],
        )
        assert done.returncode == 0, done.stderr
    done = bmdbench("report", "--out", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "report.html")
    return out


@pytest.mark.slow
def test_the_report_holds_every_table_and_figure_of_both_datasets(two_datasets: Path) -> None:
    page = (two_datasets / "report.html").read_text()
    assert len(read_requests(two_datasets)) == 2  # each grid left its request
    # one Table 2 per dataset, each with its statistics and footer
    assert page.count("<caption>Table 2. Semi-supervised methods</caption>") == 2
    assert page.count("Holm family") >= 2
    # self-contained: no script, nothing fetched
    assert "<script" not in page and "http://" not in page and "https://" not in page
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)
    captions = [alt for alt, _ in images]
    # the forest plot (both datasets in it), and per dataset validation R and the
    # pseudo-label error of proposed (the one Table 2 method that records it)
    forest = [c for c in captions if c.startswith("Gain from the unlabeled images")]
    assert len(forest) == 1
    assert "siteA" not in forest[0]  # datasets are named by file name and fingerprint
    assert len(re.findall(r"manifest\.csv \([0-9a-f]{8}\)", forest[0])) == 2
    assert sum(c.startswith("Validation R over the epochs") for c in captions) == 2
    assert sum(c.startswith("Pseudo-label error over the epochs") for c in captions) == 2
    for _, data in images:  # every figure a PNG that decodes
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            image.verify()
    assert "Every run finished." in page
    assert "git revisions" in page and "grid grid-" in page


def test_html_cells_are_escaped_and_only_marked_cells_bold() -> None:
    frame = pd.DataFrame(
        {"p": ["<0.0001"], "ΔR": [BOLD["html"].format("+0.1000")]},
        index=pd.Index(["<b>Π</b>"], name=""),
    )
    text = html_table(frame, "R < 1 & more", "footer <line>\nsecond")
    assert "<td>&lt;0.0001</td>" in text and "<td><strong>+0.1000</strong></td>" in text
    assert (
        "<th>&lt;b&gt;Π&lt;/b&gt;</th>" in text and "<caption>R &lt; 1 &amp; more</caption>" in text
    )
    assert text.count("<p class='footer'>") == 2 and "footer &lt;line&gt;" in text


def test_files_of_a_manifest_name_its_data() -> None:
    assert file_stem("sota", "synthetic") == "sota"
    assert file_stem("sota", "/data/rsna-boneage-100px/manifest.csv") == "sota-rsna-boneage-100px"
    assert file_stem("labels", "site/knees.csv") == "labels-knees"


def test_a_grid_request_is_read_back_once(tmp_path: Path) -> None:
    request = Request("table2", (), ("tiny",), 2, {"split.redraw": "true"}, (), "smoke")
    request.write(tmp_path, "grid-a")
    request.write(tmp_path, "grid-b")  # the same options again: the same request
    labels = Request("labels", ("baseline",), ("tiny",), 1, {}, (12.0, 20.0), "smoke")
    labels.write(tmp_path, "grid-c")
    assert read_requests(tmp_path) == [request, labels]
    assert read_requests(tmp_path)[1].cells() == labels.cells()


def test_a_store_without_grids_is_told_in_one_line(tmp_path: Path) -> None:
    done = bmdbench("report", "--out", tmp_path / "empty")
    assert done.returncode == 2
    assert done.stderr.startswith("error: no grid has finished runs under")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "empty" / "report.html").exists()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(
    chromium() is None,
    reason="no headless Chromium here (Debian: apt-get install chromium; .ci/run installs it)",
)
def test_a_browser_loads_the_report_without_errors(two_datasets: Path, tmp_path: Path) -> None:
    page = two_datasets / "report.html"
    command = [
        str(chromium()),
        *["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"],
        *["--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"],
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [*command, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console  # the page logs nothing: no error, no blocked resource
    source = page.read_text()
    # the browser built every table and figure of the file: Table 2 on each dataset and the
    # provenance; the forest plot, and validation R and pseudo-label error on each dataset
    assert dom.stdout.count("<table") == source.count("<table") == 3
    assert dom.stdout.count("<img") == source.count("<img") == 5
    assert "<caption>Table 2. Semi-supervised methods</caption>" in dom.stdout
    shot = tmp_path / "first-screen.png"
    done = subprocess.run(
        [*command, "--window-size=1280,900", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(shot) as image:  # something was drawn: not one flat colour
        lo, hi = image.convert("L").getextrema()
        assert hi - lo > 100
