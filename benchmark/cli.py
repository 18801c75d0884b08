"""The ``bmdbench`` command line. Each command parses its options, then calls one tested function."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

import bmdbench
from bmdbench import store
from bmdbench.errors import BmdError, RunFailed
from bmdbench.messages import plain_warnings

if TYPE_CHECKING:
    from bmdbench.spec import RunSpec

app = typer.Typer(
    help="Benchmark semi-supervised regression methods on radiographs (BMD from hip X-rays).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
list_app = typer.Typer(help="Show what is registered.", no_args_is_help=True)
data_app = typer.Typer(help="Make and check datasets.", no_args_is_help=True)
export_app = typer.Typer(help="Hand a results store to other tools.", no_args_is_help=True)
app.add_typer(list_app, name="list")
app.add_typer(data_app, name="data")
app.add_typer(export_app, name="export")

out_console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        print(f"bmdbench {bmdbench.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of errors and libraries' warnings.")
    ] = False,
) -> None:
    _state["debug"] = debug
    if debug:
        os.environ["BMDBENCH_DEBUG"] = "1"  # read by bmdbench.dispatch, and by grid workers


Method = Annotated[
    str, typer.Option("--method", "-m", help="Registered method (bmdbench list methods).")
]
Backbone = Annotated[
    str, typer.Option("--backbone", "-b", help="Registered backbone or any timm model name.")
]
Data = Annotated[
    str, typer.Option("--data", help="'synthetic' (embedded phantoms) or a manifest CSV.")
]
Unlabeled = Annotated[
    str | None,
    typer.Option("--unlabeled", help="Extra unlabeled images: a manifest CSV or a folder."),
]
Preset = Annotated[
    str | None,
    typer.Option(
        "--preset", "-p", help="paper | quick | smoke (default: paper with CUDA, else quick)."
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Training seed.")]
Out = Annotated[Path, typer.Option("--out", help="Output root; runs go to OUT/runs/.")]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a setting: --set atl.margin=0.3 (repeatable)."),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="TOML file of settings (below --set in precedence).")
]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")]
Budgets = Annotated[
    str | None,
    typer.Option(
        "--n-labeled", help="With labels: comma-separated label budgets (e.g. 50,100,200)."
    ),
]
Unit = Annotated[
    str,
    typer.Option(
        "--unit",
        help="The targets' unit (e.g. months) for runs whose manifest has no unit column.",
    ),
]
AllowOverlap = Annotated[
    bool,
    typer.Option(
        "--allow-overlap",
        help="Drop unlabeled images of val/test patients (or copies of their images) "
        "with a warning instead of failing (split.allow_overlap).",
    ),
]


@app.command()
def run(
    method: Method = "proposed",
    backbone: Backbone = "vgg11_bn_se",
    data: Data = "synthetic",
    unlabeled: Unlabeled = None,
    preset: Preset = None,
    seed: Seed = 0,
    out: Out = Path("results"),
    set_: Sets = None,
    config: ConfigFile = None,
    device: Device = "auto",
    pretrained: Annotated[
        Path | None, typer.Option("--pretrained", help="Local backbone weights (timm/torchvision).")
    ] = None,
    n_labeled: Annotated[
        float | None, typer.Option("--n-labeled", help="Label budget: labeled training images.")
    ] = None,
    n_val: Annotated[float | None, typer.Option("--n-val", help="Validation images.")] = None,
    n_test: Annotated[float | None, typer.Option("--n-test", help="Test images.")] = None,
    allow_overlap: AllowOverlap = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Train one method on one backbone; print its metrics and the run directory."""
    from bmdbench.config import default_preset
    from bmdbench.options import settings
    from bmdbench.spec import RunSpec

    given = {
        "split.train": n_labeled,
        "split.val": n_val,
        "split.test": n_test,
        "pretrained": str(pretrained) if pretrained else None,
    }
    overrides = settings(set_, config=config, allow_overlap=allow_overlap, given=given)
    spec = RunSpec.of(
        method,
        backbone,
        preset or default_preset(),
        overrides,
        data=data,
        unlabeled=unlabeled,
        seed=seed,
        device=device,
    )
    spec.check_inputs()  # every mistake in the inputs, before the engine is imported
    from bmdbench.runner import execute

    outcome = execute(spec.config, out, out_console, show_progress=not quiet)
    print(outcome.run_dir)


