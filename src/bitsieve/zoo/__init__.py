"""Built-in real models: each loads offline from an installed package (or our checkpoint) and
comes with real sample inputs, so every command can run on a real network out of the box."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from bitsieve.errors import UserError
from bitsieve.zoo import efficientnet, lenet, minilm, mobilenet, mtcnn


@dataclass(frozen=True)
class Builtin:
    """A named real model: how to load it and how to get real inputs for it."""

    name: str
    description: str
    task: str  # 'imagenet' | 'mnist' | 'faces' | 'stsb'
    params: int  # parameter count of the loaded module
    loader: Callable[[], torch.nn.Module] = field(repr=False, compare=False)
    sampler: Callable[[int], Any] = field(repr=False, compare=False)

    def load(self) -> torch.nn.Module:
        """The module in eval mode, float32, weights loaded."""
        return self.loader().float().eval()

    def sample_input(self, n: int = 1) -> Any:
        """n real inputs, preprocessed, ready for `module(x)`."""
        if n < 1:
            raise UserError(f"the number of sample inputs must be at least 1 (got {n})")
        return self.sampler(n)


def _efficientnet(variant: str, params: int) -> Builtin:
    return Builtin(
        f"efficientnet-{variant}",
        f"EfficientNet-{variant.capitalize()} ImageNet classifier ({efficientnet.SIZES[variant]}px, ReLU6)",
        "imagenet",
        params,
        partial(efficientnet.load, variant),
        partial(efficientnet.sample_input, variant=variant),
    )


def _mtcnn(stage: str, params: int, what: str) -> Builtin:
    return Builtin(
        f"mtcnn-{stage}",
        f"MTCNN {what} stage, face/non-face on {mtcnn.SIZES[stage]}x{mtcnn.SIZES[stage]} crops (PReLU CNN)",
        "faces",
        params,
        partial(mtcnn.load, stage),
        partial(mtcnn.sample_input, stage=stage),
    )


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        _efficientnet("lite0", 4_652_008),
        _efficientnet("lite1", 5_416_680),
        _efficientnet("lite2", 6_092_072),
        Builtin(
            "mobilenet-v2",
            "MobileNetV2 ImageNet classifier (torchvision IMAGENET1K_V1 weights)",
            "imagenet",
            3_504_872,
            mobilenet.load,
            mobilenet.sample_input,
        ),
        _mtcnn("pnet", 6_632, "proposal"),
        _mtcnn("rnet", 100_178, "refinement"),
        _mtcnn("onet", 389_040, "output"),
        Builtin(
            "minilm-l6",
            "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384-d mean-pooled embeddings)",
            "stsb",
            22_713_216,
            minilm.load,
            minilm.sample_input,
        ),
        Builtin(
            "lenet-mnist",
            "LeNet-5-style CNN trained on MNIST by scripts/train_lenet.py",
            "mnist",
            61_706,
            lenet.load,
            lenet.sample_input,
        ),
    )
}


def get(name: str) -> Builtin:
    """The built-in called `name`, or a UserError listing the known names."""
    try:
        return BUILTINS[name]
    except KeyError:
        raise UserError(f"unknown built-in model '{name}' (known: {', '.join(BUILTINS)})") from None
