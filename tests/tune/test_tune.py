"""Searches: each method's declared space, a continued study, pruning, plots and tables."""

from __future__ import annotations

import pytest

from bmdbench import store
from bmdbench.data import sources
from bmdbench.errors import ConfigError, Pruned, RunFailed
from bmdbench.runner import execute
from bmdbench.spec import RunSpec, resolve
from bmdbench.tune import LR, Search, open_study, plot_study, run_search, search_space, trials_frame

SMALL = (("split.val", "8"), ("split.test", "8"), ("stage1.epochs", "3"))


@pytest.fixture(autouse=True)
def tiny_data(monkeypatch, imageset_factory):
    monkeypatch.setattr(sources, "load_images", lambda cfg: imageset_factory())


def test_search_spaces_come_from_the_methods():
    assert set(search_space("atl", "margin")) == {"atl.margin"}
    assert search_space("atl", "margin")["atl.margin"].low <= 0.1
    assert search_space("atl", "margin")["atl.margin"].high >= 1.0  # Table 3's range and more
    assert set(search_space("proposed", "all")) == {
        "proposed.margin", "proposed.weight", "proposed.consistency_weight", "stage2.lr",
    }  # fmt: skip
    assert search_space("baseline", "lr") == {"stage1.lr": LR}
    assert set(search_space("mean_teacher", "ema")) == {"mean_teacher.ema_decay"}
    with pytest.raises(ConfigError, match="pick --method among .*atl"):
        search_space("baseline", "margin")
    with pytest.raises(ConfigError, match="unknown search"):
        search_space("atl", "momentum")


def test_study_continues_and_links_its_runs(tmp_path):
    search = Search("margin", RunSpec("atl", "tiny", "smoke", device="cpu", settings=SMALL))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    quiet = __import__("rich.console").console.Console(quiet=True)
    study = open_study(search, url, search.study_name())
    run_search(search, study, 2, None, tmp_path, quiet)
    again = open_study(search, url, search.study_name())  # the same command, run again
    run_search(search, again, 2, None, tmp_path, quiet)
    frame = trials_frame(again)
    assert list(frame.index) == [0, 1, 2, 3]
    assert frame["atl.margin"].nunique() == 4  # a continued study does not repeat its trials
    for number, row in frame.iterrows():
        record = store.read_record(store.runs_dir(tmp_path) / row["run"])
        assert record.study == {"name": search.study_name(), "trial": number}
        assert record.config["hparams"]["margin"] == pytest.approx(row["atl.margin"])
        assert record.status == {"complete": "ok", "pruned": "pruned"}[row["state"]]
        if row["state"] == "complete":
            assert record.metrics["val"]["pearson_r"] == pytest.approx(row["val R"])
    written = plot_study(again, tmp_path / "plots")
    assert {p.name for p in written} == {
        "history.png",
        "history.pdf",
        "objective.png",
        "objective.pdf",
    }


def test_a_stopped_run_is_recorded_as_pruned(tmp_path):
    cfg = resolve("atl", "tiny", "smoke", dict(SMALL), device="cpu")
    seen = []

    def stop_after_two(epoch, val):
        seen.append((epoch, val["pearson_r"]))
        if epoch == 2:
            raise Pruned("pruned at epoch 2")

    with pytest.raises(RunFailed) as failed:
        execute(cfg, tmp_path, show_progress=False, on_epoch=stop_after_two)
    assert failed.value.status == "pruned" and [e for e, _ in seen] == [1, 2]
    record = store.read_record(failed.value.run_dir)
    assert record.status == "pruned" and "epoch 2" in record.error


def test_equal_budget_tunes_each_method_alike_then_compares_on_test(tmp_path):
    from rich.console import Console

    from bmdbench.tune import compare_tuned, equal_budget_best

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    quiet = Console(quiet=True)
    searches = [
        Search("margin", RunSpec(m, "tiny", "smoke", device="cpu", settings=SMALL))
        for m in ("atl", "triplet")
    ]
    best = equal_budget_best(searches, 2, url, tmp_path, quiet)
    assert set(best) == {"atl", "triplet"} and set(best["atl"]) == {"atl.margin"}
    for search in searches:  # exactly the budget, also when asked again
        assert len(open_study(search, url, search.study_name()).trials) == 2
    assert equal_budget_best(searches, 2, url, tmp_path, quiet) == best
    frame = compare_tuned(best, searches[0], 2, url, tmp_path, quiet)
    assert list(frame.index) == ["atl", "triplet"] and (frame["seeds"] == "2").all()
    assert frame.loc["atl", "ΔR vs atl"] == "reference"
    assert frame.loc["triplet", "ΔR vs atl"].startswith(("+", "-"))
    assert frame.loc["triplet", "p vs atl (Holm)"] == "—"  # two seeds: no test
