"""``bmdbench data check``: validate a manifest and summarise what it holds."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from bmdbench.data.images import read_header
from bmdbench.data.manifest import load_manifest, read_manifest

_SPARKS = "▁▂▃▄▅▆▇█"
_TOP_SIZES = 5  # distinct image sizes listed before "others"
HIST_BINS = 10


@dataclass(frozen=True)
class TargetStats:
    """Distribution of the labeled targets; ``histogram`` counts ``HIST_BINS`` equal bins."""

    min: float
    max: float
    mean: float
    std: float  # sample standard deviation (ddof=1; 0 for a single value)
    histogram: tuple[int, ...]


@dataclass(frozen=True)
class ManifestSummary:
    """What a valid manifest holds. Counts are images unless named otherwise."""

    path: str
    images: int
    labeled: int  # images with a target that methods may see
    unlabeled: int  # no target, or split "unlabeled"
    patients: int
    splits: dict[str, int] | None  # images per `split` value ("" = empty cell); None: no column
    targets: TargetStats | None  # None when no image is labeled
    unit: str  # the targets' unit (the `unit` column); "" when not given
    sizes: tuple[tuple[str, int], ...]  # ("W×H", images), most frequent first, then ("others", n)
    bit_depths: dict[int, int]  # bits per sample → images
    formats: dict[str, int]  # "PNG", "JPEG", "TIFF", "DICOM", ... → images


def check_manifest(
    path: str | Path,
    image_size: int = 64,
    unlabeled: str | Path | None = None,
    cache_dir: Path | None = None,
) -> ManifestSummary:
    """Validate ``path`` exactly as :func:`load_manifest` does (decoding every image at
    ``image_size`` through the cache, which warms it) and summarise it.

    Raises the same :class:`~bmdbench.errors.DataError` a run would. Sizes, bit
    depths and formats are those of the original files of the manifest (not of
    ``unlabeled``), read from their headers.
    """
    rows = read_manifest(path)
    images = load_manifest(path, image_size, unlabeled=unlabeled, cache_dir=cache_dir)
    headers = [read_header(p) for p in rows["image"]]
    has_split = (rows["split"] != "").any()
    labeled = images.targets[images.labeled]
    size_counts = Counter(f"{h.width}×{h.height}" for h in headers).most_common()
    sizes = size_counts[:_TOP_SIZES]
    if len(size_counts) > _TOP_SIZES:
        sizes.append(("others", sum(n for _, n in size_counts[_TOP_SIZES:])))
    return ManifestSummary(
        path=str(path),
        images=len(images),
        labeled=len(labeled),
        unlabeled=len(images) - len(labeled),
        patients=len(set(images.patient_ids.tolist())),
        splits=dict(Counter(rows["split"]).most_common()) if has_split else None,
        targets=_target_stats(labeled) if len(labeled) else None,
        unit=images.unit,
        sizes=tuple(sizes),
        bit_depths=dict(sorted(Counter(h.bits for h in headers).items())),
        formats=dict(Counter(h.format for h in headers).most_common()),
    )


def _target_stats(values: np.ndarray) -> TargetStats:
    counts, _ = np.histogram(values, bins=HIST_BINS)
    return TargetStats(
        min=float(values.min()),
        max=float(values.max()),
        mean=float(values.mean()),
        std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        histogram=tuple(int(c) for c in counts),
    )


def sparkline(counts: tuple[int, ...]) -> str:
    """One block character per count, scaled to the largest (a zero count is a space)."""
    top = max(counts, default=0) or 1
    return "".join(
        " " if c == 0 else _SPARKS[math.ceil(c / top * len(_SPARKS)) - 1] for c in counts
    )


def render_summary(summary: ManifestSummary) -> Table:
    """The summary as a two-column rich table."""
    table = Table(title=f"manifest {summary.path}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row(
        "images", f"{summary.images} ({summary.labeled} labeled, {summary.unlabeled} unlabeled)"
    )
    table.add_row("patients", str(summary.patients))
    splits = "none given"
    if summary.splits is not None:
        splits = ", ".join(f"{name or '(empty)'} {n}" for name, n in summary.splits.items())
    table.add_row("split column", splits)
    if summary.targets is None:
        table.add_row("targets", "none")
    else:
        t = summary.targets
        table.add_row(
            "targets", f"min {t.min:.4g}  max {t.max:.4g}  mean {t.mean:.4g}  std {t.std:.4g}"
        )
        table.add_row(
            "histogram",
            f"{t.min:.4g} ▕{sparkline(t.histogram)}▏ {t.max:.4g}  "
            f"({' '.join(str(c) for c in t.histogram)})",
        )
    table.add_row("unit", summary.unit or "not given (add a `unit` column)")
    table.add_row("image sizes", ", ".join(f"{size} ({n})" for size, n in summary.sizes))
    table.add_row(
        "bit depths", ", ".join(f"{bits}-bit ({n})" for bits, n in summary.bit_depths.items())
    )
    table.add_row("formats", ", ".join(f"{name} ({n})" for name, n in summary.formats.items()))
    return table
