"""How many images per second a grid trains with 1, 2, … workers on this machine.

For each worker count, the same small grid (``bmdbench grid`` with the options given after
``--``, into a fresh folder, so nothing is reused) is run and timed; its aggregate
throughput is every run's trained images (images/s × training seconds, from the records)
over the grid's wall time. ``--workers auto`` chooses from the cores (and on a GPU its free
memory): compare its choice with the counts measured here.

    python bench/bench_workers.py --workers 1,2 -- --methods baseline,pi_model \\
        --backbones vgg11_bn --seeds 2 --preset quick --set stage1.epochs=4 --device cpu
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bmdbench import store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("grid", nargs=argparse.REMAINDER, help="-- then bmdbench grid's options")
    args = parser.parse_args()
    options = [a for a in args.grid if a != "--"]
    print("workers  runs   wall s   images   images/s together")
    for count in args.workers.split(","):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "results"
            command = [sys.executable, "-m", "bmdbench.cli", "grid", *options]
            started = time.perf_counter()
            subprocess.run(
                [*command, "--workers", count, "--out", str(out)],
                check=True,
                capture_output=True,
            )
            wall = time.perf_counter() - started
            records = [r for r in store.iter_records(out) if r.ok]
            images = sum(r.timings["images_per_s"] * r.timings["train_s"] for r in records)
            print(
                f"{count:>7}  {len(records):>4}  {wall:>7.1f}  {images:>7.0f}  {images / wall:>10.1f}"
            )


if __name__ == "__main__":
    main()
