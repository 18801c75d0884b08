"""Optuna searches over a method's hyperparameters (``bmdbench tune``).

Each method declares its search space next to its Params dataclass
(``Method.search_space``), and the kinds of its ranges are the searches this module
knows (:func:`kinds`); the stage learning rate is searchable for every method. The
objective is the validation Pearson R of a normal run (the test split is never looked at
during a search); each epoch's validation R is reported so that the median pruner stops
hopeless trials.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from rich.console import Console
from rich.table import Table

from bmdbench import store
from bmdbench.config import Range, stable_hash
from bmdbench.dispatch import DB_NAME, default_storage, open_storage, quiet_libraries, shown
from bmdbench.errors import ConfigError, Pruned, RunFailed
from bmdbench.grid import make_plan, print_plan, run_grid
from bmdbench.options import check_positive
from bmdbench.record import RunRecord
from bmdbench.rendering import format_cells, markdown_table, write_frame
from bmdbench.results import cell_runs, load_runs
from bmdbench.spec import RunSpec
from bmdbench.statistics import table_stats

LR = Range("lr", 1e-6, 1e-3, log=True)  # the learning rate of the method's own stage
ALL = "all"  # the search of every range of the method and its learning rate
PRUNER_WARMUP = 0.5  # fraction of its epochs a trial runs before the median pruner may stop it
# (early validation R is noise: under quick it stays near 0 for the first 3–4 epochs)


def _methods() -> Any:
    """The method registry (imported here, when a search is named: it imports torch)."""
    from bmdbench.methods import METHODS

    return METHODS


def kinds() -> list[str]:
    """The searches ``bmdbench tune KIND`` knows: each kind a method's range declares, in
    the methods' order, then the learning rate and all."""
    methods = _methods()
    declared = [r.kind for name in methods for r in methods.get(name).search_space.values()]
    return list(dict.fromkeys([*declared, LR.kind, ALL]))


def _check_kind(kind: str) -> None:
    if kind not in (known := kinds()):
        raise ConfigError(f"unknown search {kind!r}", f"use one of: {', '.join(known)}")


def default_method(kind: str) -> str:
    """The method ``bmdbench tune KIND`` tunes without ``--method``: the first that declares
    ``kind`` its default (``Method.tune_default``)."""
    _check_kind(kind)
    methods = _methods()
    claimed = [name for name in methods if kind in methods.get(name).tune_default]
    if not claimed:
        raise ConfigError(f"no method is the default of {kind} searches", "give --method NAME")
    return claimed[0]


def search_space(method: str, kind: str) -> dict[str, Range]:
    """Dotted ``--set`` keys → ranges that ``kind`` searches for ``method`` (the method's
    ``search_space`` and its stage's learning rate)."""
    _check_kind(kind)
    methods = _methods()
    spec = methods.get(method)
    space = {f"{method}.{name}": r for name, r in spec.search_space.items()}
    space[f"stage{spec.stage}.lr"] = LR
    chosen = space if kind == ALL else {k: r for k, r in space.items() if r.kind == kind}
    if not chosen:
        has = [
            name
            for name in methods
            if any(r.kind == kind for r in methods.get(name).search_space.values())
        ]
        raise ConfigError(
            f"{method} has no {kind} hyperparameter to search",
            f"pick --method among {', '.join(has)}",
        )
    return chosen


@dataclass(frozen=True)
class Search:
    """What one study searches (``kind``), from which run (``spec``: the trials add their
    values to its settings); its default study name derives from both."""

    kind: str
    spec: RunSpec

    @property
    def method(self) -> str:
        return self.spec.method

    def trial(self, params: Mapping[str, Any]) -> RunSpec:
        """The run of a trial with ``params`` (dotted keys)."""
        return self.spec.but(settings=params)

    def study_name(self) -> str:
        """``tune-<kind>-<method>-<backbone>-<preset>-<hash>``; the hash is of the kind and
        the spec's identity (:attr:`RunSpec.key`), so the same search continues one study."""
        s = self.spec
        digest = stable_hash([self.kind, s.key])[:8]
        return f"tune-{self.kind}-{s.method}-{s.backbone}-{s.preset}-{digest}"


