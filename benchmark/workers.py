"""How many cells of a grid run at once on this machine (``--workers auto``), and how long the
remaining cells take on that many workers.

On a GPU every worker is a process with its own CUDA context: as many as the free GPU memory
holds (each a cell's measured peak, the images it keeps on the device and its context), at
most one per CPU core, since a worker's host thread launches its kernels. On a CPU, one worker
per core, each with one thread (:func:`threads_per_worker`): the small networks of ``quick``
keep two threads of one process busy for only part of a step.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from bmdbench.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from bmdbench.spec import RunSpec

GIB = 2**30
CONTEXT_BYTES = GIB  # a worker's CUDA context and cuDNN workspace beyond its cells' tensors
MEMORY_SHARE = 0.9  # of the free GPU memory, what the workers may fill together


def parse_workers(text: str) -> int | None:
    """``--workers``: a positive count, or ``auto`` (None: :func:`auto_workers` decides)."""
    if text == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(
            f"--workers {text} is neither a positive count nor auto",
            "give --workers 1 or more, or --workers auto",
        )
    return count


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Threads for each of ``workers`` processes sharing this machine's cores."""
    return max(1, cpu_cores() // workers)


def choose(free_bytes: int | None, cell_bytes: int, cores: int) -> int:
    """Workers for ``cores`` CPU cores and, on a GPU, ``free_bytes`` of free memory that each
    worker fills with ``cell_bytes`` (None: no GPU); at least one."""
    if free_bytes is None:
        return max(1, cores)
    return max(1, min(cores, int(free_bytes * MEMORY_SHARE) // max(1, cell_bytes)))


def auto_workers(cells: Sequence[RunSpec]) -> tuple[int, str]:
    """``--workers auto`` for ``cells``: the count, and a line that says why."""
    from bmdbench.trainer import resolve_device

    cores = cpu_cores()
    device = resolve_device(cells[0].device) if cells else None
    if device is None or device.type != "cuda":
        return choose(None, 0, cores), f"{cores} CPU cores, one thread each"
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    need = max(cell_gpu_bytes(cell, device) for cell in _distinct(cells)) + CONTEXT_BYTES
    count = choose(free, need, cores)
    return count, (
        f"{free / GIB:.1f} GiB of GPU memory free, {need / GIB:.2f} GiB a worker "
        f"(its largest cell's peak, images and context), {cores} CPU cores"
    )


def _distinct(cells: Sequence[RunSpec]) -> list[RunSpec]:
    """One cell of each method, backbone and preset (seeds and settings share a footprint)."""
    seen: dict[tuple[str, str, str], RunSpec] = {}
    for cell in cells:
        seen.setdefault((cell.method, cell.backbone, cell.preset), cell)
    return list(seen.values())


def cell_gpu_bytes(cell: RunSpec, device: torch.device) -> int:
    """GPU memory one run of ``cell`` needs: the peak of its method's training step on a
    resident batch of its stage (one step, cuDNN autotuning included) and the images its
    data module keeps on the device."""
    import torch

    from bmdbench.data import sources
    from bmdbench.data.module import resident_bytes
    from bmdbench.runner import build_method
    from bmdbench.speed import measure_limit, resident_batch
    from bmdbench.trainer import Trainer

    cfg = cell.config
    images, split = sources.load_inputs(cfg)
    method = build_method(cfg)
    stage = cfg.stage2 if method.stage == 2 else cfg.stage1
    labeled = stage.labeled_per_batch if method.stage == 2 else stage.batch_size
    trainer = Trainer(device, show_progress=False, amp=cfg.amp)
    size = (int(images.images.shape[1]), int(images.images.shape[2]))
    batch = resident_batch(trainer, stage.batch_size, size, labeled)
    peak = measure_limit(trainer, method, batch, 1, 0).peak_bytes or 0
    del method, batch
    torch.cuda.empty_cache()
    return peak + resident_bytes(images, split)


def makespan(cells: Sequence[RunSpec], seconds: Mapping[str, float], workers: int) -> float:
    """Seconds until the last of ``cells`` ends on ``workers`` workers, each cell taking its
    ``seconds`` (a cell without any is done already). As :meth:`CellQueue.take
    <bmdbench.dispatch.CellQueue.take>`, a free worker takes the first queued cell whose
    stage-1 parent has ended, and waits while none has."""
    queue = [cell for cell in cells if cell.key in seconds]
    ended: set[str] = {cell.key for cell in cells if cell.key not in seconds}
    running: list[tuple[float, str]] = []  # (end, key), a heap
    clock = 0.0
    while queue or running:
        ready = next((c for c in queue if _parent_key(c) in (None, *ended)), None)
        if ready is not None and len(running) < workers:
            queue.remove(ready)
            heapq.heappush(running, (clock + seconds[ready.key], ready.key))
            continue
        if not running:  # a cell whose parent is not in the grid: it never becomes ready
            break
        clock, key = heapq.heappop(running)
        ended.add(key)
    return clock


def _parent_key(cell: RunSpec) -> str | None:
    parent = cell.parent()
    return parent.key if parent is not None else None
