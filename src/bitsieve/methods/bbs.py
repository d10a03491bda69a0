"""BBS binary pruning (MICRO'24, "BBS: Bi-directional Bit-level Sparsity for Deep Learning Acceleration"):
make the ``k`` least significant two's-complement bit planes of every group uniform (all 0 or all 1), so a
BitVert PE skips them (a uniform plane contributes 0 or 2^s * sum(a)).

Source: the paper (Algorithms 1-2, Figs. 4-5) and the authors' reference code, GitHub yc2367/BBS-MICRO
(``binary_pruning.py``, ``bin_int_convert.py``), as described in methods.md 8.2. Confidence:
**reference code**. Integers are the symmetric per-channel quantisation of decision 2 in two's complement.

``mode=rounded`` (rounded averaging, best for k = 2; ``roundAvg_*``): count the leading planes equal to the
sign plane (the code checks planes 1..w-5 from the top, so at most 3 for 8 bits); k' = k - that count; the k'
low planes of every weight are replaced by the group mean of the unsigned k'-bit low parts, rounded half to
even (``torch.round``). Groups with k' <= 0 are left as they are.

``mode=zeropoint`` (zero-point shifting, best for k = 4; ``zeroPointShifting_*``): for every constant c in the
signed ``const_bits``-bit range (code default 5: -16..15; the paper uses 6): W' = clip(W + c, +-(2^(w-1)-1));
in sign-magnitude, count the leading all-zero magnitude columns z; the magnitude is rounded to the nearest
multiple of 2^(k - z) (ties to the smaller, the bit-flip rule); W'' = W' - c. The c with the smallest group
squared error is kept (the first in scan order on ties). All W'' of a group share their k - z low bits.
W'' can exceed the w-bit range by up to 2^(const_bits-1), so the result is held in a 2-bit wider
two's-complement format.

``beta``: the hardware-aware global pruning of Algorithm 2: the output channels with the largest
per-channel quantisation scale (outliers, sensitive) are kept at full precision: the top ``beta`` share of
all channels of the model (of the tensor when applied alone). ``channels`` rounds each layer's count up to
a multiple of it; the default 1 does not round, as the authors' code: BitSim 6845fad
``software/Pruner/channel.py`` ranks 1/scale over every layer and keeps the channels above the global
threshold, its rounding to groups of 32 (``structured``) commented out. (That code keeps the channels
strictly above the int(N x beta)-th largest score, one fewer than the top share we keep, and gives no
channel of a per-tensor-scaled or linear layer the full precision; ``channels`` = 32 is the paper's CH,
the channels processed in parallel.)
"""
from __future__ import annotations

import numpy as np

from .. import formats
from ..errors import UserError
from ..planes import Planes
from .bitwave import nearest_multiple
from .core import LAYOUT, Method, Param, check_format, from_ints, ints_of, output_channel_of_group, valid_count

MODES = ("rounded", "zeropoint")


def sensitive_channels(scales: np.ndarray, beta: float, threshold: float | None = None,
                       channels: int = 1) -> np.ndarray:
    """bool [O]: the channels kept at full precision. ``threshold``: a global scale threshold (model-wide
    ranking); without it the top ``beta`` share of this tensor. The count is rounded up to a multiple of
    ``channels`` (1: not rounded, the reference code's choice)."""
    s = np.asarray(scales, dtype=np.float64).reshape(-1)
    o = s.size
    if beta <= 0 or o == 0:
        return np.zeros(o, dtype=bool)
    n = int(np.sum(s >= threshold)) if threshold is not None else int(np.ceil(beta * o))
    if n == 0:
        return np.zeros(o, dtype=bool)
    n = min(o, -(-n // channels) * channels)
    out = np.zeros(o, dtype=bool)
    out[np.argsort(-s, kind="stable")[:n]] = True
    return out


def global_threshold(all_scales: list[np.ndarray], beta: float) -> float | None:
    """The scale above which a channel is among the top ``beta`` share of all channels of a model."""
    if beta <= 0:
        return None
    s = np.sort(np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in all_scales]))[::-1]
    n = int(np.ceil(beta * s.size))
    return float(s[n - 1]) if n else None


def rounded_average(p: Planes, k: int, skip: np.ndarray) -> Planes:
    """Rounded averaging on two's-complement planes, with word operations only."""
    w = p.nbits
    words = p.words.copy()
    valid = p.valid
    sign = words[:, w - 1] & valid
    red = np.zeros(p.n_groups, dtype=np.int64)
    eq = np.ones(p.n_groups, dtype=bool)
    for i in range(1, max(w - 4, 1)):  # planes w-2 .. 4 (the code's columns 1..w-5)
        eq &= ((words[:, w - 1 - i] & valid) ^ sign) == 0
        red += eq
    kk = k - red  # low planes made uniform
    nv = valid_count(p)
    act = (kk > 0) & (nv > 0) & ~skip
    if not act.any():
        return p
    total = np.zeros(p.n_groups, dtype=np.float64)
    for s in range(min(k, w)):
        use = s < kk
        total += np.where(use, np.ldexp(np.bitwise_count(words[:, s] & valid).astype(np.float64), s), 0.0)
    mean = np.rint(total / np.maximum(nv, 1)).astype(np.int64)  # half to even, as torch.round
    for s in range(min(k, w)):
        upd = act & (s < kk)
        bit = ((mean >> s) & 1).astype(bool)
        words[upd, s] = np.where(bit[upd], valid[upd], np.uint64(0))
    return p.with_words(words)


