"""Static truncation: keep the top ``keep`` bit planes of every group and zero the rest, the same planes
for every group. This is Bitlet's ``prune`` port used as precision control (a static mask of enabled
significances, methods.md 2.2 step 8), applied here as a weight rewrite.

Source: the Bitlet RTL ``prune`` port (``rtl/Bitlet_CE.v``). Confidence: **exact (RTL)** for the masking
rule; note the RTL aligns on *product* exponents (weight + activation) per dot product, which only the
``bitlet`` forward-pass emulation reproduces; as a weight rewrite, floats are aligned to the group's max
weight exponent (``align=weight``, decision 3), or not at all (``align=none``: plain per-value mantissa
truncation to ``keep`` significant bits).
"""
from __future__ import annotations

import numpy as np

from ..planes import Planes
from .core import Method, Param, check_format


def truncate(p: Planes, *, keep: int = 8, format: str = "fp32", group: int = 64, align: str = "weight",
             acts=None, sensitive=None) -> Planes:
    """Zero planes s < nbits - keep in every group."""
    keep_mask = np.arange(p.nbits) >= p.nbits - keep
    return p.with_words(np.where(keep_mask[None, :], p.words, np.uint64(0)))


def layout(params: dict):
    f = check_format(params["format"], "truncate")
    return f, params["group"], params["align"] if f.is_float else "none"


PARAMS = (
    Param("keep", "int", 8, "top planes kept (the rest of the significand/magnitude is zeroed)", lo=1, hi=32),
    Param("format", "str", "fp32", "number format read: fp32/bf16/fp16 or int<b>/q<m>.<n> (sign-magnitude)"),
    Param("group", "int", 64, "values per group (matters with align=weight)", lo=1, hi=64),
    Param("align", "str", "weight", "float alignment before truncating: weight (group max exponent) or none",
          choices=("weight", "none")),
)

METHOD = Method(
    name="truncate",
    fn=truncate,
    source="Bitlet RTL prune port (Zhu-Zixuan/Bitlet-PE rtl/Bitlet_CE.v); methods.md 2.2 step 8",
    confidence="exact (RTL)",
    description="static precision control: keep the top N bit planes of every group",
    params=PARAMS,
    layout=layout,
    validate=layout,
)