Storage = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="BMDBENCH_STORAGE",
        show_envvar=True,
        help="Optuna storage URL shared by workers (default: sqlite file OUT/bmdbench.db). "
        "A URL with a password is better given in BMDBENCH_STORAGE than on the command line.",
    ),
]


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _base(preset: str | None, data: str, unlabeled: str | None, device: str) -> RunSpec:
    """The spec a grid's or a table's cells start from (method and backbone set per cell)."""
    from bmdbench.config import default_preset
    from bmdbench.spec import RunSpec

    return RunSpec("", "", preset or default_preset(), data, unlabeled, 0, device)


@app.command()
def grid(
    table: Annotated[
        str | None,
        typer.Argument(
            help="table1 | table2 | table3 | table4 | all (those four) | sota (later methods "
            "beside the paper's), or labels (a label-budget grid "
            "with --methods and --n-labeled); omit for a custom grid."
        ),
    ] = None,
    methods: Annotated[
        str | None, typer.Option("--methods", help="Custom grid: comma-separated methods.")
    ] = None,
    backbones: Annotated[
        str | None,
        typer.Option(
            "--backbones",
            help="Custom grid: comma-separated backbones; with a table: replaces vgg11_bn_se.",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds 0..N-1 per cell.")] = 1,
    n_labeled: Budgets = None,
    preset: Preset = None,
    data: Data = "synthetic",
    unlabeled: Unlabeled = None,
    out: Out = Path("results"),
    set_: Sets = None,
    device: Device = "auto",
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            help="Worker processes on this machine: a count, or auto (on a GPU as many as its "
            "free memory holds, at most one per CPU core; on a CPU one per core).",
        ),
    ] = "1",
    storage: Storage = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run failed or diverged cells again.")
    ] = False,
    allow_overlap: AllowOverlap = False,
) -> None:
    """Run the cells of a paper table (or a custom grid); resumes where it stopped."""
    from bmdbench.dispatch import default_storage, open_storage
    from bmdbench.experiments import Request, parse_budgets
    from bmdbench.grid import make_plan, print_plan, run_grid
    from bmdbench.options import settings
    from bmdbench.workers import auto_workers, parse_workers

    count = parse_workers(workers)
    store.check_out(out, "runs", "grids")
    base = _base(preset, data, unlabeled, device)
    request = Request(
        table,
        tuple(_names(methods)),
        tuple(_names(backbones)),
        seeds,
        settings(set_, allow_overlap=allow_overlap),
        tuple(parse_budgets(n_labeled) if n_labeled is not None else ()),
        base.preset,
        data,
        unlabeled,
    )
    cells = [replace(cell, device=device) for cell in request.cells()]
    plan = make_plan(cells, out)  # every cell checked as `bmdbench run` would
    url = storage or default_storage(out)
    open_storage(url)  # a bad URL or a missing driver: before the plan is shown
    if count is None:
        count, why = auto_workers(plan.cells)
        out_console.print(f"--workers auto: {count} ({why})")
    print_plan(out_console, plan, count)
    request.write(out, plan.name)  # what bmdbench report reads; every check has passed
    counts = run_grid(plan, out, url, count, retry_failed, out_console)
    out_console.print(
        f"{counts.done} of {counts.cells} cells done, {counts.failed} failed; runs in {out / 'runs'}"
    )
    if counts.failed:
        err_console.print(
            f"[bold red]error:[/] {counts.failed} cells failed or diverged — their records are "
            f"in {out / 'runs'}; run the same command with --retry-failed to try them again",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


@app.command(hidden=True)
def worker(
    storage: Annotated[str, typer.Option("--storage", envvar="BMDBENCH_STORAGE")],
    study: Annotated[str, typer.Option("--study")],
    out: Out = Path("results"),
) -> None:
    """Take cells of one grid's queue until it is empty (started by bmdbench grid --workers)."""
    from bmdbench.dispatch import CellQueue
    from bmdbench.grid import events_path, work

    work(CellQueue(storage, study), out, events_path(out, study), lambda counts: None)


@app.command()
def table(
    name: Annotated[
        str,
        typer.Argument(
            help="table1 | table2 | table3 | table4 | all | sota; labels (a label-budget grid's table "
            "and figure, with its --methods and --n-labeled); tune (a study's trials)."
        ),
    ],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="md | latex | csv (default: all three)."),
    ] = None,
    out: Out = Path("results"),
    preset: Preset = None,
    data: Data = "synthetic",
    unlabeled: Unlabeled = None,
    backbones: Annotated[
        str | None, typer.Option("--backbones", help="The backbone that replaced vgg11_bn_se.")
    ] = None,
    set_: Sets = None,
    study: Annotated[
        str | None, typer.Option("--study", help="With 'tune': the study to export.")
    ] = None,
    storage: Storage = None,
    methods: Annotated[
        str | None, typer.Option("--methods", help="With 'labels': the grid's methods.")
    ] = None,
    n_labeled: Budgets = None,
    unit: Unit = "",
) -> None:
    """Print a paper table (or a study's trials: tune --study NAME) from the runs under OUT
    and write OUT/tables/<table>.<ext>; 'labels' also writes OUT/figures/labels.{png,pdf}."""
    from bmdbench.config import parse_set
    from bmdbench.errors import ConfigError
    from bmdbench.rendering import FORMATS
    from bmdbench.results import store_preset
    from bmdbench.tables import publish

    formats = FORMATS if fmt is None else (fmt,)
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    store.check_out(out, "tables")
    if preset is None and name != "tune":
        preset = store_preset(out)
        err_console.print(f"preset {preset}: the preset of the runs under {out / 'runs'}")
    if name == "labels":
        from bmdbench import budgets
        from bmdbench.experiments import cells_for, parse_budgets

        chosen = parse_budgets(n_labeled)
        sets = parse_set(set_ or [])
        base = _base(preset, data, unlabeled, "auto")
        cells = cells_for("labels", _names(methods), _names(backbones), 1, sets, base, chosen)
        base = replace(base, backbone=cells[0].backbone)
        paths = budgets.publish(out, _names(methods), chosen, sets, base, formats, unit)
    elif name == "tune":
        from bmdbench.tune import export_study

        paths = export_study(study, storage, out, formats, out_console)
    else:
        base = _base(preset, data, unlabeled, "auto")
        paths = publish(
            name, out, base, _names(backbones), parse_set(set_ or []), formats, out_console, unit
        )
    for path in paths:
        print(path)


