"""Per-channel symmetric integer quantisation, the usual baseline every bit method is compared with.

Rule (methods.md decision 2): scale = max|w| / (2^(b-1) - 1) per output channel (or per tensor),
round to nearest, values in -(2^(b-1)-1)..(2^(b-1)-1), dequantised as q * scale. The planes are left as
they are: the representation is the transform. Confidence: **baseline** (a standard technique, no paper
to follow).
"""
from __future__ import annotations

from .. import formats
from ..planes import Planes
from .core import Method, Param


def quantize(p: Planes, *, bits: int = 8, per_channel: bool = True, acts=None, sensitive=None) -> Planes:
    """Identity on the planes: packing with int<bits> already quantised the tensor."""
    return p


def layout(params: dict):
    return formats.get(f"int{params['bits']}"), 64, "none", params["per_channel"]


PARAMS = (
    Param("bits", "int", 8, "integer width b incl. sign (sign-magnitude, symmetric range)", lo=2, hi=32),
    Param("per_channel", "bool", True, "one scale per output channel (else one per tensor)"),
)


METHOD = Method(
    name="quantize",
    fn=quantize,
    source="standard symmetric per-channel post-training quantisation; methods.md decision 2",
    confidence="baseline",
    description="per-channel int<b> quantisation (round to nearest), the baseline for bit methods",
    params=PARAMS,
    layout=layout,
)
