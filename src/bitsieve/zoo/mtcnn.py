"""The three MTCNN face-detector stages with facenet-pytorch's module names, so its `data/*.pt`
state dicts load strictly; facenet-pytorch itself is never imported (it needs torchvision)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bitsieve.data import faces, package_dir
from bitsieve.errors import UserError

#: input side of each stage: PNet is fully convolutional, 12 is its training window
SIZES = {"pnet": 12, "rnet": 24, "onet": 48}


class PNet(nn.Module):
    """Proposal net: returns (box regression [n,4,h,w], face probability map [n,2,h,w])."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        prob = torch.softmax(self.conv4_1(x), dim=1)
        return self.conv4_2(x), prob


class RNet(nn.Module):
    """Refinement net on 24x24 crops: returns (box regression [n,4], face probability [n,2])."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # the weights come from Caffe, which flattens (W, H, C): keep its order
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        prob = torch.softmax(self.dense5_1(x), dim=1)
        return self.dense5_2(x), prob


class ONet(nn.Module):
    """Output net on 48x48 crops: returns (box regression [n,4], landmarks [n,10], face probability [n,2])."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        prob = torch.softmax(self.dense6_1(x), dim=1)
        return self.dense6_2(x), self.dense6_3(x), prob


NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def load(stage: str) -> nn.Module:
    """One stage with facenet-pytorch's weights (read from its folder, loaded strictly)."""
    path = package_dir("facenet_pytorch", "facenet-pytorch==2.6.0") / "data" / f"{stage}.pt"
    module = NETS[stage]()
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return module.eval()


def preprocess(images: np.ndarray, stage: str) -> torch.Tensor:
    """uint8 images [n,H,W] (grey) or [n,H,W,3] (RGB) -> [n,3,S,S] resized with area averaging
    and scaled (x - 127.5) / 128, exactly as facenet-pytorch feeds its stages."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    size = SIZES[stage]
    x = nn.functional.interpolate(x, size=(size, size), mode="area")
    return (x - 127.5) * 0.0078125


def face_probability(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Face probability per image (for PNet, its maximum over the output map)."""
    with torch.no_grad():
        prob = module(x)[-1][:, 1]
    return prob.flatten(1).amax(1).numpy() if prob.ndim > 1 else prob.numpy()


def sample_input(n: int = 1, stage: str = "rnet") -> torch.Tensor:
    """The first n LFW subset images (faces first), resized for this stage."""
    images, _ = faces()
    if n > len(images):
        raise UserError(f"only {len(images)} LFW sample images are available (asked for {n})")
    return preprocess(images[:n], stage)
