"""Packed bit planes: the one representation every method, accelerator model and report reads.

A tensor is cut into groups of G <= 64 consecutive values along its dot-product axis (input channels of a
linear [O, I]; input channels of each kernel tap of a conv [O, I, KH, KW], read channel-last; the channel
axis of NCHW activations). The last group of a row is zero-padded. Each group becomes one uint64 word per
significance s (bit g of ``words[group, s]`` is bit s of value g), plus a word of signs, a word of non-zero
flags, per-value exponents and a group exponent for floats.

Float groups can be aligned to the group's largest weight exponent (methods.md decision 3): each significand
is right-shifted by (group max exponent - own exponent), truncating; subnormals use exponent field 1. With
``align='none'`` the planes hold the exact bits and ``unpack_raw`` gives back the input bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numba as nb
import numpy as np

from . import formats
from .errors import UserError

ALIGNS = ("none", "weight")  # 'product' (Bitlet: weight + activation exponent) is applied by accel.bitlet


@dataclass(frozen=True)
class Planes:
    """The planes of one tensor. Shapes: ``words`` [n_groups, nbits]; per-group arrays [n_groups]."""

    fmt: formats.Format
    group: int
    align: str
    shape: tuple  # shape of the original tensor
    axis: int  # its dot-product axis
    words: np.ndarray  # uint64 [n_groups, nbits], significance LSB first
    signs: np.ndarray  # uint64 [n_groups], bit g = sign of value g
    nonzero: np.ndarray  # uint64 [n_groups], bit g = value g was non-zero before alignment
    exps: np.ndarray | None  # int16 [n_groups, G] effective exponent per value (floats; subnormal -> 1)
    gexp: np.ndarray | None  # int16 [n_groups] largest effective exponent of the group (floats)
    lost: np.ndarray  # int32 [n_groups] one-bits shifted out by alignment
    scale: np.ndarray | None = None  # real value of one integer step per output channel (quantised ints)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- geometry -------------------------------------------------------------------------------
    @property
    def nbits(self) -> int:
        return self.words.shape[1]

    @property
    def n_groups(self) -> int:
        return self.words.shape[0]

    @property
    def row_len(self) -> int:
        return int(self.shape[self.axis]) if self.shape else 1

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape)) // max(self.row_len, 1) if self.shape else 1

    @property
    def groups_per_row(self) -> int:
        return -(-self.row_len // self.group)

    @property
    def count(self) -> int:
        """Number of real (non-padding) values."""
        return int(np.prod(self.shape))

    @property
    def valid(self) -> np.ndarray:
        """uint64 [n_groups]: bit g set where value g is real, not padding."""
        if "valid" not in self._cache:
            n = np.full(self.groups_per_row, self.group, dtype=np.uint64)
            n[-1] = self.row_len - self.group * (self.groups_per_row - 1)
            m = np.where(n >= 64, np.uint64(0xFFFFFFFFFFFFFFFF), (np.uint64(1) << (n % np.uint64(64))) - np.uint64(1))
            self._cache["valid"] = np.tile(m, self.rows)
        return self._cache["valid"]

    def channel_of_group(self) -> np.ndarray:
        """Output channel (index along axis 0 of the original tensor) of every group, for axis != 0."""
        if self.axis == 0 or len(self.shape) < 2:
            return np.zeros(self.n_groups, dtype=np.int64)
        rows_per_channel = self.rows // int(self.shape[0])
        return np.arange(self.n_groups, dtype=np.int64) // (self.groups_per_row * rows_per_channel)

    # ---- bit statistics (word operations) ---------------------------------------------------------
    def ones(self) -> np.ndarray:
        """int [n_groups, nbits]: ones per plane per group."""
        return np.bitwise_count(self.words).astype(np.int64)

    def magnitudes(self) -> np.ndarray:
        """uint32 [n_groups, G]: each value's (aligned) significand / magnitude, rebuilt from the planes."""
        return _unpack_kernel(self.words, self.group)

    def with_words(self, words: np.ndarray) -> "Planes":
        """Same tensor with new plane words (what every bit method returns)."""
        return replace(self, words=np.ascontiguousarray(words, dtype=np.uint64), _cache={})

    # ---- back to values ---------------------------------------------------------------------------
    def values(self) -> np.ndarray:
        """float64 values in the original shape: what the planes now mean (aligned, pruned, scaled)."""
        mags = self.magnitudes().astype(np.float64)
        sign = _bits(self.signs, self.group).astype(bool)
        f = self.fmt
        if f.is_float:
            e = self.gexp[:, None] if self.align == "weight" else self.exps
            v = np.ldexp(mags, e.astype(np.int64) - f.bias - f.frac)
            special = e == (1 << f.exp_bits) - 1  # inf / nan keep their meaning
            if special.any():
                frac = mags.astype(np.uint32) & np.uint32((1 << f.frac) - 1)
                v = np.where(special, np.where(frac == 0, np.inf, np.nan), v)
        elif f.twos:
            v = mags - np.where(sign, 2.0 ** f.width, 0.0)
        else:
            v = mags
        if not f.twos:
            v = np.where(sign, -v, v)  # keeps -0.0
        if self.scale is not None:
            v = v * np.asarray(self.scale, dtype=np.float64).reshape(-1)[self.channel_of_group()][:, None]
        elif not f.is_float and f.frac:
            v = v * f.scale_of()
        return self._ungroup(v)

    def unpack_raw(self) -> np.ndarray:
        """uint32 raw bit patterns in the original shape; bit-exact inverse of ``pack_raw`` when align='none'."""
        f = self.fmt
        if f.is_float and self.align != "none":
            return f.encode(self.values())
        mags = self.magnitudes()
        sign = _bits(self.signs, self.group).astype(np.uint32)
        if f.is_float:
            hidden = (mags >> np.uint32(f.frac)) & np.uint32(1)
            e = np.where(hidden == 1, self.exps, 0).astype(np.uint32)
            raw = (sign << np.uint32(f.width - 1)) | (e << np.uint32(f.frac)) | (mags & np.uint32((1 << f.frac) - 1))
        elif f.twos:
            raw = mags
        else:
            raw = (sign << np.uint32(f.width - 1)) | mags
        return self._ungroup(raw)

    def _ungroup(self, a: np.ndarray) -> np.ndarray:
        a = a.reshape(self.rows, self.groups_per_row * self.group)[:, : self.row_len]
        moved = [s for i, s in enumerate(self.shape) if i != self.axis] + [self.row_len]
        return np.moveaxis(a.reshape(moved), -1, self.axis) if self.shape else a.reshape(())


