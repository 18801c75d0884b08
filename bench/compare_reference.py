"""bmdbench's supervised baseline against a plain script, each at its validation-chosen rate.

For each network, rate and seed: ``bmdbench run --method baseline --preset quick`` on the
data with ``--set stage1.lr=RATE --set stage1.weight_decay=WD``, then
bench/reference_supervised.py on the same split (the run's split.json), network, image size,
epochs, rate and weight decay. Each loop's rate is the one with the best mean **validation**
R over the seeds (a search of the same size for both); the comparison is on validation R at
those rates. Test R is printed beside it, and decides nothing. bmdbench must not lose:
its validation R ≥ the script's − 0.01. Beside the selected epoch's validation R, each row
and the summary give the mean validation R of the last epochs (:data:`LAST`), which carries
no selection optimism.

    python bench/compare_reference.py --data phantoms --networks vgg11_bn
    python bench/compare_reference.py --data DATA/manifest.csv --networks resnet18 \\
        --n-labeled 440 --n-val 150 --n-test 500

One line of JSON per run as it finishes, then a summary line per network.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bmdbench import store
from bmdbench.spec import resolve


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, done.stdout


def run_pair(
    args: argparse.Namespace, manifest: str, network: str, lr: str, seed: int, work: Path
) -> dict[str, object]:
    """bmdbench's baseline and the script at one rate and seed, on the same split."""
    quick = resolve("baseline", "tiny", "quick")
    sizes = [
        f"--{name.replace('_', '-')}={getattr(args, name)}"
        for name in ("n_labeled", "n_val", "n_test")
        if getattr(args, name) is not None
    ]
    if args.data == "phantoms":
        sizes = sizes or [f"--n-val={quick.split.val:g}", f"--n-test={quick.split.test:g}"]
    seconds, stdout = timed(
        [
            *["bmdbench", "run", "--method", "baseline", "--backbone", network],
            *["--preset", "quick", "--data", manifest, "--seed", str(seed)],
            *["--set", f"stage1.lr={lr}", "--set", f"stage1.weight_decay={args.weight_decay}"],
            *["--out", str(work / "out"), "--quiet", *sizes],
        ]
    )
    run_dir = Path(stdout.strip().splitlines()[-1])
    record = store.read_record(run_dir)
    assert record is not None
    ref_seconds, ref_out = timed(
        [
            *[sys.executable, str(Path(__file__).with_name("reference_supervised.py")), manifest],
            *["--split", str(run_dir / "split.json"), "--network", network],
            *["--size", str(quick.image_size), "--epochs", str(quick.stage1.epochs)],
            *["--seed", str(seed), "--lr", lr, "--weight-decay", str(args.weight_decay)],
        ]
    )
    reference = json.loads(ref_out.strip().splitlines()[-1])
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    return {
        "network": network,
        "lr": float(lr),
        "seed": seed,
        "bmdbench_val_r": record.metrics["val"]["pearson_r"],
        "reference_val_r": reference["val_r"],
        "bmdbench_test_r": record.metrics["test"]["pearson_r"],
        "reference_test_r": reference["test_r"],
        "bmdbench_val_r_last": last_mean([e["val_pearson_r"] for e in epochs]),
        "reference_val_r_last": last_mean(reference["val_r_by_epoch"]),
        "bmdbench_s": round(seconds, 1),
        "reference_s": round(ref_seconds, 1),
    }


LAST = 5
"""Epochs averaged by the second validation measure: the best epoch's R is the maximum of
noisy values, so a loop whose validation curve is noisier gains more from selecting it."""


def last_mean(curve: list[float]) -> float:
    """The mean validation R over the last :data:`LAST` epochs."""
    return round(float(np.mean(curve[-LAST:])), 4)


def summarise(rows: list[dict[str, object]], network: str) -> dict[str, object]:
    """Each loop at the rate with its best mean validation R; the verdict on validation."""
    mine = [r for r in rows if r["network"] == network]
    rates = sorted({float(r["lr"]) for r in mine})  # type: ignore[arg-type]

    def mean(loop: str, part: str, lr: float) -> float:
        return float(np.mean([r[f"{loop}_{part}_r"] for r in mine if r["lr"] == lr]))

    out: dict[str, object] = {"network": network}
    for loop in ("bmdbench", "reference"):
        best = max(rates, key=lambda lr, loop=loop: mean(loop, "val", lr))
        out |= {
            f"{loop}_lr": best,
            f"{loop}_val_r": round(mean(loop, "val", best), 4),
            f"{loop}_val_r_last": round(
                float(np.mean([r[f"{loop}_val_r_last"] for r in mine if r["lr"] == best])), 4
            ),
            f"{loop}_test_r": round(mean(loop, "test", best), 4),
        }
    margin = float(out["bmdbench_val_r"]) - float(out["reference_val_r"])  # type: ignore[arg-type]
    return out | {"val_r_difference": round(margin, 4), "passes": margin >= -0.01}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="phantoms", help="'phantoms' or a manifest CSV")
    parser.add_argument("--networks", default="vgg11_bn")
    parser.add_argument("--lrs", default="3e-4,1e-3,3e-3", help="the rates both loops search")
    parser.add_argument("--weight-decay", default="1e-4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--n-labeled")
    parser.add_argument("--n-val")
    parser.add_argument("--n-test")
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
    rows = []
    networks = args.networks.split(",")
    for network in networks:
        for seed in (int(s) for s in args.seeds.split(",")):
            for lr in args.lrs.split(","):
                rows.append(run_pair(args, manifest, network, lr, seed, work))
                print(json.dumps(rows[-1]), flush=True)
    for network in networks:
        print(json.dumps(summarise(rows, network)), flush=True)


if __name__ == "__main__":
    main()
