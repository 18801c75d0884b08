"""Time the decode-once cache: a cold load (decode every image) against a warm one.

Usage: ``python bench/bench_cache.py [MANIFEST] [--size N]``. Uses a fresh
temporary cache folder, loads the manifest twice in one process and prints
both times and their ratio. The default manifest is the 4,000-image RSNA
bone-age sample next to the repository (``../shared/data/rsna-boneage-100px``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bmdbench.data.manifest import load_manifest

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared/data/rsna-boneage-100px/manifest.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", nargs="?", type=Path, default=DEFAULT)
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