def _bits(words: np.ndarray, group: int) -> np.ndarray:
    """uint64 [n] -> uint8 [n, group] bit matrix (bit g of word n)."""
    return ((words[:, None] >> np.arange(group, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)


def default_axis(ndim: int) -> int:
    """The dot-product axis: input channels (axis 1) of a weight or NCHW activation; axis 0 of a 1-D tensor."""
    return 1 if ndim >= 2 else 0


def pack_raw(raw, fmt, group: int = 64, align: str = "none", axis: int | None = None, scale=None) -> Planes:
    """Raw bit patterns of ``fmt`` -> Planes (see module docstring)."""
    fmt = formats.get(fmt) if isinstance(fmt, str) else fmt
    if not 1 <= int(group) <= 64:
        raise UserError(f"group size must be 1..64, got {group}")
    if align not in ALIGNS:
        raise UserError(f"unknown alignment {align!r} ({', '.join(ALIGNS)})")
    raw = np.asarray(raw, dtype=np.uint32)
    shape = raw.shape
    axis = default_axis(raw.ndim) if axis is None else axis % max(raw.ndim, 1)
    rows = np.ascontiguousarray(np.moveaxis(raw, axis, -1).reshape(-1, shape[axis] if shape else 1))
    words, signs, nonzero, exps, gexp, lost = _pack_kernel(
        rows, int(group), fmt.nbits, fmt.width, fmt.exp_bits, fmt.frac, fmt.is_float, fmt.twos,
        fmt.is_float and align == "weight")
    if not fmt.is_float:
        exps = gexp = None
    return Planes(fmt, int(group), align, tuple(shape), axis, words, signs, nonzero, exps, gexp, lost,
                  None if scale is None else np.asarray(scale, dtype=np.float64))


def pack(x, fmt="fp32", group: int = 64, align: str = "none", axis: int | None = None,
         per_channel: bool = True) -> Planes:
    """Real values -> Planes. Floats are cast to ``fmt``; int/fixed formats quantise real values first
    (symmetric scale per output channel = axis 0, or per tensor with ``per_channel=False``)."""
    fmt = formats.get(fmt) if isinstance(fmt, str) else fmt
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if fmt.is_float or np.issubdtype(x.dtype, np.integer):
        return pack_raw(fmt.encode(x), fmt, group, align, axis)
    q, scale = fmt.quantize(x, axis=0 if per_channel and x.ndim >= 2 else None)
    if fmt.frac or fmt.name.startswith("q"):
        scale = None  # fixed point: the format's own scale
    return pack_raw(fmt.encode(q), fmt, group, align, axis, scale=scale)


# ---- kernels ----------------------------------------------------------------------------------------
# The 8x8 bit-matrix transpose (Hacker's Delight 7-3) turns 8 bytes of 8 values into 8 bytes of 8 planes
# with a dozen word operations, instead of 64 single-bit moves.
@nb.njit(inline="always")
def _t8(x):
    t = (x ^ (x >> np.uint64(7))) & np.uint64(0x00AA00AA00AA00AA)
    x = x ^ t ^ (t << np.uint64(7))
    t = (x ^ (x >> np.uint64(14))) & np.uint64(0x0000CCCC0000CCCC)
    x = x ^ t ^ (t << np.uint64(14))
    t = (x ^ (x >> np.uint64(28))) & np.uint64(0x00000000F0F0F0F0)
    return x ^ t ^ (t << np.uint64(28))


@nb.njit(inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@nb.njit(inline="always")
def _scatter(words, gi, x, by, b, nbits):
    """Transpose one 8x8 block (8 values x 8 significances) and OR it into the plane words."""
    if x != 0:
        x = _t8(x)
        for t in range(8):
            s = 8 * by + t
            if s < nbits:
                words[gi, s] |= ((x >> np.uint64(8 * t)) & np.uint64(0xFF)) << np.uint64(8 * b)


@nb.njit(cache=True, nogil=True)
def _pack_kernel(rows, G, nbits, width, exp_bits, frac, is_float, twos, align):
    R, L = rows.shape
    gpr = (L + G - 1) // G
    n = R * gpr
    words = np.zeros((n, nbits), np.uint64)
    signs = np.zeros(n, np.uint64)
    nonzero = np.zeros(n, np.uint64)
    exps = np.zeros((n, G) if is_float else (0, G), np.int16)
    gexp = np.zeros(n, np.int16)
    lost = np.zeros(n, np.int32)
    emask = np.uint64((1 << exp_bits) - 1)
    fmask = np.uint64((1 << frac) - 1)
    hid = np.uint64(1) << np.uint64(frac)
    mmask = np.uint64((1 << (width - 1)) - 1)
    one = np.uint64(1)
    ff = np.uint64(0xFF)
    for r in range(R):
        for j in range(gpr):
            gi = r * gpr + j
            base = j * G
            cnt = min(G, L - base)
            emax = np.int64(1)
            if is_float:  # pass 1: effective exponents and the group maximum
                for g in range(cnt):
                    ef = np.int64((np.uint64(rows[r, base + g]) >> np.uint64(frac)) & emask)
                    ee = ef if ef != 0 else 1
                    exps[gi, g] = ee
                    emax = max(emax, ee)
                gexp[gi] = emax
            sg = np.uint64(0)
            nz = np.uint64(0)
            lb = np.uint64(0)
            for b in range((cnt + 7) // 8):  # pass 2: decode, align, gather bytes, transpose
                x0 = np.uint64(0)
                x1 = np.uint64(0)
                x2 = np.uint64(0)
                x3 = np.uint64(0)
                for k in range(min(8, cnt - 8 * b)):
                    g = 8 * b + k
                    w = np.uint64(rows[r, base + g])
                    sg |= ((w >> np.uint64(width - 1)) & one) << np.uint64(g)
                    if is_float:
                        m = w & fmask
                        if (w >> np.uint64(frac)) & emask:
                            m |= hid
                        if m:
                            nz |= one << np.uint64(g)
                        if align:
                            d = emax - exps[gi, g]
                            if d >= 32:
                                lb += _popcount(m)
                                m = np.uint64(0)
                            elif d > 0:
                                lb += _popcount(m & ((one << np.uint64(d)) - one))
                                m >>= np.uint64(d)
                    else:
                        m = w if twos else w & mmask
                        if m:
                            nz |= one << np.uint64(g)
                    sh = np.uint64(8 * k)
                    x0 |= (m & ff) << sh
                    x1 |= ((m >> np.uint64(8)) & ff) << sh
                    x2 |= ((m >> np.uint64(16)) & ff) << sh
                    x3 |= ((m >> np.uint64(24)) & ff) << sh
                _scatter(words, gi, x0, 0, b, nbits)
                if nbits > 8:
                    _scatter(words, gi, x1, 1, b, nbits)
                if nbits > 16:
                    _scatter(words, gi, x2, 2, b, nbits)
                if nbits > 24:
                    _scatter(words, gi, x3, 3, b, nbits)
            signs[gi] = sg
            nonzero[gi] = nz
            lost[gi] = np.int32(lb)
    return words, signs, nonzero, exps, gexp, lost


@nb.njit(cache=True, nogil=True)
def _unpack_kernel(words, G):
    n, nbits = words.shape
    out = np.zeros((n, G), np.uint32)
    nbytes = (nbits + 7) // 8
    nblocks = (G + 7) // 8
    for i in range(n):
        for by in range(nbytes):
            for b in range(nblocks):
                x = np.uint64(0)
                for t in range(8):
                    s = 8 * by + t
                    if s < nbits:
                        x |= ((words[i, s] >> np.uint64(8 * b)) & np.uint64(0xFF)) << np.uint64(8 * t)
                if x == 0:
                    continue
                x = _t8(x)
                for k in range(8):
                    g = 8 * b + k
                    if g < G:
                        out[i, g] |= np.uint32(((x >> np.uint64(8 * k)) & np.uint64(0xFF)) << np.uint64(8 * by))
    return out
