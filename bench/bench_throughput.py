"""Training throughput of bmdbench's Trainer against a plain reference loop, as a ratio.

The reference is the common way to write it: a torch DataLoader over per-sample
torchvision augmentation (the same affine, flip and brightness/contrast ranges),
float32, a fresh host→device copy per batch. Both train the same backbone with the
same optimiser and batch size on the same images, in this one process, for the same
number of epochs; the first epoch of each is a warm-up and is not timed.

    python bench/bench_throughput.py [--backbone vgg11_bn] [--size 64] [--images 512] [--epochs 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from bmdbench.backbones import build_backbone
from bmdbench.config import AugmentConfig, SplitConfig, StageConfig, SynthConfig
from bmdbench.data.augment import BatchAugment
from bmdbench.data.module import DataModule
from bmdbench.data.splits import make_split
from bmdbench.data.synthetic import load_synthetic
from bmdbench.methods import Regressor
from bmdbench.methods.supervised import Baseline
from bmdbench.trainer import Trainer, resolve_device, seed_everything


class PerSample(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, images: np.ndarray, targets: np.ndarray, aug: AugmentConfig) -> None:
        self.images, self.targets = images, targets.astype(np.float32)
        self.transform = v2.Compose(
            [
                v2.RandomAffine(
                    degrees=aug.rotation_deg,
                    translate=(aug.translate, aug.translate),
                    scale=(aug.scale_min, aug.scale_max),
                ),
                v2.RandomHorizontalFlip(aug.hflip),
                v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.images[i]).float().div(255).unsqueeze(0)
        return self.transform(x), torch.tensor(self.targets[i])


def reference(model: nn.Module, loader: DataLoader, device: torch.device, epochs: int) -> float:
    """Images per second of the plain loop, epochs after the first."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=4e-4)
    model.to(device).train()
    seen, start = 0, 0.0
    for epoch in range(epochs):
        if epoch == 1:
            start, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            _, pred = model(x)
            loss = nn.functional.mse_loss(pred, y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            seen += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg11_bn")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    n = args.images + 40
    images = load_synthetic(SynthConfig(n_labeled=n, n_patients=n, n_unlabeled=0), args.size)
    split = make_split(images, SplitConfig(val=20, test=20))
    aug = AugmentConfig()

    seed_everything(0)
    stage = StageConfig(epochs=1, lr=1e-4, lr_drop_epoch=None, batch_size=args.batch)
    method = Baseline(Regressor(build_backbone(args.backbone)), None)
    data = DataModule(images, split, device)
    trainer = Trainer(device, show_progress=False)
    generator = torch.Generator().manual_seed(0)
    trainer.fit(method, data, stage, BatchAugment(aug), generator)  # warm-up epoch
    stage = StageConfig(epochs=args.epochs - 1, lr=1e-4, lr_drop_epoch=None, batch_size=args.batch)
    fit = trainer.fit(method, data, stage, BatchAugment(aug), generator)
    ours = fit.images_seen / fit.train_seconds  # includes the per-epoch validation

    seed_everything(0)
    dataset = PerSample(images.images[split.train], images.targets[split.train], aug)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=0)
    plain = reference(Regressor(build_backbone(args.backbone)), loader, device, args.epochs)

    print(f"device {device}, {torch.get_num_threads()} threads, {args.backbone} at {args.size} px,")
    print(f"batch {args.batch}, {len(split.train)} training images, {args.epochs - 1} timed epochs")
    print(f"bmdbench Trainer : {ours:8.1f} images/s (validation after each epoch included)")
    print(f"plain reference  : {plain:8.1f} images/s")
    print(f"ratio            : {ours / plain:8.2f}x")


if __name__ == "__main__":
    main()
