"""No validation or test image, nor patient, in the unlabeled pool (make_split's check)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bmdbench.config import SplitConfig
from bmdbench.data.manifest import load_manifest
from bmdbench.data.splits import make_split
from bmdbench.errors import BmdWarning, DataError

SIZE = 4
TEST_LINE = 18  # manifest line of test0.png: header, 12 train and 4 val rows before it


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("BMDBENCH_CACHE", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # a long list's file goes here
    return folder


def png(path: Path, value: int) -> None:
    """An image of its own content (the manifest's images have values 1, 2, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def overlap_error(path: Path, unlabeled: Path | None = None) -> DataError:
    """The one-line error of splitting the manifest at ``path``."""
    images = load_manifest(path, SIZE, unlabeled=unlabeled)
    with pytest.raises(DataError, match="the unlabeled pool holds") as err:
        make_split(images, SplitConfig())
    assert "--allow-overlap" in err.value.fix and "\n" not in str(err.value)
    return err.value


def test_unlabeled_rows_of_a_test_patient(tmp_path, manifest_factory):
    path = manifest_factory(tmp_path, ["later.png,,test1,", "again.png,,test2,test"])
    err = overlap_error(path)
    assert err.what.startswith("the unlabeled pool holds 2 images of validation")
    assert f"{path} line 22: later.png (patient 'test1' is in test)" in err.what
    assert f"{path} line 23: again.png (patient 'test2' is in test)" in err.what


def test_unlabeled_images_of_a_validation_patient(tmp_path, manifest_factory):
    path = manifest_factory(tmp_path)
    extra = tmp_path / "extra.csv"
    extra.write_text("image,patient_id\nother.png,u1\nfollow_up.png,val3\n")
    png(tmp_path / "other.png", 200)
    png(tmp_path / "follow_up.png", 201)
    err = overlap_error(path, extra)
    assert err.what.startswith("the unlabeled pool holds 1 image of")
    assert f"{extra} line 3: follow_up.png (patient 'val3' is in val)" in err.what


def test_a_test_image_listed_again_as_unlabeled(tmp_path, manifest_factory):
    path = manifest_factory(tmp_path)
    extra = tmp_path / "extra.csv"
    extra.write_text(f"image\n{tmp_path / 'test0.png'}\n")  # the same path: listed twice
    with pytest.raises(DataError, match="is also in the manifest") as err:
        load_manifest(path, SIZE, unlabeled=extra)
    assert f"{extra} line 2" in err.value.what
    shutil.copy(tmp_path / "test0.png", tmp_path / "copy.png")
    os.symlink(tmp_path / "test3.png", tmp_path / "link.png")
    path = manifest_factory(tmp_path, ["copy.png,,u1,", "link.png,,u2,unlabeled"])
    err = overlap_error(path)
    content = "(the content of test image {}, {} line {})"
    assert f"line 22: copy.png {content.format('test0.png', path, TEST_LINE)}" in err.what
    assert f"line 23: link.png {content.format('test3.png', path, TEST_LINE + 3)}" in err.what


def test_a_folder_of_unlabeled_images_holding_a_test_image(tmp_path, manifest_factory):
    path = manifest_factory(tmp_path / "data")
    folder = tmp_path / "unlabeled"
    png(folder / "test1.png", 200)
    png(folder / "sub" / "scan2.png", 201)
    shutil.copy(tmp_path / "data" / "test2.png", folder / "scan.png")
    err = overlap_error(path, folder)
    # a folder gives no patient ids: its file stems (test1) are not compared, its contents are
    assert err.what.startswith("the unlabeled pool holds 1 image of")
    assert f"{folder} (unlabeled images): scan.png (the content of test image test2.png" in err.what


def test_allow_overlap_drops_them_with_a_warning(tmp_path, manifest_factory):
    shutil.copy(manifest_factory(tmp_path).with_name("val0.png"), tmp_path / "copy.png")
    rows = [f"u{j}.png,,{patient}," for j, patient in enumerate(["test0", "u"] * 3)]
    path = manifest_factory(tmp_path, [*rows, "copy.png,,u9,"])
    images = load_manifest(path, SIZE)
    with pytest.raises(DataError, match=r"4 images of .*; and 1 more \(all 4: .*\.txt\)"):
        make_split(images, SplitConfig())
    with pytest.warns(BmdWarning, match=r"dropped from the unlabeled pool \(--allow-overlap\): 4"):
        split = make_split(images, SplitConfig(allow_overlap=True))
    assert images.ids[split.unlabeled].tolist() == ["u1.png", "u3.png", "u5.png"]
    assert len(split.test) == 4 and len(split.val) == 4  # val and test keep their images


def test_label_budget_hides_training_patients_only(imageset_factory):
    """--n-labeled turns training images into unlabeled ones, never val or test patients'."""
    imageset = imageset_factory()
    patients = [f"p{i // 3}" if i < 40 else f"u{i}" for i in range(56)]  # 40 labeled images
    data = dataclasses.replace(imageset, patient_ids=np.array(patients))
    for seed in range(4):
        cfg = SplitConfig(train=9, val=9, test=9, seed=seed, redraw=seed % 2 == 1)
        split = make_split(data, cfg, seed=seed)
        full = make_split(data, dataclasses.replace(cfg, train=None), seed=seed)
        hidden = np.setdiff1d(split.unlabeled, full.unlabeled)
        assert np.array_equal(np.union1d(split.train, hidden), full.train)
        held_out = data.patient_ids[np.concatenate([split.val, split.test])]
        assert not np.isin(data.patient_ids[split.unlabeled], held_out).any()


def test_a_random_split_checks_the_patients_it_drew(imageset_factory):
    """Without a split column the test patients are drawn: whichever they are, their
    unlabeled images are found (here every patient has one)."""
    imageset = imageset_factory(n_labeled=40, n_unlabeled=40)
    patients = np.array([f"p{i % 40}" for i in range(80)])
    data = dataclasses.replace(imageset, patient_ids=patients)
    for seed in range(3):
        with pytest.raises(DataError, match=r"holds 20 images of .*is in (val|test)"):
            make_split(data, SplitConfig(val=10, test=10, seed=seed))
    with pytest.warns(BmdWarning, match="--allow-overlap.: 20 images"):
        split = make_split(data, SplitConfig(val=10, test=10, allow_overlap=True))
    assert set(patients[split.unlabeled]) == set(patients[split.train])
