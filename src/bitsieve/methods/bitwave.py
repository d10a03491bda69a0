"""BitWave bit-flip (HPCA'24, "BitWave: Exploiting Column-Based Bit-Level Sparsity for Deep Learning
Acceleration"): make every group have at least ``k`` all-zero magnitude columns (bit planes), so a
bit-column-serial PE can skip them.

Source: the BBS authors' reference re-implementation, ``bit_flip.py`` of GitHub yc2367/BBS-MICRO (also
BitSim ``sim/sim/util/bitflip_layer.py``), as described in methods.md 8.1. Confidence: **reference code**.

Rule, per group of sign-magnitude w-bit integers (column 0 = sign, columns 1..w-1 = magnitude, MSB first):

1. p = w - k. Walk columns 1..w-1 in order: every column i < p that is already all-zero moves p one down
   (p += 1), so existing zero columns count towards k.
2. t = (last all-zero column i < p) + 1, or 1 if none. Columns t..p-1 may change freely.
3. Each weight's magnitude bits t..w-1 are replaced by the nearest multiple of 2^(w-p) that fits in them
   (candidates n * 2^(w-p), n = 0..2^(p-t)-1; ties go to the smaller value). Signs are kept.

k is at most w-2: with k = w-1 the reference code's loops never run (the group is left as it is).
Integers come from symmetric per-channel quantisation (decision 2); -2^(w-1) cannot occur there, and the
reference code's clamp of -2^(w-1) to -(2^(w-1)-1) is applied to raw integer input.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..planes import Planes
from .core import LAYOUT, Method, Param, check_format, magnitudes_to_words


def nearest_multiple(v: np.ndarray, q: np.ndarray, nmax: np.ndarray) -> np.ndarray:
    """Nearest n*q to v with 0 <= n <= nmax, ties to the smaller (the reference's upward scan with '<')."""
    r = v // q
    up = (2 * (v - r * q) > q) & (r + 1 <= nmax)
    return np.minimum(r + up, nmax) * q


def flip_magnitudes(mag: np.ndarray, zero_col: np.ndarray, w: int, k: int) -> np.ndarray:
    """Bit-flip on magnitudes [n, G] (int64) given zero-column flags [n, w] (index = column, 0 = sign)."""
    n = mag.shape[0]
    pu = np.full(n, w - k, dtype=np.int64)
    for i in range(1, w):
        pu += (pu > i) & zero_col[:, i]
    tu = np.ones(n, dtype=np.int64)
    for i in range(1, w):
        tu = np.where((pu > i) & zero_col[:, i], i + 1, tu)
    act = (pu < w) & (tu < pu)  # the reference's loops only visit test < prune < w
    if not act.any():
        return mag
    low_bits = (w - tu)[:, None]
    lowmask = (np.int64(1) << low_bits) - 1
    low = mag & lowmask
    q = (np.int64(1) << np.clip(w - pu, 0, 62))[:, None]
    nmax = ((np.int64(1) << np.clip(pu - tu, 0, 62)) - 1)[:, None]
    new = (mag - low) + nearest_multiple(low, q, nmax)
    return np.where(act[:, None], new, mag)


def zero_columns(p: Planes) -> np.ndarray:
    """bool [n_groups, w]: column i (0 = sign, 1.. = magnitude MSB first) is all zero over real values."""
    w = p.nbits + 1
    z = np.zeros((p.n_groups, w), dtype=bool)
    z[:, 0] = (p.signs & p.valid) == 0
    z[:, 1:] = ((p.words & p.valid[:, None]) == 0)[:, ::-1]
    return z


def bitwave(p: Planes, *, k: int = 2, group: int = 32, format: str = "int8", layout: str = "auto", acts=None,
            sensitive=None) -> Planes:
    """Bit-flip every group to >= k zero magnitude columns (module docstring)."""
    w = p.nbits + 1
    if not 1 <= k <= w - 2:
        raise UserError(f"bitwave: k must be 1..{w - 2} for {p.fmt.name}, got {k}")
    new = flip_magnitudes(p.magnitudes().astype(np.int64), zero_columns(p), w, k)
    return p.with_words(magnitudes_to_words(p, new.astype(np.uint32)))


def layout(params: dict):
    f = check_format(params["format"], "bitwave", floats=False)
    if not 1 <= params["k"] <= f.nbits - 1:  # k = w-1 would zero every magnitude: the reference skips it
        raise UserError(f"bitwave: k must be 1..{f.nbits - 1} for {f.name}, got {params['k']}")
    return f, params["group"], "none"


PARAMS = (
    Param("k", "int", 2, "zero magnitude columns wanted per group (K)", lo=1, hi=31),
    Param("group", "int", 32, "weights per group (BitSim's BitWave uses 32; the reference default is 16)",
          lo=1, hi=64),
    Param("format", "str", "int8", "sign-magnitude integer format, per-channel quantised (int<b>)"),
    LAYOUT,
)

METHOD = Method(
    name="bitwave",
    fn=bitwave,
    source="BitWave, HPCA'24 (Shi et al.); bit-flip rule from yc2367/BBS-MICRO bit_flip.py; methods.md 8.1",
    confidence="reference code",
    description="bit-flip: round each group so it has at least K all-zero magnitude bit columns",
    params=PARAMS,
    layout=layout,
    lanes=lambda prm: prm["layout"],
    validate=layout,
)
