"""How accurate, not only how correlated, the checkpoints a store's runs selected are.

For each finished run of one method (and backbone, and data) under ``OUT/runs``: its
selected epoch, the validation bias of that checkpoint (mean prediction − target, in SDs of
the validation targets, with its standard error over the validation images) and its
validation RMSE over the lowest of any epoch. Then the mean bias over the seeds, with the
standard error over seeds.

The acceptance rule it reports (README, "The supervised loop"): the **mean over seeds** of
the selected checkpoints' validation bias within ±0.1 SD, and every seed's validation RMSE
within 5 % of its best epoch's. A single seed's bias is measured on the validation images
(90 on the phantoms, 150 on RSNA here) with a standard error of about 0.07 SD: a bound of
0.1 SD on each seed would fail a fifth of unbiased seeds by sampling alone, so each seed's
bias is printed with its standard error instead of being held to the bound.

    python bench/checkpoint_calibration.py --out results --method baseline
    python bench/checkpoint_calibration.py --out results --method baseline \\
        --backbone resnet18 --data manifest.csv --n-train 440

Reads validation only: test predictions are never opened.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bmdbench.rendering import data_name
from bmdbench.results import load_runs

BIAS_BOUND = 0.1  # |mean bias| over seeds, in SDs of the validation targets
RMSE_BOUND = 1.05  # a selected checkpoint's validation RMSE over its best epoch's


def calibration(run_dir: Path, selected: int) -> dict[str, float]:
    """The selected checkpoint's validation bias (in SDs of the validation targets) and its
    standard error, and its validation RMSE over the best epoch's."""
    val = pd.read_csv(run_dir / "predictions_val.csv")
    residual = val["prediction"] - val["target"]
    sd = float(val["target"].std(ddof=1))
    lines = (run_dir / "epochs.jsonl").read_text().splitlines()
    rmse = {e["epoch"]: e["val_rmse"] for e in map(json.loads, filter(str.strip, lines))}
    return {
        "bias_sd": float(residual.mean()) / sd,
        "bias_se": float(residual.std(ddof=1)) / np.sqrt(len(residual)) / sd,
        "rmse_ratio": rmse.get(selected, np.nan) / min(rmse.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--method", default="baseline")
    parser.add_argument("--backbone", default="vgg11_bn_se")
    parser.add_argument("--data", default="synthetic", help="synthetic, or a manifest's file name")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--n-train", type=int, help="only runs with this many labeled images")
    args = parser.parse_args()

    runs = load_runs(args.out)
    mine = runs[
        (runs["method"] == args.method)
        & (runs["backbone"] == args.backbone)
        & (runs["preset"] == args.preset)
        & (runs["status"] == "ok")
        & (runs["data_source"].map(data_name) == args.data)
        & ((runs["n_train"] == args.n_train) if args.n_train is not None else True)
    ]
    if mine.empty:
        raise SystemExit(f"error: no finished {args.method} runs of that kind under {args.out}")
    rows = []
    for _, run in mine.sort_values(["split_fingerprint", "seed"]).iterrows():
        # a stage-1 run selects among its epochs (1…); a stage-2 run's epoch 0 is its parent
        numbers = calibration(Path(run["run_dir"]), int(run["selected_epoch"]))
        rows.append({"seed": run["seed"], "epoch": run["selected_epoch"], **numbers})
        print(
            f"seed {run['seed']}  split {run['split_fingerprint'][:8]}  epoch "
            f"{run['selected_epoch']:>2}  validation bias {numbers['bias_sd']:+.3f} SD "
            f"(SE {numbers['bias_se']:.3f})  RMSE {numbers['rmse_ratio']:.3f} × the best epoch's"
        )
    table = pd.DataFrame(rows)
    mean, n = table["bias_sd"].mean(), len(table)
    se = table["bias_sd"].std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
    worst = table["rmse_ratio"].max()
    met = abs(mean) <= BIAS_BOUND and worst <= RMSE_BOUND
    print(
        f"{args.method} · {args.backbone} · {args.data}: {n} seeds, mean validation bias "
        f"{mean:+.3f} SD (SE over seeds {se:.3f}), worst RMSE ratio {worst:.3f}: "
        f"rule {'met' if met else 'NOT met'} (|mean bias| ≤ {BIAS_BOUND} SD, "
        f"RMSE ≤ {RMSE_BOUND:g} × best)"
    )


if __name__ == "__main__":
    main()