def zero_point_shift(q: np.ndarray, valid: np.ndarray, w: int, k: int, const_bits: int,
                     chunk: int = 512) -> np.ndarray:
    """Zero-point shifting on signed integers [n, G] (``valid`` bool [n, G]); returns W''."""
    vmax = (1 << (w - 1)) - 1
    cs = np.arange(-(1 << (const_bits - 1)), 1 << (const_bits - 1), dtype=np.int64)
    out = np.empty_like(q)
    for a in range(0, q.shape[0], chunk):
        x = q[a:a + chunk]
        vm = valid[a:a + chunk]
        wp = np.clip(x[None] + cs[:, None, None], -vmax, vmax)  # [C, n, G]
        mag = np.abs(wp)
        gmax = np.where(vm[None], mag, 0).max(axis=2)  # [C, n]
        lead = (w - 1) - np.where(gmax > 0, np.floor(np.log2(np.maximum(gmax, 1))).astype(np.int64) + 1, 0)
        pu = w - k + lead
        tu = 1 + lead
        act = (pu < w) & (tu < pu)  # the reference's loops only visit test < prune < w
        qstep = (np.int64(1) << np.clip(w - pu, 0, 62))[..., None]
        nmax = ((np.int64(1) << np.clip(pu - tu, 0, 62)) - 1)[..., None]
        newmag = np.where(act[..., None], nearest_multiple(mag, qstep, nmax), mag)
        wpp = np.where(wp < 0, -newmag, newmag) - cs[:, None, None]
        err = (np.where(vm[None], wpp - x[None], 0) ** 2).sum(axis=2)  # [C, n]
        best = np.argmin(err, axis=0)  # first minimum = first c in scan order
        out[a:a + chunk] = np.take_along_axis(wpp, best[None, :, None], axis=0)[0]
    return out


def bbs(p: Planes, *, k: int = 2, mode: str = "rounded", beta: float = 0.1, group: int = 32,
        format: str = "int8", const_bits: int = 5, channels: int = 1, layout: str = "auto", acts=None,
        sensitive=None) -> Planes:
    """Binary pruning of every non-sensitive group (module docstring). ``sensitive``: bool [O] from the
    model-wide ranking; None ranks within this tensor by its per-channel scales."""
    w = p.fmt.width
    top = w - 1 if mode == "rounded" else w - 2
    if not 1 <= k <= top:
        raise UserError(f"bbs: k must be 1..{top} for {w}-bit weights in {mode} mode, got {k}")
    oc = output_channel_of_group(p)
    if sensitive is None:
        scales = p.scale if p.scale is not None else np.ones(1)
        sensitive = sensitive_channels(scales, beta, channels=channels)
    sensitive = np.asarray(sensitive, dtype=bool).reshape(-1)
    skip = sensitive[np.minimum(oc, sensitive.size - 1)] if sensitive.size else np.zeros(p.n_groups, bool)
    if mode == "rounded":
        return rounded_average(p, k, skip)
    q = ints_of(p)
    valid = ((p.valid[:, None] >> np.arange(p.group, dtype=np.uint64)) & np.uint64(1)).astype(bool)
    new = q.copy()
    rows = np.nonzero(~skip)[0]
    if rows.size:
        new[rows] = zero_point_shift(q[rows], valid[rows], w, k, const_bits)
    new[~valid] = 0
    return from_ints(p, new, formats.get(f"int{w + 2}tc"))


def layout(params: dict):
    f = check_format(params["format"], "bbs", floats=False, twos=True)
    if f.fixed:
        raise UserError(f"bbs: needs a plain integer format int<b>, got {f.name}")
    if f.width > 30:
        raise UserError(f"bbs: at most 30-bit integers, got {f.name}")
    top = f.width - 1 if params["mode"] == "rounded" else f.width - 2  # zeropoint: w-1 is a no-op in the code
    if not 1 <= params["k"] <= top:
        raise UserError(f"bbs: k must be 1..{top} for {f.name} in {params['mode']} mode, got {params['k']}")
    return formats.get(f"int{f.width}tc"), params["group"], "none"


PARAMS = (
    Param("k", "int", 2, "uniform (bi-directionally sparse) low planes wanted per group (K)", lo=1, hi=31),
    Param("mode", "str", "rounded", "rounded (rounded averaging) or zeropoint (zero-point shifting)", choices=MODES),
    Param("beta", "float", 0.1, "share of output channels kept at full precision (largest scales first)",
          lo=0.0, hi=1.0),
    Param("group", "int", 32, "weights per group (the BBS encoding's 32)", lo=1, hi=64),
    Param("format", "str", "int8", "integer width (two's complement, per-channel quantised): int<b>"),
    Param("const_bits", "int", 5, "zeropoint: bits of the shift constant c (code 5, paper 6)", lo=1, hi=8),
    Param("channels", "int", 1, "sensitive-channel count per layer rounded up to a multiple of this (1 = no "
          "rounding, the authors' code; 32 = the paper's CH)", lo=1, hi=4096),
    LAYOUT,
)

METHOD = Method(
    name="bbs",
    fn=bbs,
    source="BBS, MICRO'24 (Chen, Meng, Seo, Abdelfattah); yc2367/BBS-MICRO binary_pruning.py; methods.md 8.2",
    confidence="reference code",
    description="binary pruning: make the K low two's-complement planes of each group uniform "
                "(rounded averaging or zero-point shifting), sensitive channels kept",
    params=PARAMS,
    layout=layout,
    lanes=lambda prm: prm["layout"],
    validate=layout,
)
