"""Start models for SCFLP: the built-in pretrained network, optionally widened with planted redundant filters.

A LeNet trained from scratch at 4x width has no filter pair above cosine 0.72 (measured: conv1 0.50, conv2
0.62, fc1 0.72, fc2 0.35 after two epochs), so coarse pruning at threshold 0.9 has nothing to remove there.
To test that the coarse step *finds* redundancy, ``widen_lenet`` plants it the Net2WiderNet way (Chen et al.,
ICLR'16): in every hidden layer a seeded random ``frac`` of the channels get a duplicate (the filter plus
Gaussian noise of ``noise`` x its RMS, the same bias), and the next layer's weights from both copies are
halved, so the widened network computes nearly the same function as the pretrained one. The planted pairs are
returned, so which channels CLP removed can be checked against them.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .loop import derive_seed, trainable_layers


def widen_lenet(net: torch.nn.Module, frac: float, noise: float, seed: int) -> dict:
    """Widen every hidden conv/linear layer of a LeNet in place; returns {layer: [[original, duplicate], ...]}."""
    names = [n for n, _ in trainable_layers(net)]
    planted = {}
    for name, next_name in zip(names[:-1], names[1:]):
        m, nxt = getattr(net, name), getattr(net, next_name)  # the next layer may have just been widened
        O = m.weight.shape[0]
        k = int(round(frac * O))
        if k < 1:
            continue
        rng = np.random.default_rng(derive_seed(seed, "widen", name))
        idx = torch.from_numpy(np.sort(rng.choice(O, size=k, replace=False)))
        w = m.weight.detach()
        rms = w[idx].reshape(k, -1).pow(2).mean(dim=1).sqrt()
        eps = torch.from_numpy(rng.standard_normal(tuple(w[idx].shape))).to(w.dtype)
        dup = w[idx] + noise * rms.reshape(-1, *([1] * (w.ndim - 1))) * eps
        new = _like(m, out_features=O + k)
        with torch.no_grad():
            new.weight.copy_(torch.cat([w, dup]))
            new.bias.copy_(torch.cat([m.bias.detach(), m.bias.detach()[idx]]))
        setattr(net, name, new)
        # the next layer reads O channels (a conv's, or a flattened conv map's blocks of equal size): add the
        # duplicates' columns and halve both copies' weights
        wn = nxt.weight.detach()
        cols = wn.reshape(wn.shape[0], O, -1)
        both = torch.cat([cols, cols[:, idx]], dim=1)
        both[:, idx] *= 0.5
        both[:, O:] *= 0.5
        wider = _like(nxt, in_features=(O + k) * cols.shape[2] if isinstance(nxt, torch.nn.Linear) else O + k)
        with torch.no_grad():
            wider.weight.copy_(both.reshape(wider.weight.shape))
            wider.bias.copy_(nxt.bias.detach())
        setattr(net, next_name, wider)
        planted[name] = [[int(i), O + j] for j, i in enumerate(idx.tolist())]
    return planted


def _like(m: torch.nn.Module, out_features: int | None = None, in_features: int | None = None):
    """A fresh layer of ``m``'s kind and geometry with other channel counts."""
    if isinstance(m, torch.nn.Linear):
        return torch.nn.Linear(in_features or m.in_features, out_features or m.out_features)
    return torch.nn.Conv2d(in_features or m.in_channels, out_features or m.out_channels, m.kernel_size,
                           stride=m.stride, padding=m.padding)


def start_model(model_name: str, widen: float, noise: float, seed: int):
    """The built-in pretrained model (float32, train mode), widened with planted duplicates for lenet-mnist (the
    only architecture ``widen_lenet`` knows; other models start as they are). Returns (module, planted pairs)."""
    from ..zoo import BUILTINS

    if model_name not in BUILTINS:
        raise UserError(f"scflp needs a built-in model, got {model_name!r}")
    net = BUILTINS[model_name].load().float().train()
    planted = widen_lenet(net, widen, noise, seed) if widen and model_name == "lenet-mnist" else {}
    return net.train(), planted
