"""Real sample photos and the ImageNet transform shared by the image families of the zoo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bitsieve import data
from bitsieve.data import require
from bitsieve.errors import UserError

#: Real photos bundled with scikit-image / scikit-learn, so image models get real inputs offline.
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "stereo_motorcycle", "camera", "china.jpg", "flower.jpg")


def photo(name: str) -> Image.Image:
    """One bundled photo as RGB PIL image."""
    if name.endswith(".jpg"):
        datasets = require("sklearn.datasets", "scikit-learn")
        images = datasets.load_sample_images()
        index = [Path(f).name for f in images.filenames].index(name)
        return Image.fromarray(images.images[index])
    skdata = require("skimage.data", "scikit-image")
    array = getattr(skdata, name)()
    if isinstance(array, tuple):  # stereo pairs: keep the left view
        array = array[0]
    return Image.fromarray(array).convert("RGB")


def sample_photos(n: int) -> list[Image.Image]:
    """n real photos: ImageNet validation images when ../shared is there, else bundled photos."""
    root = data.shared_path("imagenet-val-1300")
    if root.is_dir():
        images = [image for image, _ in data.imagenet_subset(root, limit=n)]
    else:
        images = [photo(name) for name in PHOTOS[:n]]
    if len(images) < n:
        raise UserError(f"only {len(images)} sample photos are available (asked for {n})")
    return images


def imagenet_tensor(
    images: list[Image.Image], resize: int, crop: int, mean: tuple[float, ...], std: tuple[float, ...],
    resample: int = Image.BILINEAR,
) -> torch.Tensor:
    """The usual ImageNet evaluation transform (shorter side to `resize` with `resample`, centre crop
    `crop`), then (x - mean) / std on 0..255 RGB; returns [n, 3, crop, crop] float32."""
    out = np.empty((len(images), crop, crop, 3), dtype=np.float32)
    for i, image in enumerate(images):
        image = image.convert("RGB")
        w, h = image.size
        scale = resize / min(w, h)
        w, h = max(crop, round(w * scale)), max(crop, round(h * scale))
        image = image.resize((w, h), resample)
        left, top = (w - crop) // 2, (h - crop) // 2
        out[i] = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32)
    out = (out - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
