"""The CUDA checks in one command, and one summary table of what they measured.

Each check is a process of its own with a time limit, its output in ``OUT/<check>.log``:

- gpu tests: ``pytest -m gpu`` (the CUDA path's tests; a CPU skips them all);
- limit, per backbone: ``bench/bench_limit.py`` at 512 px for vgg11_bn_se and resnet18: the
  Trainer over its limit, (b)/(a) for ``baseline`` and ``atl``, (c)/(a′) for ``proposed`` and
  ``mean_teacher`` (goal ≥ 0.9), and where the rest of the Trainer's time went;
- grid: ``bmdbench grid table2 --preset quick --seeds 5 --workers auto``: its wall time
  (goal ≤ 60 s), the workers chosen and the images/s of all of them together;
- paper: ``proposed`` under the ``paper`` preset for 3 stage-1 epochs and 1 stage-2 epoch,
  each stage's time extrapolated to the preset's epochs (what the stage cost besides its
  epochs, plus its seconds per epoch times the epochs; goal ≤ 30 min for both), beside the
  estimate bmdbench prints before a ``paper`` run (measured at the limit: a lower bound).

Within 8 minutes on one GPU: each check gets at most the time left of that (and its own
limit), and the paper check, which renders the 9,309 paper phantoms first, runs last.

``--cpu`` (and any machine without CUDA): the same checks at small sizes on the CPU: the
``tiny`` backbone at 32 px, a few dozen images, the ``smoke`` preset's grid. It keeps this
script working between GPU sessions (``tests/test_gpu_check.py`` runs it).

    bash bench/gpu_check.sh [--cpu] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 8 * 60  # all checks together, on one GPU
PAPER_EPOCHS = {1: 3, 2: 1}  # epochs the paper check trains per stage


@dataclass(frozen=True)
class Sizes:
    """What each check runs on one kind of machine."""

    device: str
    test_paths: tuple[str, ...]  # where pytest looks for the gpu tests (none: everywhere)
    limit_backbones: tuple[str, ...]
    limit_args: tuple[str, ...]  # bench_limit.py's options besides --backbone
    grid_args: tuple[str, ...]  # bmdbench grid's, besides --workers, --device and --out
    paper_backbone: str
    paper_sets: dict[str, str] = field(default_factory=dict)  # over the paper preset
    limits_s: dict[str, int] = field(default_factory=dict)  # each check's own time limit


GPU = Sizes(
    device="cuda",
    test_paths=(),
    limit_backbones=("vgg11_bn_se", "resnet18"),
    limit_args=("--size", "512"),
    grid_args=("table2", "--preset", "quick", "--seeds", "5"),
    paper_backbone="vgg11_bn_se",
    limits_s={"gpu tests": 120, "limit": 150, "grid": 150, "paper": 300},
)
CPU = Sizes(
    device="cpu",
    test_paths=("tests/engine/test_gpu.py",),  # skipped here: collecting the rest costs time
    limit_backbones=("tiny",),
    limit_args=tuple("--size 32 --train 32 --unlabeled 32 --steps 2 --warmup 1".split()),
    grid_args=tuple(
        "--methods baseline,mean_teacher --backbones tiny --seeds 2 --preset smoke "
        "--set stage1.epochs=1".split()
    ),
    paper_backbone="tiny",
    paper_sets={
        "image_size": "32",
        "synth.n_labeled": "40",
        "synth.n_patients": "40",
        "synth.n_unlabeled": "16",
        "split.val": "8",
        "split.test": "8",
    },
    limits_s={"gpu tests": 120, "limit": 120, "grid": 120, "paper": 120},
)


@dataclass
class Row:
    check: str
    measured: str
    goal: str
    status: str  # "ok", "below goal", "failed", "timed out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="small sizes on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="logs and runs (default: temp)")
    parser.add_argument("--paper-json", type=Path, help=argparse.SUPPRESS)  # the paper check
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--backbone", default="", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paper_json:
        paper(args)
        return

    import torch

    sizes = CPU if args.cpu or not torch.cuda.is_available() else GPU
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    out.mkdir(parents=True, exist_ok=True)
    if sizes is GPU:
        machine = torch.cuda.get_device_name(0)
    else:
        machine = f"CPU ({len(os.sched_getaffinity(0))} cores)"
    print(f"{machine}; torch {torch.__version__}; logs and runs in {out}", flush=True)
    deadline = time.monotonic() + BUDGET_S
    rows = [gpu_tests(sizes, out, deadline)]
    rows.append(grid(sizes, out, deadline))
    rows += [limit(backbone, sizes, out, deadline) for backbone in sizes.limit_backbones]
    rows.append(paper_check(sizes, out, deadline))
    print(f"\n{machine}, torch {torch.__version__}:\n")
    print("| check | measured | goal | status |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row.check} | {row.measured} | {row.goal} | {row.status} |")
    if any(row.status in ("failed", "timed out") for row in rows):
        sys.exit(1)


def run(
    name: str, command: list[str], out: Path, limit_s: int, deadline: float
) -> tuple[str | None, float]:
    """Run ``command`` from the repository's root, its output to ``OUT/<name>.log``: its
    output (None when it failed or ran out of time, the reason then in the log) and seconds."""
    log = out / f"{name.replace(' ', '_')}.log"
    timeout = max(1.0, min(limit_s, deadline - time.monotonic()))
    print(f"{name}: {' '.join(command)} (at most {timeout:.0f} s)", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        log.write_text(_text(exc.stdout) + _text(exc.stderr) + f"\ntimed out after {timeout} s\n")
        return None, time.monotonic() - started
    seconds = time.monotonic() - started
    log.write_text(done.stdout + done.stderr)
    print(f"{name}: exit status {done.returncode} after {seconds:.1f} s", flush=True)
    return (done.stdout if done.returncode == 0 else None), seconds


def _text(output: str | bytes | None) -> str:
    return output.decode() if isinstance(output, bytes) else output or ""


def failed(check: str, goal: str, out: Path, seconds: float, limit_s: float) -> Row:
    status = "timed out" if seconds >= limit_s - 1 else "failed"
    return Row(check, f"see {out / (check.split()[0] + '*.log')}", goal, status)


def gpu_tests(sizes: Sizes, out: Path, deadline: float) -> Row:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider"]
    command += ["-o", "addopts=", "-q", *sizes.test_paths]
    limit_s = sizes.limits_s["gpu tests"]
    stdout, seconds = run("gpu tests", command, out, limit_s, deadline)
    if stdout is None:
        return failed("gpu tests", "all pass", out, seconds, limit_s)
    counts = dict(
        (word, int(n)) for n, word in re.findall(r"(\d+) (passed|failed|skipped)", stdout)
    )
    measured = ", ".join(f"{n} {word}" for word, n in counts.items()) + f" in {seconds:.0f} s"
    return Row("gpu tests", measured, "all pass", "ok")


def limit(backbone: str, sizes: Sizes, out: Path, deadline: float) -> Row:
    result = out / f"limit-{backbone}.json"
    command = [sys.executable, "bench/bench_limit.py", "--backbone", backbone, "--device"]
    command += [sizes.device, *sizes.limit_args, "--json", str(result)]
    size = sizes.limit_args[sizes.limit_args.index("--size") + 1]
    check = f"limit {backbone} {size} px"
    limit_s = sizes.limits_s["limit"]
    stdout, seconds = run(f"limit {backbone}", command, out, limit_s, deadline)
    if stdout is None:
        return failed(check, "≥ 0.9", out, seconds, limit_s)
    rows = json.loads(result.read_text())["rows"]
    ratios = {r["label"].split()[-1]: r for r in rows if r["ratio"] is not None}
    parts = []
    for name, row in ratios.items():
        shares = row["shares"]
        notes = [f"{row['images_per_s']:.0f} img/s"]
        notes += [f"{k} {v:.2f}" for k, v in shares.items() if k != "steps" and v >= 0.03]
        parts.append(f"{name} {row['ratio']:.2f} ({', '.join(notes)})")
    ok = all(r["ratio"] >= 0.9 for r in ratios.values())
    return Row(check, "; ".join(parts), "≥ 0.9", "ok" if ok else "below goal")


def grid(sizes: Sizes, out: Path, deadline: float) -> Row:
    from bmdbench import store

    runs = out / "grid"
    command = [sys.executable, "-m", "bmdbench.cli", "grid", *sizes.grid_args, "--workers"]
    command += ["auto", "--device", sizes.device, "--out", str(runs)]
    check = "grid " + " ".join(sizes.grid_args)
    limit_s = sizes.limits_s["grid"]
    stdout, seconds = run("grid", command, out, limit_s, deadline)
    if stdout is None:
        return failed(check, "≤ 60 s", out, seconds, limit_s)
    chosen = re.search(r"--workers auto: (\d+)", stdout)
    records = [r for r in store.iter_records(runs) if r.ok]
    images = sum(r.timings["images_per_s"] * r.timings["train_s"] for r in records)
    measured = (
        f"{seconds:.0f} s for {len(records)} runs on {chosen.group(1) if chosen else '?'} "
        f"workers: {images / seconds:,.0f} img/s together"
    )
    return Row(check, measured, "≤ 60 s", "ok" if seconds <= 60 else "below goal")


def paper_check(sizes: Sizes, out: Path, deadline: float) -> Row:
    result = out / "paper.json"
    command = [sys.executable, "bench/gpu_check.py", "--paper-json", str(result)]
    command += ["--backbone", sizes.paper_backbone, "--device", sizes.device]
    command += [f"--set={k}={v}" for k, v in sizes.paper_sets.items()]
    command += ["--out", str(out / "paper")]
    check = f"paper proposed {sizes.paper_backbone}"
    limit_s = sizes.limits_s["paper"]
    stdout, seconds = run("paper", command, out, limit_s, deadline)
    if stdout is None:
        return failed(check, "≤ 30 min", out, seconds, limit_s)
    found = json.loads(result.read_text())
    stages = found["extrapolated_s"]
    total = sum(stages.values())
    measured = (
        f"{total / 60:.2f} min extrapolated (stage 1 {stages['1'] / 60:.2f}, stage 2 "
        f"{stages['2'] / 60:.2f}; from {found['epochs']} epochs in {found['seconds']:.1f} s); "
        f"bmdbench's estimate: at least {found['estimate_s'] / 60:.2f} min"
    )
    return Row(check, measured, "≤ 30 min", "ok" if total <= 30 * 60 else "below goal")


def paper(args: argparse.Namespace) -> None:
    """The paper check, in its own process: bmdbench's estimate of the whole protocol
    (before anything is trained under OUT, so both stages count), then a run of
    :data:`PAPER_EPOCHS`; each stage extrapolated to the preset's epochs."""
    from rich.console import Console

    from bmdbench import store
    from bmdbench.data import sources
    from bmdbench.runner import estimate_stages, execute
    from bmdbench.spec import resolve
    from bmdbench.trainer import resolve_device

    sets = dict(s.split("=", 1) for s in args.set)
    full = resolve("proposed", args.backbone, "paper", sets, device=args.device)
    epochs = {f"stage{stage}.epochs": str(n) for stage, n in PAPER_EPOCHS.items()}
    short = resolve("proposed", args.backbone, "paper", {**sets, **epochs}, device=args.device)
    images, split = sources.load_inputs(full)
    device = resolve_device(args.device)
    estimate = estimate_stages(full, args.out, images, split, device)
    started = time.perf_counter()
    execute(short, args.out, Console(quiet=True), show_progress=False)
    seconds = time.perf_counter() - started
    extrapolated: dict[int, float] = {}
    for record in store.iter_records(args.out):
        timings = record.timings
        besides = timings["total_s"] - timings["train_s"]  # data, checks, test, writing
        per_epoch = timings["train_s"] / PAPER_EPOCHS[record.stage]
        full_epochs = (full.stage1 if record.stage == 1 else full.stage2).epochs
        extrapolated[record.stage] = besides + per_epoch * full_epochs
    found: dict[str, Any] = {
        "extrapolated_s": extrapolated,
        "estimate_s": sum(stage.seconds for stage in estimate),
        "epochs": "+".join(str(n) for n in PAPER_EPOCHS.values()),
        "seconds": seconds,
    }
    args.paper_json.write_text(json.dumps(found))


if __name__ == "__main__":
    main()
