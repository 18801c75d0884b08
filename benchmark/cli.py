"""The ``bmdbench`` command line. Each command parses its options, then calls one tested function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import bmdbench
from bmdbench.errors import BmdError

app = typer.Typer(
    help="Benchmark semi-supervised regression methods on radiographs (BMD from hip X-rays).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
list_app = typer.Typer(help="Show what is registered.", no_args_is_help=True)
data_app = typer.Typer(help="Make and check datasets.", no_args_is_help=True)
app.add_typer(list_app, name="list")
app.add_typer(data_app, name="data")

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
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    _state["debug"] = debug


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
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Train one method on one backbone; print its metrics and the run directory."""
    from bmdbench.config import default_preset, load_config_file, parse_set, resolve
    from bmdbench.runner import execute

    overrides = load_config_file(config) if config else {}
    for key, value in (("split.train", n_labeled), ("split.val", n_val), ("split.test", n_test)):
        if value is not None:
            overrides[key] = value
    overrides.update(parse_set(set_ or []))
    cfg = resolve(
        method,
        backbone,
        preset or default_preset(),
        overrides,
        data=data,
        unlabeled=unlabeled,
        seed=seed,
        device=device,
        pretrained=str(pretrained) if pretrained else None,
    )
    outcome = execute(cfg, out, out_console, show_progress=not quiet)
    print(outcome.run_dir)


@list_app.command("methods")
def list_methods() -> None:
    """Registered methods, their stage and the stage-1 method they start from."""
    from bmdbench.methods import METHODS, describe

    table = Table("method", "stage", "stage-1 parent", "description")
    for name in METHODS:
        spec = METHODS.get(name)
        parent = getattr(spec.Params(), "stage1", "—")
        table.add_row(name, str(spec.stage), parent, describe(spec))
    out_console.print(table)


@list_app.command("backbones")
def list_backbones() -> None:
    """Registered backbones with their embedding size and parameter count."""
    from bmdbench.backbones import describe

    table = Table("backbone", "embedding", "parameters")
    for name, params, dim in describe():
        table.add_row(name, str(dim), f"{params / 1e6:.2f} M")
    out_console.print(table)
    out_console.print("Any other timm model name works too (timm.list_models()).")


@list_app.command("presets")
def list_presets() -> None:
    """Presets and what they set."""
    from bmdbench.config import PRESET_HELP, PRESETS, flatten

    table = Table("preset", "description", "settings")
    for name, values in PRESETS.items():
        settings = ", ".join(f"{k}={v}" for k, v in flatten(values).items())
        table.add_row(name, PRESET_HELP[name], settings)
    out_console.print(table)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="New folder for the PNGs and manifest.csv.")],
    preset: Preset = None,
    set_: Sets = None,
) -> None:
    """Write the embedded synthetic dataset as PNGs plus a manifest."""
    from bmdbench.config import default_preset, parse_set, resolve
    from bmdbench.data.synthetic import write_synthetic

    cfg = resolve("baseline", "tiny", preset or default_preset(), parse_set(set_ or []))
    manifest = write_synthetic(cfg.synth, cfg.image_size, out)
    print(manifest)


@data_app.command("check")
def data_check(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV to validate.")],
) -> None:
    """Validate a manifest without training and summarise what it holds."""
    from bmdbench.data.check import check_manifest, render_summary

    out_console.print(render_summary(check_manifest(manifest)))


def main() -> None:
    """Console entry point: user errors become one line and exit status 2."""
    from bmdbench.runner import RunFailed

    try:
        app()
    except BmdError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except RunFailed as exc:
        if _state["debug"]:
            raise
        err_console.print(
            f"[bold red]error:[/] {exc} — record in {exc.run_dir}; "
            "a diverged run usually needs a lower learning rate (--set stage1.lr=...)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
