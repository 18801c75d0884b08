"""One run end to end: data → split → (stage-1 parent) → method → Trainer → run record."""

from __future__ import annotations

import io
import platform
import shutil
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

import bmdbench
from bmdbench import store
from bmdbench.backbones import build_backbone, check_backbone
from bmdbench.config import RunConfig, to_dict
from bmdbench.data import sources
from bmdbench.data.augment import BatchAugment
from bmdbench.data.imageset import ImageSet
from bmdbench.data.module import DataModule, resident_bytes
from bmdbench.data.splits import Split
from bmdbench.errors import BmdError, Diverged, OutputError, Pruned, RunFailed
from bmdbench.hooks import EpochCallback, Pruning
from bmdbench.methods import METHODS, Method, Regressor
from bmdbench.metrics import METRIC_KEYS
from bmdbench.record import RecordData, RunRecord
from bmdbench.spec import config_hash
from bmdbench.speed import (
    StageEstimate,
    describe_estimate,
    measure_limit,
    resident_batch,
    stage_images,
)
from bmdbench.trainer import Trainer, resolve_device, seed_everything


@dataclass(frozen=True)
class RunOutcome:
    run_dir: Path
    record: RunRecord
    reused: bool = False  # an existing finished run was found and not retrained


def execute(
    cfg: RunConfig,
    out: Path,
    console: Console | None = None,
    show_progress: bool = True,
    reuse: bool = False,
    on_epoch: EpochCallback | None = None,
    study: dict[str, Any] | None = None,
    estimate: bool = True,
) -> RunOutcome:
    """Run ``cfg`` and write its run directory under ``out/runs``.

    With ``reuse``, a finished run (status ok) of the same config hash is returned
    as it is. A stage-2 method always reuses (or first runs) its stage-1 parent.
    A ``paper`` run first prints its time and memory estimate (:func:`paper_estimate`;
    ``estimate=False`` leaves it out: a stage-2 run's estimate covers its parent).
    ``on_epoch`` sees this run's validation metrics after every epoch and may stop it
    (status ``pruned``); ``study`` (name, trial) links a search trial's record to its study.
    Everything that can fail is checked before anything is written (as :func:`check`).
    Raises :class:`~bmdbench.errors.RunFailed` after writing the record of a diverged, pruned
    or failed run, and :class:`~bmdbench.errors.OutputError`, leaving nothing behind, when a
    write fails.
    """
    console = console or Console()
    store.check_out(out, "runs")
    images, split, chash = _inputs(cfg)
    name = store.run_name(cfg.method, cfg.backbone, cfg.preset, cfg.seed, chash)
    final = store.runs_dir(out) / name
    if reuse:
        existing = store.read_record(final)
        if existing is not None and existing.ok:
            return RunOutcome(final, existing, reused=True)
    device = _check_machine(cfg, images)
    if estimate and cfg.preset == "paper":
        console.print(paper_estimate(cfg, out, images, split, device))

    parent = None
    if cfg.parent is not None:
        parent = execute(cfg.parent, out, console, show_progress, reuse=True, estimate=False)
    _header(console, cfg, images, split, device, final, parent)

    started = time.perf_counter()
    staging = store.staging_dir(out, name)
    with _nothing_left_if_it_fails(staging):
        try:
            result = _train(
                cfg, images, split, device, staging, parent, console, show_progress, on_epoch
            )
        except (BmdError, OSError):
            raise
        except Diverged as exc:
            result = {"status": "diverged", "error": str(exc)}
        except Pruned as exc:
            result = {"status": "pruned", "error": str(exc) or "stopped early by its search"}
        except Exception as exc:  # a bug or a resource problem: recorded, then raised as RunFailed
            (staging / "traceback.txt").write_text(traceback.format_exc())
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        timings = {**result.pop("timings", {}), "total_s": round(time.perf_counter() - started, 2)}
        record = RunRecord(
            **_provenance(cfg, chash, name, images, split, parent, device),
            **result,
            timings=timings,
            study=study,
        )
        store.write_json(staging / store.RECORD, record.to_json())
        store.publish(staging, final)
    if not record.ok:
        raise RunFailed(final, record.status, record.error or "")
    _results_table(console, record, images.unit)
    return RunOutcome(final, record)


def check(cfg: RunConfig, out: Path) -> Path:
    """Resolve everything ``cfg`` needs, writing nothing, and return its run directory.

    In order: the output folder (a folder that can be written), the images, the split
    and the label budget, the device, and the backbone (built with its pretrained
    weights, one blank image passed through it). The first problem raises its
    :class:`~bmdbench.errors.BmdError`. :func:`execute` makes the same checks before
    its header; a grid or a search makes them for each of its runs before it starts.
    """
    store.check_out(out, "runs")
    images, _, chash = _inputs(cfg)
    _check_machine(cfg, images)
    return store.runs_dir(out) / store.run_name(
        cfg.method, cfg.backbone, cfg.preset, cfg.seed, chash
    )


