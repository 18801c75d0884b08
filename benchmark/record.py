"""The run record: what ``record.json`` holds, typed.

One record per run directory, written once (the run is renamed into place after it) and
never changed. The on-disk form is a stable format (``"format": 1``, README, "What a run
leaves behind"): :meth:`RunRecord.to_json` writes it and :meth:`RunRecord.from_json` reads
it, including records written before a field existed (those get its default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bmdbench.errors import DataError

FORMAT = 1
STATUSES = ("ok", "diverged", "pruned", "failed")


@dataclass(frozen=True)
class RecordData:
    """The data a run saw."""

    source: str  # "synthetic" or the manifest's path
    fingerprint: str  # of the images and targets
    split_fingerprint: str
    sizes: dict[str, int]  # images per split: train, val, test, unlabeled
    unit: str  # the targets' unit ("g/cm²"; "" when a manifest does not say)
    # the labeled training targets' mean and SD (ddof=0, as the z-scoring); NaN in records
    # written before these fields
    target_mean: float = float("nan")
    target_sd: float = float("nan")


@dataclass(frozen=True)
class RunRecord:
    """A finished run: who it is, what it saw, what it measured (from the selected
    checkpoint), and how it ran. ``metrics``, ``selected_epoch`` and ``diagnostics`` are
    empty unless ``status`` is ``ok``."""

    name: str  # the run directory's name
    method: str
    backbone: str
    preset: str
    seed: int
    status: str  # one of STATUSES
    error: str | None  # why a run that is not ok stopped
    config: dict[str, Any]  # the resolved config (bmdbench.config.to_dict), the parent's in it
    config_hash: str  # bmdbench.identity.config_hash
    parent_run: str | None  # the stage-1 run's directory name (stage-2 methods)
    data: RecordData
    versions: dict[str, str]
    git_sha: str
    device: str
    created: str  # ISO 8601, UTC
    # {"val": {metric: value}, "test": {...}} (bmdbench.metrics.METRIC_KEYS)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    selected_epoch: int | None = None  # epochs before the selected checkpoint (0: the start)
    diagnostics: dict[str, float] = field(default_factory=dict)  # pseudo-label error, refreshes
    timings: dict[str, float] = field(default_factory=dict)  # total_s, train_s, images_per_s
    study: dict[str, Any] | None = None  # {"name", "trial"} of a search's trial
    format: int = FORMAT

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def stage(self) -> int:
        return 1 if self.config.get("parent") is None else 2

    def to_json(self) -> dict[str, Any]:
        """The on-disk form (JSON-able data)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "record") -> RunRecord:
        """Read a record of format 1; ``where`` names it in the error a broken one raises."""
        if data.get("format", FORMAT) != FORMAT:
            raise DataError(
                f"{where} has format {data.get('format')!r}, not {FORMAT}",
                "read it with the bmdbench version that wrote it, or run it again",
            )
        known = {f.name for f in fields(cls)}
        try:
            values = {k: v for k, v in data.items() if k in known}
            values["data"] = RecordData(**values["data"])
            values["metrics"] = values.get("metrics") or {}
            values["diagnostics"] = values.get("diagnostics") or {}
            values["timings"] = values.get("timings") or {}
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"{where} is not a complete run record ({exc})",
                "restore it, or delete its run folder so that the run is made again",
            ) from None