@app.command()
def tune(
    kind: Annotated[str, typer.Argument(help="margin | lambda | consistency | lr | ema | all.")],
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            "-m",
            help="Method to tune (default: atl for margin/lambda, "
            "mean_teacher for ema, proposed otherwise).",
        ),
    ] = None,
    backbone: Backbone = "vgg11_bn_se",
    n_trials: Annotated[int, typer.Option("--n-trials", help="Trials to add to the study.")] = 20,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop starting trials after S seconds.")
    ] = None,
    storage: Storage = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Study name (default: derived from the search).")
    ] = None,
    preset: Preset = None,
    data: Data = "synthetic",
    unlabeled: Unlabeled = None,
    seed: Seed = 0,
    out: Out = Path("results"),
    set_: Sets = None,
    device: Device = "auto",
    equal_budget: Annotated[
        int | None,
        typer.Option(
            "--equal-budget",
            help="Tune each of --methods with exactly N trials, then compare them on test.",
        ),
    ] = None,
    methods: Annotated[
        str | None, typer.Option("--methods", help="With --equal-budget: comma-separated methods.")
    ] = None,
    seeds: Annotated[
        int, typer.Option("--seeds", help="With --equal-budget: seeds of the final comparison.")
    ] = 3,
    allow_overlap: AllowOverlap = False,
) -> None:
    """Search hyperparameters with Optuna (objective: validation R); re-running continues."""
    from bmdbench.config import default_preset
    from bmdbench.options import settings
    from bmdbench.spec import RunSpec
    from bmdbench.tune import run_tune

    sets = settings(set_, allow_overlap=allow_overlap)
    base = RunSpec.of(
        "",
        backbone,
        preset or default_preset(),
        sets,
        data=data,
        unlabeled=unlabeled,
        seed=seed,
        device=device,
    )
    paths = run_tune(
        kind,
        base,
        out,
        out_console,
        method=method,
        n_trials=n_trials,
        timeout=timeout,
        storage=storage,
        study=study,
        equal_trials=equal_budget,
        methods=_names(methods),
        seeds=seeds,
    )
    for path in paths:
        print(path)


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A finished run's directory.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the figures (default: OUT/figures/<run name>)."),
    ] = None,
) -> None:
    """Predicted vs true (the paper's Figure 2), Bland–Altman and learning curve of one run."""
    from bmdbench.plots import plot_run

    folder = out or run_dir.resolve().parent.parent / "figures" / run_dir.resolve().name
    store.check_out(folder)
    for path in plot_run(run_dir, folder):
        print(path)


