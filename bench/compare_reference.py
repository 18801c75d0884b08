"""bmdbench's supervised baseline against the plain reference loop, same data and budget.

For each network: ``bmdbench run --method baseline --preset quick`` on the manifest, then
bench/reference_supervised.py on the same split (the run's split.json), network, image
size and epoch count. Prints both test Rs, both wall times (whole commands, start-up and
decoding included) and their ratio. bmdbench must not lose: R ≥ the reference's − 0.01 at a
time ratio ≤ 1.1.

    python bench/compare_reference.py --data phantoms --networks vgg11_bn
    python bench/compare_reference.py --data ../shared/data/rsna-boneage-100px/manifest.csv \\
        --networks resnet18,vgg11_bn --n-labeled 440 --n-val 150 --n-test 500
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bmdbench import store
from bmdbench.spec import resolve


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="phantoms", help="'phantoms' or a manifest CSV")
    parser.add_argument("--networks", default="vgg11_bn")
    parser.add_argument("--n-labeled")
    parser.add_argument("--n-val")
    parser.add_argument("--n-test")
    parser.add_argument("--seed", default="0")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bmdbench-reference-"))
    manifest = args.data
    if args.data == "phantoms":  # the quick preset's embedded phantoms, written as PNGs
        subprocess.run(
            ["bmdbench", "data", "synth", "--preset", "quick", "--out", str(work / "synth")],
            check=True,
            capture_output=True,
        )
        manifest = str(work / "synth" / "manifest.csv")
    quick = resolve("baseline", "tiny", "quick")
    sizes = [
        f"--{name.replace('_', '-')}={getattr(args, name)}"
        for name in ("n_labeled", "n_val", "n_test")
        if getattr(args, name) is not None
    ]
    if args.data == "phantoms":
        sizes = sizes or [f"--n-val={quick.split.val:g}", f"--n-test={quick.split.test:g}"]
    rows = []
    for network in args.networks.split(","):
        seconds, stdout = timed(
            [
                *["bmdbench", "run", "--method", "baseline", "--backbone", network],
                *["--preset", "quick", "--data", manifest, "--seed", args.seed],
                *["--out", str(work / "out"), "--quiet", *sizes],
            ]
        )
        run_dir = Path(stdout.strip().splitlines()[-1])
        record = store.read_record(run_dir)
        assert record is not None
        ref_seconds, ref_out = timed(
            [
                *[
                    sys.executable,
                    str(Path(__file__).with_name("reference_supervised.py")),
                    manifest,
                ],
                *["--split", str(run_dir / "split.json"), "--network", network],
                *["--size", str(quick.image_size), "--epochs", str(quick.stage1.epochs)],
                *["--seed", args.seed],
            ]
        )
        reference = json.loads(ref_out.strip().splitlines()[-1])
        rows.append(
            {
                "network": network,
                "bmdbench_test_r": round(record.metrics["test"]["pearson_r"], 4),
                "reference_test_r": round(reference["test_r"], 4),
                "bmdbench_s": round(seconds, 1),
                "reference_s": round(ref_seconds, 1),
                "time_ratio": round(seconds / ref_seconds, 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"data {args.data}, epochs {quick.stage1.epochs}, {quick.image_size} px, seed {args.seed}"
    )


if __name__ == "__main__":
    main()