PROBE_WARMUP, PROBE_STEPS = 1, 2  # steps of the paper estimate's measurement, per stage


def paper_estimate(
    cfg: RunConfig, out: Path, images: ImageSet, split: Split, device: torch.device
) -> str:
    """The line printed before a ``paper`` run: for each stage still to train (a finished
    stage-1 parent costs nothing), its training images (epochs × steps × batch) at the speed
    of its method's own step measured on a resident batch (:func:`bmdbench.speed.measure_limit`,
    a warm-up step and two timed ones, uncompiled), the total time and the peak memory.

    Three steps per stage: seconds on a GPU, far longer at 512 px on a CPU (where ``paper``
    itself would take weeks).
    """
    return describe_estimate(
        estimate_stages(cfg, out, images, split, device), resident_bytes(images, split)
    )


def estimate_stages(
    cfg: RunConfig, out: Path, images: ImageSet, split: Split, device: torch.device
) -> list[StageEstimate]:
    """The stages :func:`paper_estimate` prices, each measured."""
    runs = [cfg]
    if cfg.parent is not None and not _finished(cfg.parent, out):
        runs.insert(0, cfg.parent)
    size = (int(images.images.shape[1]), int(images.images.shape[2]))
    stages = []
    for run in runs:
        method = build_method(run)
        trainer = Trainer(device, show_progress=False, amp=run.amp)
        if method.stage == 2:  # labeled and unlabeled images, pseudo-labeled or not
            stage, pool = run.stage2, len(split.train) + len(split.unlabeled)
            labeled = stage.labeled_per_batch
        else:
            stage, pool = run.stage1, len(split.train)
            labeled = stage.batch_size
        batch = resident_batch(trainer, stage.batch_size, size, labeled)
        speed = measure_limit(trainer, method, batch, PROBE_STEPS, PROBE_WARMUP)
        label = f"stage {method.stage} ({run.method})"
        stages.append(StageEstimate(label, stage_images(stage, pool), speed))
    return stages


def _finished(cfg: RunConfig, out: Path) -> bool:
    """Whether a finished run (status ok) of ``cfg`` is under ``out``, to be reused."""
    record = store.read_record(check(cfg, out))
    return record is not None and record.ok


_BACKBONES_CHECKED: set[tuple[str, str | None, tuple[int, ...]]] = set()


def _check_machine(cfg: RunConfig, images: ImageSet) -> torch.device:
    """The device, and the backbone on the run's image size (checked once per process);
    a stage-2 method's parent shares both."""
    device = resolve_device(cfg.device)
    size = (int(images.images.shape[1]), int(images.images.shape[2]))
    key = (cfg.backbone, cfg.pretrained, size)
    if key not in _BACKBONES_CHECKED:
        check_backbone(cfg.backbone, cfg.pretrained, size)
        _BACKBONES_CHECKED.add(key)
    return device


@contextmanager
def _nothing_left_if_it_fails(staging: Path) -> Iterator[None]:
    """Around a run's writes: a mistake found late, an interruption or a file that cannot
    be written (disk full, no permission) removes the staging folder; a failed file
    operation becomes a one-line :class:`~bmdbench.errors.OutputError` naming the path and
    the reason (:func:`bmdbench.store.write_bytes` names its own)."""
    try:
        yield
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(
            f"the run stopped at {exc.filename or staging}: {exc.strerror or exc}",
            "free some disk space or check the permissions; nothing of the run was kept",
        ) from exc
    except (BmdError, KeyboardInterrupt):
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _inputs(cfg: RunConfig) -> tuple[ImageSet, Split, str]:
    """The run's images and split, checked (:func:`bmdbench.data.sources.load_inputs`), and
    its config hash."""
    images, split = sources.load_inputs(cfg)
    return images, split, config_hash(cfg, images, split)


def build_method(cfg: RunConfig, parent_dir: Path | None = None) -> Method:
    """The regressor (stage-1 weights loaded when ``parent_dir`` is given) inside its method,
    which may build further regressors of the same backbone (``Method.new_regressor``)."""

    def new_regressor() -> Regressor:
        return Regressor(build_backbone(cfg.backbone, cfg.pretrained))

    regressor = new_regressor()
    if parent_dir is not None:
        state = torch.load(parent_dir / store.CHECKPOINT, map_location="cpu", weights_only=True)
        prefix = "regressor."
        regressor.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
    return METHODS.get(cfg.method)(regressor, cfg.hparams, new_regressor)