@app.command()
def report(out: Out = Path("results"), unit: Unit = "") -> None:
    """One self-contained HTML page of the store under OUT (OUT/report.html): every table its
    grids fill, a forest plot of the gains over the controls, label-budget and learning
    curves, failed runs, and where the numbers come from."""
    from bmdbench.report import write_report

    store.check_out(out, "runs")
    print(write_report(out, unit))


ListFormat = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="table | tsv | json (default: table on a terminal, tsv, full width, when piped).",
    ),
]


@list_app.command("methods")
def list_methods(fmt: ListFormat = None) -> None:
    """Registered methods: stage, the stage-1 method they start from, hyperparameters."""
    from bmdbench.listings import methods, show

    show(methods, fmt, out_console)


@list_app.command("backbones")
def list_backbones(
    fmt: ListFormat = None,
    sizes: Annotated[
        bool,
        typer.Option(
            "--sizes", help="Also each one's embedding size and parameter count (imports timm)."
        ),
    ] = False,
) -> None:
    """Registered backbones (any other timm model name works too: timm.list_models())."""
    from functools import partial

    from bmdbench.listings import backbones, show

    show(partial(backbones, sizes), fmt, out_console)


@list_app.command("runs")
def list_runs(
    out: Out = Path("results"),
    csv: Annotated[bool, typer.Option("--csv", help="Every column of the store, as CSV.")] = False,
) -> None:
    """Finished runs under OUT: method, seed, status, test R and RMSE, pseudo-label error."""
    from bmdbench.listings import show_runs

    show_runs(out, csv, out_console)


@list_app.command("presets")
def list_presets(fmt: ListFormat = None) -> None:
    """Presets and what they set."""
    from bmdbench.listings import presets, show

    show(presets, fmt, out_console)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="New folder for the PNGs and manifest.csv.")],
    preset: Preset = None,
    set_: Sets = None,
) -> None:
    """Write the embedded synthetic dataset as PNGs plus a manifest."""
    from bmdbench.config import default_preset, parse_set, run_settings
    from bmdbench.data.synthetic import write_synthetic
    from bmdbench.errors import ConfigError

    sets = parse_set(set_ or [])
    cfg, left = run_settings("baseline", "tiny", preset or default_preset(), sets)
    if method_keys := [k for k in sets if k in left]:
        raise ConfigError(
            f"data synth takes run-wide settings, not {method_keys[0]!r}",
            "set synth.* or image_size, e.g. --set synth.n_labeled=200",
        )
    store.check_out(out)
    manifest = write_synthetic(cfg.synth, cfg.image_size, out)
    print(manifest)


@data_app.command("check")
def data_check(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV to validate.")],
) -> None:
    """Validate a manifest without training and summarise what it holds."""
    from bmdbench.data.check import check_manifest, render_summary

    out_console.print(render_summary(check_manifest(manifest)))


@export_app.command("mlflow")
def export_mlflow(
    out: Annotated[Path, typer.Option("--out", help="The results store to export.")] = Path(
        "results"
    ),
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="An MLflow tracking URI (default: sqlite file OUT/mlflow/mlflow.db)."),
    ] = None,
    experiment: Annotated[str, typer.Option(help="The MLflow experiment.")] = "bmdbench",
) -> None:
    """Log every finished run of the store as one MLflow run (again: only the new ones)."""
    from bmdbench.mlflow_export import export

    done = export(out, tracking_uri, experiment)
    print(
        f"{done.logged} runs logged, {done.skipped} already there: experiment "
        f"{done.experiment!r} at {done.tracking_uri}"
    )


def _error(message: str) -> None:
    """``error: <message>`` on stderr, on one line, however the message was written."""
    line = " ".join(message.split())
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console entry point: a user's mistake becomes one line and exit status 2; a failure
    of the environment (a full disk) one line and exit status 1; ``--debug`` re-raises.
    bmdbench's warnings are one line each, once (:func:`bmdbench.messages.plain_warnings`)."""
    try:
        with plain_warnings():
            app()
    except BmdError as exc:
        if _state["debug"]:
            raise
        _error(str(exc))
        sys.exit(exc.exit_status)
    except RunFailed as exc:
        if _state["debug"]:
            raise
        _error(
            f"{exc} — record in {exc.run_dir}; "
            "a diverged run usually needs a lower learning rate (--set stage1.lr=...)"
        )
        sys.exit(1)
    except OSError as exc:  # reading or writing a file failed outside a run's own writes
        if _state["debug"]:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _error(
            f"{where}{exc.strerror or exc} — check the path, the free disk space and the "
            "permissions (--debug shows where it happened)"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
