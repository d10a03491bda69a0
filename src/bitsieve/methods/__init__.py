"""Bit-level methods as transforms of real models.

Every method is a pure function over the packed planes of one weight tensor (``bitsieve.planes``) with
documented parameters and defaults, plus metadata: its source, a confidence label (``CONFIDENCE``) and a
one-line description. ``REGISTRY`` lists them; ``parse_spec`` turns ``"bitx:keep=5,score=l1"`` into a
``Step``; ``apply_tensor`` / ``apply_model`` apply a method or a composed list of methods (in order) and
count the changed bits per layer. ``bitlet`` is different: it changes the forward pass (activations too), so
it runs as an emulated forward pass (``bitsieve.methods.bitlet_emulate.emulate``), never as a weight rewrite.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import formats
from ..errors import UserError
from . import bbs as _bbs
from . import bitlet as _bitlet
from . import bitwave as _bitwave
from . import bitx as _bitx
from . import bitxpro as _bitxpro
from . import quantize as _quantize
from . import truncate as _truncate
from .core import CONFIDENCE, Method, Param, Step, StepStats, activation_mean, apply_tensor
from .core import parse_spec as _parse_spec

REGISTRY: dict[str, Method] = {m.name: m for m in (
    _bitx.METHOD, _bitxpro.METHOD, _truncate.METHOD, _quantize.METHOD, _bitwave.METHOD, _bbs.METHOD,
    _bitlet.METHOD)}

__all__ = ["CONFIDENCE", "REGISTRY", "Method", "Param", "Step", "StepStats", "LayerResult", "apply_model",
           "apply_tensor", "get", "parse_spec", "parse_specs"]


def get(name: str) -> Method:
    """The method called ``name`` (UserError listing the known ones otherwise)."""
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise UserError(f"unknown method {name!r} (known: {', '.join(REGISTRY)})") from None


def parse_spec(spec: str, overrides: dict | None = None) -> Step:
    """``"bitx:keep=5,score=l1"`` -> Step; unknown methods/parameters and bad values raise UserError.
    ``overrides`` (``{"format": ..., "group": ...}`` from CLI options) replace defaults, not spec values."""
    return _parse_spec(spec, REGISTRY, overrides)


def parse_specs(specs: list[str], overrides: dict | None = None) -> list[Step]:
    """Several specs composed in order; a forward-pass method (bitlet) may only come last."""
    steps = [parse_spec(s, overrides) for s in specs]
    for s in steps[:-1]:
        if s.method.kind == "forward":
            raise UserError(f"{s.name} emulates the forward pass: it must be the last --method")
    return steps


@dataclass
class LayerResult:
    """One layer after the weight methods: new float32 weights and the counts of every step."""

    name: str
    weight: np.ndarray
    stats: list[StepStats] = field(default_factory=list)

    @property
    def changed_bits(self) -> int:
        return sum(s.changed_bits for s in self.stats)

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.weight.shape), "changed_bits": self.changed_bits,
                "steps": [s.as_dict() for s in self.stats]}


def _channel_scales(w: np.ndarray, width: int) -> np.ndarray:
    """Per-output-channel quantisation scale max|w| / (2^(b-1)-1) (BBS's sensitivity ranking)."""
    a = np.abs(np.asarray(w, dtype=np.float64)).reshape(w.shape[0], -1) if w.ndim >= 2 else np.abs(w)[None]
    return a.max(axis=1, initial=0.0) / ((1 << (width - 1)) - 1)


def apply_model(layers, steps: list[Step]) -> list[LayerResult]:
    """Apply the weight steps, in order, to every layer (objects with ``.name``, ``.weight`` and optionally
    ``.activation`` / ``.groups``). BBS's ``beta`` ranks output channels over the whole model."""
    weights = [np.asarray(layer.weight, dtype=np.float32) for layer in layers]
    results = [LayerResult(layer.name, w) for layer, w in zip(layers, weights)]
    means = None
    for step in steps:
        if step.method.kind != "weights":
            raise UserError(f"{step.name} changes the forward pass, not the weights: use it with `bitsieve eval`")
        sens = [None] * len(layers)
        if step.name == "bbs" and step.params["beta"] > 0:
            width = formats.get(step.params["format"]).width
            scales = [_channel_scales(r.weight, width) for r in results]
            thr = _bbs.global_threshold(scales, step.params["beta"])
            sens = [_bbs.sensitive_channels(s, step.params["beta"], thr, step.params["channels"]) for s in scales]
        if step.method.needs_activations(step.params) and means is None:
            means = [activation_mean(layer) for layer in layers]
        for i, r in enumerate(results):
            am = means[i] if means is not None else None
            r.weight, st = apply_tensor(r.weight, [step], act_mean=am, sensitive=sens[i],
                                        groups=int(getattr(layers[i], "groups", 1) or 1))
            r.stats.extend(st)
    return results