def open_study(search: Search, storage: str, name: str) -> optuna.Study:
    """Create or continue the study; a trial whose worker died is retried (twice at most)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = open_storage(
            storage, on_stale=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
        )
        study = optuna.create_study(
            storage=rdb,
            study_name=name,
            load_if_exists=True,
            direction="maximize",
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=2, n_warmup_steps=int(PRUNER_WARMUP * _epochs(search))
            ),
        )
    # seeded by the history, so that a continued study does not repeat its first trials
    study.sampler = optuna.samplers.TPESampler(seed=search.spec.seed + len(study.trials))
    study.set_user_attr("search", asdict(search))
    return study


def _epochs(search: Search) -> int:
    """Epochs of the stage the search trains (the method's own stage)."""
    cfg = search.spec.config
    return (cfg.stage1 if cfg.parent is None else cfg.stage2).epochs


def run_tune(
    kind: str,
    base: RunSpec,
    out: Path,
    console: Console,
    *,
    method: str | None = None,
    n_trials: int = 20,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    equal_trials: int | None = None,
    methods: Sequence[str] = (),
    seeds: int = 3,
) -> list[Path]:
    """``bmdbench tune KIND``: add ``n_trials`` trials (or ``timeout`` seconds' worth) to the
    study of ``method``'s ``kind`` search from ``base`` (its method replaced), print them and
    the best one, and return the trials' tables; or, with ``equal_trials``, tune each of
    ``methods`` with that many trials and compare them on test over ``seeds`` seeds
    (:func:`equal_budget`), and return that table. Every option and every search's run is
    checked before the first trial."""
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout {timeout} is not a positive time", "give seconds > 0")
    store.check_out(out, "runs", "studies", "tables")
    if equal_trials is not None:
        if equal_trials < 1 or not methods:
            raise ConfigError(
                "--equal-budget needs a positive trial count and --methods",
                "e.g. bmdbench tune all --equal-budget 10 --methods A,B (names: bmdbench list methods)",
            )
        check_positive("--seeds", seeds)
    elif methods:
        raise ConfigError("--methods goes with --equal-budget", "use --method NAME for one search")
    else:
        check_positive("--n-trials", n_trials)
    names = methods if equal_trials is not None else [method or default_method(kind)]
    searches = [_checked_search(kind, replace(base, method=name), out) for name in names]
    url = storage or default_storage(out)
    if equal_trials is not None:
        return [equal_budget(kind, searches, equal_trials, seeds, url, out, console)]
    (search,) = searches
    opened = open_study(search, url, study or search.study_name())
    console.print(
        f"study [bold]{opened.study_name}[/] in {shown(url)}: {len(opened.trials)} trials so far; "
        f"searching {', '.join(search_space(search.method, search.kind))}"
    )
    run_search(search, opened, n_trials, timeout, out, console)
    summarise(opened, out, console)
    return write_trials(opened, ("md", "latex", "csv"), out)


def _checked_search(kind: str, spec: RunSpec, out: Path) -> Search:
    """The search of ``kind`` from ``spec``, refused now if it has nothing to search or its
    run could not start (:func:`bmdbench.runner.check`)."""
    search = Search(kind, spec)
    search_space(search.method, search.kind)
    from bmdbench.runner import check  # torch: after an unknown search kind is told

    check(search.spec.config, out)
    return search


def run_search(
    search: Search,
    study: optuna.Study,
    n_trials: int | None,
    timeout: float | None,
    out: Path,
    console: Console,
) -> None:
    """Run ``n_trials`` more trials (or until ``timeout`` seconds) of ``search`` in ``study``."""
    from bmdbench.runner import execute

    space = search_space(search.method, search.kind)

    def objective(trial: optuna.Trial) -> float:
        params = {k: trial.suggest_float(k, r.low, r.high, log=r.log) for k, r in space.items()}
        cfg = search.trial(params).config

        def report(epoch: int, val: dict[str, float]) -> None:
            trial.report(val["pearson_r"], epoch)
            if trial.should_prune():
                raise Pruned(f"pruned at epoch {epoch} (validation R {val['pearson_r']:.4f})")

        try:
            outcome = execute(
                cfg,
                out,
                Console(quiet=True),
                show_progress=False,
                reuse=True,
                on_epoch=report,
                study={"name": study.study_name, "trial": trial.number},
            )
        except RunFailed as exc:
            trial.set_user_attr("run", exc.run_dir.name)
            trial.set_user_attr("status", exc.status)
            console.print(f"trial {trial.number}: {_params(params)} → {exc.status}")
            if exc.status == "pruned":
                raise optuna.TrialPruned() from None
            raise
        trial.set_user_attr("run", outcome.run_dir.name)
        trial.set_user_attr("status", "ok")
        value = float(outcome.record.metrics["val"]["pearson_r"])
        console.print(f"trial {trial.number}: {_params(params)} → validation R {value:.4f}")
        return value

    # each trial's outcome is printed above: optuna's log of a failed trial (a traceback) is not
    with quiet_libraries(hide_warnings=False):
        study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(RunFailed,))


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in params.items())


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, searched parameters, validation R, run."""
    rows = []
    for t in study.trials:
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                **{k: v for k, v in t.params.items()},
                "val R": t.value if t.value is not None else float("nan"),
                "run": t.user_attrs.get("run", ""),
            }
        )
    return pd.DataFrame(rows).set_index("trial")


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return max(complete, key=lambda t: t.value or float("-inf")) if complete else None


def summarise(study: optuna.Study, out: Path, console: Console) -> RunRecord | None:
    """Print the trials and the best one (with its test metrics, read once, now); write the
    plots next to the study. Returns the best trial's run record."""
    frame = trials_frame(study)
    table = Table(title=f"study {study.study_name}: {len(frame)} trials")
    for column in ["trial", *frame.columns]:
        table.add_column(column)
    for number, row in frame.iterrows():
        table.add_row(str(number), *(_cell(v) for v in row))
    console.print(table)
    best = best_trial(study)
    if best is None:
        console.print("no trial has finished yet")
        return None
    record = store.read_record(store.runs_dir(out) / best.user_attrs["run"])
    assert record is not None
    test = record.metrics["test"]
    console.print(
        f"best trial {best.number}: {_params(best.params)}; validation R {best.value:.4f}; "
        f"test R {test['pearson_r']:.4f}, RMSE {test['rmse']:.4f} ({record.data.unit})"
    )
    for path in plot_study(study, study_dir(out, study.study_name)):
        console.print(f"wrote {path}")
    return record


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def study_dir(out: Path, name: str) -> Path:
    return out / "studies" / name


