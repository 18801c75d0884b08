import dataclasses

import numpy as np
import pytest

from bmdbench.config import SplitConfig
from bmdbench.data.splits import make_split
from bmdbench.errors import DataError


def with_patients(imageset, patients):
    return dataclasses.replace(imageset, patient_ids=np.asarray(patients))


def test_counts_exact_grouped_and_seeded(imageset):
    patients = [f"p{i // 2}" for i in range(len(imageset))]  # two images per patient
    data = with_patients(imageset, patients)
    split = make_split(data, SplitConfig(val=8, test=10, seed=1))
    assert (len(split.val), len(split.test), len(split.train)) == (8, 10, 22)
    assert len(split.unlabeled) == 16
    parts = [set(data.patient_ids[getattr(split, p)]) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    again = make_split(data, SplitConfig(val=8, test=10, seed=1))
    assert split.fingerprint == again.fingerprint
    other = make_split(data, SplitConfig(val=8, test=10, seed=2))
    assert other.fingerprint != split.fingerprint


def test_fractions(imageset):
    split = make_split(imageset, SplitConfig(val=0.25, test=0.25))
    assert (len(split.val), len(split.test), len(split.train)) == (10, 10, 20)


def test_label_budget_hides_the_rest(imageset):
    split = make_split(imageset, SplitConfig(train=5, val=10, test=10))
    assert len(split.train) == 5
    assert len(split.unlabeled) == 16 + 15
    assert (
        split.labeled_fingerprint
        != make_split(imageset, SplitConfig(val=10, test=10)).labeled_fingerprint
    )


def test_split_too_small(imageset):
    with pytest.raises(DataError, match="lower --n-val/--n-test"):
        make_split(imageset, SplitConfig(val=20, test=20))
    with pytest.raises(DataError, match="lower --n-labeled"):
        make_split(imageset, SplitConfig(train=30, val=10, test=10))


def test_split_column(imageset):
    given = np.array(["train"] * 20 + ["val"] * 10 + ["test"] * 10 + ["unlabeled"] * 16)
    split = make_split(dataclasses.replace(imageset, given_split=given), SplitConfig())
    assert list(split.val) == list(range(20, 30)) and list(split.test) == list(range(30, 40))


def test_patient_in_two_given_splits(imageset):
    given = np.array(["train"] * 20 + ["val"] * 10 + ["test"] * 10 + ["unlabeled"] * 16)
    patients = imageset.patient_ids.copy()
    patients[25] = patients[0]
    data = dataclasses.replace(imageset, given_split=given, patient_ids=patients)
    with pytest.raises(DataError, match="patient p0 is in both train and val"):
        make_split(data, SplitConfig())


def test_redraw_varies_the_labeled_subset_not_the_test_set(imageset):
    def parts(cfg, seed):
        split = make_split(imageset, cfg, seed=seed)
        return {name: list(getattr(split, name)) for name in ("train", "val", "test")}

    fixed = SplitConfig(train=10, val=8, test=10, seed=1)
    assert parts(fixed, 0) == parts(fixed, 1)  # without redraw the training seed is ignored
    redrawn = dataclasses.replace(fixed, redraw=True)
    a, b = parts(redrawn, 0), parts(redrawn, 1)
    assert a["test"] == b["test"] == parts(fixed, 0)["test"]
    assert a["train"] != b["train"] and a["val"] != b["val"]
    assert a == parts(redrawn, 0)  # the same seed draws the same subset again
