"""The plain supervised loop a competent researcher writes in an afternoon: the reference
that ``bmdbench run --method baseline`` must not lose to (see bench/compare_reference.py).

It shares nothing with bmdbench's engine: PIL decoding, a torch Dataset with per-image
torchvision transforms (affine, flip), a DataLoader, torchvision's network (timm's for names
torchvision lacks) with a one-output head, Adam with weight decay and a cosine schedule,
z-scored targets, and the epoch with the best validation Pearson R scored once on test.

    python bench/reference_supervised.py MANIFEST.csv --split SPLIT.json \\
        --network resnet18 --size 32 --epochs 20 --lr 1e-3 --weight-decay 1e-4

``--split`` is a bmdbench run's ``split.json`` (image ids per split), so both loops see
the same images; without it, a seeded random split by patient with --n-val/--n-test.
The rate is the caller's to choose on validation: bench/compare_reference.py searches it
for both loops, on the dataset at hand.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2


def build_network(name: str) -> nn.Module:
    """A single-channel regressor as a plain script builds it: torchvision's network where
    torchvision has one (its first convolution made single-channel; VGG's 4096-wide
    classifier replaced by global pooling, as in the paper), timm's for any other name."""
    if name.startswith("vgg"):
        features = getattr(torchvision.models, name)().features
        features[0] = nn.Conv2d(1, 64, kernel_size=3, padding=1)
        return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1))
    if name.startswith("resnet"):
        model = getattr(torchvision.models, name)(num_classes=1)
        model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        return model
    return timm.create_model(name, pretrained=False, num_classes=1, in_chans=1)


class Radiographs(Dataset):
    def __init__(self, images: torch.Tensor, targets: np.ndarray, train: bool) -> None:
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.float32)
        self.transform = (
            v2.Compose(
                [
                    v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1)),
                    v2.RandomHorizontalFlip(),
                ]
            )
            if train
            else None
        )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i]


def load(manifest: Path, size: int) -> tuple[pd.DataFrame, torch.Tensor]:
    frame = pd.read_csv(manifest)
    frame = frame[frame["target"].notna()].reset_index(drop=True)
    pixels = []
    for path in frame["image"]:
        image = Image.open(manifest.parent / path).convert("L").resize((size, size))
        pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))
    return frame, torch.stack(pixels)[:, None]


def split_ids(frame: pd.DataFrame, args: argparse.Namespace) -> dict[str, list[str]]:
    if args.split is not None:
        split = json.loads(Path(args.split).read_text())
        return {part: split[part] for part in ("train", "val", "test")}
    rng = np.random.default_rng(args.seed)
    patients = rng.permutation(frame["patient_id"].unique())
    counts = frame.groupby("patient_id").size()
    parts: dict[str, list[str]] = {"test": [], "val": [], "train": []}
    filled = {"test": 0, "val": 0}
    for patient in patients:
        part = next((p for p in ("test", "val") if filled[p] < getattr(args, f"n_{p}")), "train")
        filled[part] = filled.get(part, 0) + int(counts[patient])
        parts[part] += frame.loc[frame["patient_id"] == patient, "image"].tolist()
    return parts


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--split", type=Path, help="a bmdbench run's split.json")
    parser.add_argument("--network", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-val", type=int, default=150)
    parser.add_argument("--n-test", type=int, default=500)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    frame, images = load(args.manifest, args.size)
    ids = split_ids(frame, args)
    position = {name: i for i, name in enumerate(frame["image"])}
    index = {part: np.array([position[i] for i in ids[part]]) for part in ids}
    targets = frame["target"].to_numpy(np.float64)
    mean, sd = targets[index["train"]].mean(), targets[index["train"]].std()

    def loader(part: str, train: bool) -> DataLoader:
        z = (targets[index[part]] - mean) / sd
        return DataLoader(
            Radiographs(images[index[part]], z, train), batch_size=args.batch, shuffle=train
        )

    model = build_network(args.network)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=args.epochs)
    train = loader("train", True)

    @torch.no_grad()
    def predict(part: str) -> np.ndarray:
        model.eval()
        z = torch.cat([model(x).squeeze(1) for x, _ in loader(part, False)]).numpy()
        return z * sd + mean

    best_r, best_state, val_rs = -np.inf, None, []
    for _ in range(args.epochs):
        model.train()
        for x, y in train:
            loss = nn.functional.mse_loss(model(x).squeeze(1), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        schedule.step()
        val = predict("val")
        r = pearson(targets[index["val"]], val)
        val_rs.append(round(r, 5))
        if r > best_r:
            best_r, best_val = r, val
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    test = predict("test")
    truth = targets[index["test"]]
    result = {
        "test_r": pearson(truth, test),
        "test_rmse": float(np.sqrt(np.mean((truth - test) ** 2))),
        "val_r": best_r,
        "val_rmse": float(np.sqrt(np.mean((targets[index["val"]] - best_val) ** 2))),
        "val_r_by_epoch": val_rs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