def _train(
    cfg: RunConfig,
    images: ImageSet,
    split: Split,
    device: torch.device,
    run_dir: Path,
    parent: RunOutcome | None,
    console: Console,
    show_progress: bool,
    on_epoch: EpochCallback | None,
) -> dict[str, Any]:
    generator = seed_everything(cfg.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    method = build_method(cfg, parent.run_dir if parent else None)
    data = DataModule(images, split, device, cfg.target_norm)
    store.write_json(run_dir / "config.json", to_dict(cfg))
    store.write_json(run_dir / "split.json", split.to_json(images))
    trainer = Trainer(
        device,
        run_dir / "epochs.jsonl",
        console,
        show_progress,
        amp=cfg.amp,
        compile=cfg.compile,
        precise_bn=cfg.precise_bn,
    )
    stage = cfg.stage2 if method.stage == 2 else cfg.stage1
    result = trainer.fit(
        method,
        data,
        stage,
        BatchAugment(cfg.augment),
        generator,
        select_initial=parent is not None,
        hooks=[Pruning(on_epoch)] if on_epoch is not None else [],
    )
    checkpoint = io.BytesIO()  # torch.save's own writer reports a full disk as a RuntimeError
    torch.save(result.state_dict, checkpoint)
    store.write_bytes(run_dir / store.CHECKPOINT, checkpoint.getvalue())
    for part in ("val", "test"):
        idx = getattr(split, part)
        frame = pd.DataFrame(
            {
                "id": images.ids[idx],
                "patient": images.patient_ids[idx],
                "target": images.targets[idx],
                "prediction": result.predictions[part],
            }
        )
        store.write_text(run_dir / f"predictions_{part}.csv", frame.to_csv(index=False))
    last = result.history[-1] if result.history else {}
    diagnostics = {k: last[k] for k in ("pseudo_rmse", "pseudo_r") if k in last}
    return {
        "status": "ok",
        "error": None,
        "metrics": {"val": result.val, "test": result.test},
        "selected_epoch": result.best_epoch,
        "diagnostics": {**diagnostics, **method.summary()},
        "timings": {
            "train_s": round(result.train_seconds, 2),
            "images_per_s": round(result.images_seen / max(result.train_seconds, 1e-9), 1),
        },
    }


def _provenance(
    cfg: RunConfig,
    chash: str,
    name: str,
    images: ImageSet,
    split: Split,
    parent: RunOutcome | None,
    device: torch.device,
) -> dict[str, Any]:
    """The record's provenance: which run this is (name, config and its hash, parent), on
    what data and split, with which versions, commit and device, and when."""
    import timm

    return {
        "name": name,
        "method": cfg.method,
        "backbone": cfg.backbone,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "config_hash": chash,
        "parent_run": parent.run_dir.name if parent else None,
        "data": RecordData(
            source=images.source,
            fingerprint=images.fingerprint,
            split_fingerprint=split.fingerprint,
            sizes=split.sizes(),
            unit=images.unit,
            # the labeled training targets' scale (SD ddof=0, as DataModule's z-scoring)
            target_mean=float(images.targets[split.train].mean()),
            target_sd=float(images.targets[split.train].std()),
        ),
        "versions": {
            "bmdbench": bmdbench.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "timm": timm.__version__,
            "numpy": np.__version__,
        },
        "git_sha": store.git_sha(),
        "device": _device_name(device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _header(
    console: Console,
    cfg: RunConfig,
    images: ImageSet,
    split: Split,
    device: torch.device,
    final: Path,
    parent: RunOutcome | None,
) -> None:
    sizes = ", ".join(f"{k} {v}" for k, v in split.sizes().items())
    console.print(
        f"[bold]{cfg.method}[/] on [bold]{cfg.backbone}[/] · preset [bold]{cfg.preset}[/] · "
        f"device [bold]{_device_name(device)}[/] · seed {cfg.seed}"
    )
    console.print(f"data {images.source} ({cfg.image_size} px): {sizes}")
    if parent is not None:
        how = "reused" if parent.reused else "trained"
        console.print(f"stage 1: {how} {parent.run_dir}")
    console.print(f"writing {final}")


def _results_table(console: Console, record: RunRecord, unit: str) -> None:
    table = Table(title=f"{record.name} (selected epoch {record.selected_epoch})")
    table.add_column("metric")
    for part in ("val", "test"):
        table.add_column(part, justify="right")
    for key in METRIC_KEYS:
        table.add_row(key, *(f"{record.metrics[p][key]:.4f}" for p in ("val", "test")))
    console.print(table)
    console.print(
        f"rmse, mae and Bland–Altman values are in {unit or 'the unit of the manifest targets'}"
    )
