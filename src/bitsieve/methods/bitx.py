"""BitX (ICPP'21, "BitX: Empower Versatile Inference with Hardware Runtime Pruning"): per group, keep the N
most significant bit planes and zero the others.

Source: the BitX patent (WO2023019899A1 / US20250315675A1, abstract and claims 3-4) and the ICPP'21 abstract;
the paper itself was not available. Confidence: **reconstructed (patent/abstract)**. bitsieve follows
methods.md decision 4: score(s) = 2^s * sqrt(popcount of plane s in the group) (the Euclidean-norm reading of
the patent's "Euclidean distance product"), keep the ``keep`` highest-scoring non-empty planes (ties: the
higher significance wins), zero the rest. Float groups are first aligned to the group's largest weight
exponent (decision 3, patent claim 3); integers are per-channel sign-magnitude (decision 2).

Scores: ``l2`` (default), ``l1`` = 2^s * popcount, ``msb`` = the top ``keep`` non-empty planes whatever their
density, ``exact`` = 2^s * (plane . a) with a = the mean |input activation| per input channel captured on real
samples (a runtime BitX scores each dot product with its own activations; a weight rewrite can only use
their average, which is what this option does).
"""
from __future__ import annotations

import numpy as np

from ..planes import Planes
from .core import LAYOUT, Method, Param, check_format

SCORES = ("l2", "l1", "exact", "msb")


def plane_scores(p: Planes, score: str, acts: np.ndarray | None = None) -> np.ndarray:
    """float64 [n_groups, nbits] ranking keys (monotone in the method's score; exact where possible:
    l2 uses score^2 = 4^s * popcount, which float64 holds exactly)."""
    ones = np.bitwise_count(p.words).astype(np.float64)
    s = np.arange(p.nbits)
    if score == "l2":
        return np.ldexp(ones, 2 * s)
    if score == "l1":
        return np.ldexp(ones, s)
    if score == "msb":
        return np.where(ones > 0, np.ldexp(1.0, s), 0.0) * np.ones_like(ones)
    if score == "exact":
        if acts is None:
            raise ValueError("exact scoring needs activations")
        mags = p.magnitudes()
        out = np.empty_like(ones)
        for b in range(p.nbits):
            out[:, b] = (((mags >> np.uint32(b)) & np.uint32(1)) * acts).sum(axis=1)
        return np.ldexp(out, s)
    raise ValueError(f"unknown score {score!r}")


def select(key: np.ndarray, nonempty: np.ndarray, keep: int) -> np.ndarray:
    """bool [n, nbits]: the ``keep`` highest keys among non-empty planes, ties to the higher significance."""
    nbits = key.shape[1]
    k = np.where(nonempty, key, -np.inf)[:, ::-1]  # reversed: a stable sort then prefers higher s on ties
    order = np.argsort(-k, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(nbits), order.shape), axis=1)
    return (rank[:, ::-1] < keep) & nonempty


def mask_words(p: Planes, keep_mask: np.ndarray) -> Planes:
    """Zero every plane whose mask entry is False (a word operation)."""
    return p.with_words(np.where(keep_mask, p.words, np.uint64(0)))


def bitx(p: Planes, *, keep: int = 6, score: str = "l2", format: str = "fp32", group: int = 64,
         layout: str = "auto", acts: np.ndarray | None = None, sensitive=None) -> Planes:
    """Keep the ``keep`` best planes of every group (see module docstring); returns new planes."""
    key = plane_scores(p, score, acts)
    nonempty = p.words != 0
    return mask_words(p, select(key, nonempty, keep))


def layout(params: dict):
    f = check_format(params["format"], "bitx")
    return f, params["group"], "weight" if f.is_float else "none"


PARAMS = (
    Param("keep", "int", 6, "planes kept per group (N)", lo=1, hi=32),
    Param("score", "str", "l2", "plane score: l2 = 2^s*sqrt(ones), l1 = 2^s*ones, exact = 2^s*(plane.mean|a|), "
                                "msb = top non-empty planes", choices=SCORES),
    Param("format", "str", "fp32", "number format read: fp32, bf16, fp16 (aligned to the group's max weight "
                                   "exponent) or int<b> / q<m>.<n> (per-channel sign-magnitude)"),
    Param("group", "int", 64, "values per group along the dot-product axis", lo=1, hi=64),
    LAYOUT,
)

METHOD = Method(
    name="bitx",
    fn=bitx,
    source="BitX, ICPP'21 (Li, Lu et al.); criterion from patent WO2023019899A1 claims 3-4; methods.md 3, decision 4",
    confidence="reconstructed (patent/abstract)",
    description="runtime bit-plane pruning: keep the N highest-scoring bit planes of every weight group",
    params=PARAMS,
    layout=layout,
    lanes=lambda prm: prm["layout"],
    needs_activations=lambda prm: prm["score"] == "exact",
    validate=layout,
)
