"""Draw ``docs/phantoms.png``: synthetic hip phantoms at low, middle and high BMD.

Usage: ``python bench/make_phantom_figure.py [--out docs/phantoms.png] [--size 128]``.
Renders 80 labeled phantoms of the embedded generator (seed 0) and shows, per
row, the four with the lowest, the most typical and the highest true BMD.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bmdbench.config import SynthConfig
from bmdbench.data.synthetic import BMD_MEAN, UNIT, synthesize

PER_ROW = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parents[1] / "docs" / "phantoms.png"
    )
    parser.add_argument("--size", type=int, default=128, help="image side, pixels")
    args = parser.parse_args()

    phantoms = synthesize(
        SynthConfig(n_labeled=80, n_patients=80, n_unlabeled=0, seed=0), args.size
    )
    order = np.argsort(phantoms.truth)
    typical = np.argsort(np.abs(phantoms.truth - BMD_MEAN))[:PER_ROW]
    rows = {
        "low BMD": order[:PER_ROW],
        "middle BMD": typical[np.argsort(phantoms.truth[typical])],
        "high BMD": order[-PER_ROW:],
    }
    fig, axes = plt.subplots(len(rows), PER_ROW, figsize=(2.2 * PER_ROW, 2.45 * len(rows)))
    for (label, picks), row in zip(rows.items(), axes, strict=True):
        for i, ax in zip(picks, row, strict=True):
            ax.imshow(phantoms.images[i], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{phantoms.truth[i]:.2f} {UNIT}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(label, fontsize=10)
    fig.suptitle(f"Synthetic femoral-neck phantoms, {args.size} px, titled with true BMD")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
