"""Time the decode-once cache: a cold load (decode every image) against a warm one.

Usage: ``python bench/bench_cache.py MANIFEST [--size N]``. Uses a fresh
temporary cache folder, loads the manifest twice in one process and prints
both times and their ratio. Any manifest works; the figures in docs/speed.md
are for 4,000 RSNA bone-age radiographs (100 px PNGs).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bmdbench.data.manifest import load_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path, help="a manifest CSV (README, the manifest)")
    parser.add_argument("--size", type=int, default=64, help="image side after resizing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache_dir:
        times = []
        for _ in range(2):
            start = time.perf_counter()
            images = load_manifest(args.manifest, args.size, cache_dir=Path(cache_dir))
            times.append(time.perf_counter() - start)
    cold, warm = times
    print(f"{args.manifest}: {len(images)} images at {args.size} px, {images.images.dtype}")
    print(f"first load (decode all): {cold:.3f} s")
    print(f"second load (warm cache): {warm:.3f} s")
    print(f"ratio first/second: {cold / warm:.1f}×")


if __name__ == "__main__":
    main()
