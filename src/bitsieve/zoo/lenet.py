"""A LeNet-5-style CNN for MNIST, trained by us (no pretrained package exists offline); the
checked-in `lenet_mnist.pt` is what `scripts/train_lenet.py` produces with `train()`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bitsieve.data import mnist
from bitsieve.errors import UserError

CHECKPOINT = Path(__file__).with_name("lenet_mnist.pt")
MEAN, STD = 0.1307, 0.3081  # MNIST training-set pixel statistics on 0..1


class LeNet(nn.Module):
    """conv 1->6 k5 (pad 2), pool, conv 6->16 k5, pool, linear 400->120->84->10, ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 [n,28,28] -> normalised float [n,1,28,28]."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)
    return ((x - MEAN) / STD).unsqueeze(1)


def load() -> LeNet:
    """The network with the checked-in MNIST weights."""
    module = LeNet()
    module.load_state_dict(torch.load(CHECKPOINT, map_location="cpu", weights_only=True), strict=True)
    return module.eval()


def accuracy(module: nn.Module, split: str = "test", batch: int = 1000) -> float:
    """Top-1 accuracy on a full MNIST split."""
    images, labels = mnist(split)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            pred = module(preprocess(images[i : i + batch])).argmax(1).numpy()
            correct += int((pred == labels[i : i + batch]).sum())
    return correct / len(images)


def train(epochs: int = 2, seed: int = 0, batch: int = 64, lr: float = 1e-3) -> LeNet:
    """Train from scratch on the 60k MNIST training images with Adam; same seed, same weights
    (on one thread: set OMP_NUM_THREADS=1 for a bit-exact rerun)."""
    if epochs < 1:
        raise UserError(f"epochs must be at least 1 (got {epochs})")
    torch.manual_seed(seed)
    images, labels = mnist("train")
    x, y = preprocess(images), torch.from_numpy(labels)
    module = LeNet()
    optimiser = torch.optim.Adam(module.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            optimiser.zero_grad()
            nn.functional.cross_entropy(module(x[idx]), y[idx]).backward()
            optimiser.step()
    return module.eval()


def sample_input(n: int = 1) -> torch.Tensor:
    """The first n MNIST test images, preprocessed."""
    images, _ = mnist("test")
    if n > len(images):
        raise UserError(f"only {len(images)} MNIST test images are available (asked for {n})")
    return preprocess(images[:n])