def plot_study(study: optuna.Study, folder: Path) -> list[Path]:
    """The optimisation history and the objective against each searched parameter."""
    import matplotlib
    import matplotlib.figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, draw in (
            ("history", ovm.plot_optimization_history),
            ("objective", ovm.plot_slice),
        ):
            axes = draw(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure(root=True)
            assert isinstance(figure, matplotlib.figure.Figure)
            figure.set_size_inches(max(5.0, 4.0 * len(study.best_params)), 4.0)
            for ext in ("png", "pdf"):
                path = folder / f"{name}.{ext}"
                figure.savefig(path, dpi=150, bbox_inches="tight")
                written.append(path)
            plt.close(figure)
    return written


def equal_budget_best(
    searches: Sequence[Search], n_trials: int, storage: str, out: Path, console: Console
) -> dict[str, dict[str, str]]:
    """Tune every method with exactly ``n_trials`` finished trials; their best --set values."""
    best: dict[str, dict[str, str]] = {}
    for search in searches:
        study = open_study(search, storage, search.study_name())
        done = sum(1 for t in study.trials if t.state.is_finished())
        console.print(f"[bold]{search.method}[/]: {done} of {n_trials} trials done")
        if done < n_trials:
            run_search(search, study, n_trials - done, None, out, console)
        trial = best_trial(study)
        if trial is None:
            raise ConfigError(
                f"no trial of {search.method} finished",
                "look at the failed runs' records, then run the command again",
            )
        best[search.method] = {k: repr(v) for k, v in trial.params.items()}
    return best


def compare_tuned(
    best: dict[str, dict[str, str]],
    base: Search,
    seeds: int,
    storage: str,
    out: Path,
    console: Console,
) -> pd.DataFrame:
    """Run each method with its tuned settings over ``seeds`` seeds (a grid) and compare them
    on test as a paper table does (:func:`bmdbench.statistics.table_stats`): mean ± SD,
    two-level CI, ΔR against the first method with Holm-adjusted p."""
    cells = {
        m: [base.spec.but(method=m, seed=s, settings=p) for s in range(seeds)]
        for m, p in best.items()
    }
    plan = make_plan([c for group in cells.values() for c in group], out)
    print_plan(console, plan)
    run_grid(plan, out, storage, 1, False, console)
    runs = load_runs(out)
    frames = {method: cell_runs(runs, [group[0].signature]) for method, group in cells.items()}
    frames = {method: frame for method, frame in frames.items() if not frame.empty}
    if not frames:
        return pd.DataFrame()
    tidy = table_stats(
        f"equal-budget|{'|'.join(best)}", list(frames.values()), {"base": [0] * len(frames)}
    )
    tidy.insert(0, "control", "")
    tidy.insert(0, "label", list(frames))
    shown = format_cells(tidy, next(iter(frames)), "md")
    shown.insert(
        0,
        "tuned",
        [", ".join(f"{k}={float(v):.4g}" for k, v in best[m].items()) for m in frames],
    )
    shown.index = pd.Index(list(frames), name="method")
    return shown


def equal_budget(
    kind: str,
    searches: Sequence[Search],
    n_trials: int,
    seeds: int,
    storage: str,
    out: Path,
    console: Console,
) -> Path:
    """``bmdbench tune KIND --equal-budget N``: tune each search's method with exactly
    ``n_trials`` trials, run each with its best values over ``seeds`` seeds and compare them
    on test (:func:`compare_tuned`); print the table and write it to ``out/tables``."""
    best = equal_budget_best(searches, n_trials, storage, out, console)
    frame = compare_tuned(best, searches[0], seeds, storage, out, console)
    title = f"Tuned with {n_trials} trials each ({kind}), compared on test over {seeds} seeds"
    text = markdown_table(
        frame,
        title,
        f"Measured with bmdbench tune {kind} --equal-budget {n_trials}.",
        verbatim=True,
    )
    console.print(text)
    path = out / "tables" / f"equal-budget-{kind}-{'-'.join(best)}.md"
    store.write_text(path, text)
    return path


def write_trials(study: optuna.Study, formats: Sequence[str], out: Path) -> list[Path]:
    """The study's trials (:func:`trials_frame`) as ``out/tables/<study>.<ext>``."""
    title = f"Trials of study {study.study_name}"
    footer = f"Objective: validation Pearson R. Runs in {out / 'runs'}."
    frame = trials_frame(study)
    return [write_frame(frame, title, footer, study.study_name, f, out / "tables") for f in formats]


def export_study(
    name: str | None, storage: str | None, out: Path, formats: Sequence[str], console: Console
) -> list[Path]:
    """``bmdbench table tune --study NAME``: summarise a finished study and write its trials."""
    if storage is None and not (out / DB_NAME).exists():
        raise ConfigError(f"no studies under {out}", "give the --out of the tune run, or --storage")
    url = storage or default_storage(out)
    names = optuna.get_all_study_names(open_storage(url))
    if name not in names:
        raise ConfigError(
            f"no study {name!r} in {shown(url)}",
            f"give --study one of: {', '.join(n for n in names if n.startswith('tune-')) or '(none yet)'}",
        )
    loaded = optuna.load_study(study_name=name, storage=open_storage(url))
    summarise(loaded, out, console)
    return write_trials(loaded, formats, out)
