"""Manifests: what a valid one loads into, one test per user error, and `data check`."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.table import Table

from bmdbench.data.check import check_manifest, render_summary, sparkline
from bmdbench.data.manifest import MAX_TARGET, load_manifest, read_manifest
from bmdbench.errors import DataError

SIZE = 4


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("BMDBENCH_CACHE", str(folder))
    return folder


def png(path: Path, value: int = 100, shape: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def manifest(tmp_path: Path, *lines: str, images: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """Write PNGs ``<name>.png`` (value 10, 20, ...) and a manifest of ``lines``."""
    for i, name in enumerate(images):
        png(tmp_path / f"{name}.png", 10 * (i + 1))
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def raises_at(path: Path, line: int | None, match: str, **kwargs: Any) -> DataError:
    """Load ``path``; assert a DataError naming the file (and line) with a fix."""
    with pytest.raises(DataError, match=match) as err:
        load_manifest(path, SIZE, **kwargs)
    where = str(path) if line is None else f"{path} line {line}:"
    assert where in err.value.what
    assert err.value.fix and " — " in str(err.value)
    assert "\n" not in str(err.value)
    return err.value


# --- valid manifests ---------------------------------------------------------------


def test_load_manifest_fields(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "image,target,patient_id,split,sex",
        "a.png,1.5,p1,train,F",
        "b.png,,p2,,M",
        f"{tmp_path / 'c.png'},2.5,p3,unlabeled,F",
    )
    images = load_manifest(path, SIZE)
    assert images.images.shape == (3, SIZE, SIZE) and images.images.dtype == np.uint8
    assert [int(img[0, 0]) for img in images.images] == [10, 20, 30]
    np.testing.assert_array_equal(images.targets, [1.5, np.nan, np.nan])
    np.testing.assert_array_equal(images.truth, [1.5, np.nan, 2.5])
    assert images.patient_ids.tolist() == ["p1", "p2", "p3"]
    assert images.ids.tolist() == ["a.png", "b.png", str(tmp_path / "c.png")]
    assert images.given_split.tolist() == ["train", "", "unlabeled"]
    assert images.source == str(path) and images.unit == ""
    assert images.labeled.tolist() == [True, False, False]


def test_read_manifest_table(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "image,target,patient_id,roi_x0,roi_y0,roi_x1,roi_y1",
        "a.png,1,p1,0,1,4,5",
        "",
        "sub/../b.png,2,p2,,,,",
    )
    rows = read_manifest(path)
    assert rows["image"].tolist() == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert rows["id"].tolist() == ["a.png", "sub/../b.png"]
    assert rows["line"].tolist() == [2, 4]  # the blank line 3 is counted
    assert rows.loc[0, ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]].tolist() == [0, 1, 4, 5]
    assert math.isnan(rows.loc[1, "roi_x0"]) and rows["split"].tolist() == ["", ""]
    assert rows["unit"].tolist() == ["", ""]


def test_unit_column(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "image,target,patient_id,unit",
        "a.png,0.8,p1,g/cm²",
        "b.png,,p2,",  # an unlabeled row may leave it empty
        "c.png,0.9,p3, g/cm² ",
    )
    assert load_manifest(path, SIZE).unit == "g/cm²"
    assert check_manifest(path, image_size=SIZE).unit == "g/cm²"
    extra = tmp_path / "extra.csv"  # a CSV of unlabeled images: its unit column is ignored
    extra.write_text(f"image,unit\n{png(tmp_path / 'd.png', 40)},mg\n")
    assert load_manifest(path, SIZE, unlabeled=extra).unit == "g/cm²"


def test_roi_is_cropped(tmp_path: Path) -> None:
    pixels = np.zeros((8, 8), np.uint8)
    pixels[2:6, 2:6] = 77
    Image.fromarray(pixels).save(tmp_path / "roi.png")
    path = manifest(
        tmp_path, "image,target,patient_id,roi_x0,roi_y0,roi_x1,roi_y1", "roi.png,1,p,2,2,6,6"
    )
    assert (load_manifest(path, SIZE).images == 77).all()


def test_fingerprint_follows_content_and_labels(tmp_path: Path) -> None:
    header = "image,target,patient_id"
    path = manifest(tmp_path, header, "a.png,1,p1", "b.png,2,p2")
    first = load_manifest(path, SIZE).fingerprint
    assert load_manifest(path, SIZE).fingerprint == first
    path.write_text(f"{header}\na.png,1,p1\nb.png,3,p2\n")
    assert load_manifest(path, SIZE).fingerprint != first
    path.write_text(f"{header}\na.png,1,p1\nb.png,2,p2\n")
    os.utime(png(tmp_path / "b.png", 21), ns=(2 * 10**18, 2 * 10**18))  # new mtime for sure
    assert load_manifest(path, SIZE).fingerprint != first


def test_unlabeled_folder_is_appended(tmp_path: Path) -> None:
    path = manifest(tmp_path, "image,target,patient_id", "a.png,1,p1")
    png(tmp_path / "more" / "z.png", 5)
    png(tmp_path / "more" / "deep" / "y.tif", 6)
    png(tmp_path / "more" / ".hidden.png", 7)
    (tmp_path / "more" / "notes.txt").write_text("not an image")
    images = load_manifest(path, SIZE, unlabeled=tmp_path / "more", require_unlabeled=True)
    assert images.ids.tolist() == ["a.png", "deep/y.tif", "z.png"]
    assert images.patient_ids.tolist() == ["p1", "y", "z"]
    assert images.given_split.tolist() == ["", "unlabeled", "unlabeled"]
    assert np.isnan(images.targets[1:]).all() and np.isnan(images.truth[1:]).all()


def test_unlabeled_images_from_csv(tmp_path: Path) -> None:
    extra = manifest(tmp_path, "image,target,split", "a.png,3,train", "b.png,,")
    labeled = extra.with_name("labeled.csv")
    labeled.write_text("image,target,patient_id\nc.png,1,p1\n")
    images = load_manifest(labeled, SIZE, unlabeled=extra)
    assert images.patient_ids.tolist() == ["p1", "a", "b"]  # the CSV's ids: the file stems
    assert images.given_split.tolist() == ["", "unlabeled", "unlabeled"]  # its split ignored
    # its targets too: neither a target nor a truth
    assert np.isnan(images.targets[1:]).all() and np.isnan(images.truth[1:]).all()


def test_check_manifest_summary(tmp_path: Path) -> None:
    png(tmp_path / "big.png", 1, shape=(10, 12))
    path = manifest(
        tmp_path,
        "image,target,patient_id,split",
        "a.png,1,p1,train",
        "b.png,3,p1,train",
        "c.png,,p2,",
        "big.png,2,p3,test",
    )
    summary = check_manifest(path, image_size=SIZE)
    assert (summary.images, summary.labeled, summary.unlabeled, summary.patients) == (4, 3, 1, 3)
    assert summary.splits == {"train": 2, "": 1, "test": 1}
    assert summary.targets is not None
    assert (summary.targets.min, summary.targets.max, summary.targets.mean) == (1, 3, 2)
    assert summary.targets.std == pytest.approx(1.0) and sum(summary.targets.histogram) == 3
    assert summary.sizes == (("8×8", 3), ("12×10", 1))
    assert summary.bit_depths == {8: 4} and summary.formats == {"PNG": 4}
    assert isinstance(render_summary(summary), Table)
    assert sparkline((0, 1, 8)) == " ▁█"


def test_check_manifest_raises_like_load(tmp_path: Path) -> None:
    path = manifest(tmp_path, "image,target,patient_id", "a.png,x,p1")
    with pytest.raises(DataError) as checked:
        check_manifest(path, image_size=SIZE)
    with pytest.raises(DataError) as loaded:
        load_manifest(path, SIZE)
    assert str(checked.value) == str(loaded.value)


# --- one test per user error ---------------------------------------------------------


def test_missing_manifest(tmp_path: Path) -> None:
    raises_at(tmp_path / "nope.csv", None, "not found")
    raises_at(tmp_path, None, "is a folder")


def test_unparsable_manifest(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('image,target,patient_id\n"a.png,1,p1\n')
    raises_at(path, None, "cannot read .* as CSV")
    path.write_bytes(b"image,target\n\xff\xfe\x00bad")
    raises_at(path, None, "cannot read .* as CSV")
    path.write_text("")
    raises_at(path, None, "is empty")


def test_missing_required_column(tmp_path: Path) -> None:
    path = manifest(tmp_path, "image,target,patient", "a.png,1,p1")
    err = raises_at(path, None, "lacks column")
    assert "patient_id" in err.what and "found: image, target, patient" in err.what


def test_partial_roi_columns(tmp_path: Path) -> None:
    path = manifest(tmp_path, "image,target,patient_id,roi_x0,roi_y0", "a.png,1,p1,0,0")
    assert "roi_x1" in raises_at(path, None, "ROI column").what


def test_empty_manifest(tmp_path: Path) -> None:
    raises_at(manifest(tmp_path, "image,target,patient_id", "", ""), None, "lists no images")


def test_missing_image_file(tmp_path: Path) -> None:
    path = manifest(tmp_path, "image,target,patient_id", "a.png,1,p1", "gone.png,2,p2")
    raises_at(path, 3, "'gone.png' not found")


def test_empty_image_and_patient_cells(tmp_path: Path) -> None:
    raises_at(manifest(tmp_path, "image,target,patient_id", ",1,p1"), 2, "image cell is empty")
    raises_at(manifest(tmp_path, "image,target,patient_id", "a.png,1, "), 2, "patient_id")


def test_corrupt_image_file(tmp_path: Path) -> None:
    path = manifest(tmp_path, "image,target,patient_id", "a.png,1,p1", "b.png,2,p2")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    err = raises_at(path, 3, "cannot decode")
    assert str(tmp_path / "b.png") in err.what


@pytest.mark.parametrize("value", ["abc", "nan", "NaN", "inf", "-inf", "1,5"])
def test_bad_target(tmp_path: Path, value: str) -> None:
    path = manifest(tmp_path, "image,target,patient_id", "a.png,1,p1", f'b.png,"{value}",p2')
    err = raises_at(path, 3, "target .* is not a finite number")
    assert "empty" in err.fix


@pytest.mark.parametrize("value", ["1e300", "-1e300", "3.5e38", "-2e6", "1000001"])
def test_target_out_of_range(tmp_path: Path, value: str) -> None:
    path = manifest(tmp_path, "image,target,patient_id", "a.png,1,p1", f"b.png,{value},p2")
    err = raises_at(path, 3, f"target '{value}' is out of range")
    assert "unit" in err.fix


def test_accepted_targets_fit_float32() -> None:
    """What passes the range check cannot overflow on the device, squared or not."""
    assert np.isfinite(np.float32(MAX_TARGET) ** 2)


def test_duplicate_image(tmp_path: Path) -> None:
    path = manifest(tmp_path, "image,target,patient_id", "a.png,1,p1", "b.png,2,p2", "./a.png,3,p3")
    raises_at(path, 4, "listed again .*first on line 2")


def test_patient_in_two_splits(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "image,target,patient_id,split",
        "a.png,1,p1,train",
        "b.png,2,p1,",
        "c.png,3,p1,test",
    )
    raises_at(path, 4, "patient 'p1' is in split 'test' here but in 'train' on line 2")


def test_units_that_differ(tmp_path: Path) -> None:
    path = manifest(
        tmp_path, "image,target,patient_id,unit", "a.png,0.8,p1,g/cm²", "b.png,0.9,p2,g/cm2"
    )
    err = raises_at(path, 3, "unit 'g/cm2' differs from 'g/cm²' on line 2")
    assert "same unit" in err.fix


def test_unknown_split(tmp_path: Path) -> None:
    path = manifest(tmp_path, "image,target,patient_id,split", "a.png,1,p1,Train", "b.png,2,p2,dev")
    assert "val" in raises_at(path, 3, "split 'dev' is not one of").what


@pytest.mark.parametrize(
    ("roi", "match"),
    [
        ("0,0,,4", "incomplete: roi_x1 empty"),
        ("0,zero,4,4", "roi_y0 'zero' is not a finite number"),
        ("4,0,4,4", "empty or reversed"),
        ("0,5,4,2", "empty or reversed"),
        ("0,0,9,4", "outside image"),
    ],
)
def test_bad_roi(tmp_path: Path, roi: str, match: str) -> None:
    path = manifest(
        tmp_path,
        "image,target,patient_id,roi_x0,roi_y0,roi_x1,roi_y1",
        "a.png,1,p1,,,,",
        f"b.png,2,p2,{roi}",
    )
    assert "roi" in raises_at(path, 3, match).fix


def test_require_unlabeled(tmp_path: Path) -> None:
    path = manifest(tmp_path, "image,target,patient_id", "a.png,1,p1")
    raises_at(path, None, "no unlabeled images", require_unlabeled=True)


def test_image_in_manifest_and_unlabeled_source(tmp_path: Path) -> None:
    path = manifest(tmp_path, "image,target,patient_id", "a.png,1,p1")
    extra = tmp_path / "extra.csv"
    extra.write_text(f"image\n{tmp_path / 'b.png'}\n{tmp_path / 'a.png'}\n")
    with pytest.raises(DataError, match="also in the manifest") as err:
        load_manifest(path, SIZE, unlabeled=extra)
    assert f"{extra} line 3" in err.value.what and f"{path} line 2" in err.value.what


def test_bad_unlabeled_sources(tmp_path: Path) -> None:
    path = manifest(tmp_path, "image,target,patient_id", "a.png,1,p1")
    with pytest.raises(DataError, match="not found"):
        load_manifest(path, SIZE, unlabeled=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images in folder"):
        load_manifest(path, SIZE, unlabeled=tmp_path / "empty")


def test_failed_validation_writes_no_cache(tmp_path: Path, cache_dir: Path) -> None:
    path = manifest(tmp_path, "image,target,patient_id", "a.png,1,p1", "b.png,2,p2")
    (tmp_path / "b.png").write_bytes(b"broken")
    with pytest.raises(DataError):
        load_manifest(path, SIZE)
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
