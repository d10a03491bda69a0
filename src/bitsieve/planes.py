"""Packed bit planes: the one representation every method, accelerator model and report reads.

A tensor is cut into groups of G <= 64 consecutive values along its dot-product axis (input channels of a
linear [O, I]; input channels of each kernel tap of a conv [O, I, KH, KW], read channel-last; the channel
axis of NCHW activations). The last group of a row is zero-padded. Each group becomes one uint64 word per
significance s (bit g of ``words[group, s]`` is bit s of value g), plus a word of signs, a word of non-zero
flags, per-value exponents and a group exponent for floats.

Float groups can be aligned to the group's largest weight exponent (methods.md decision 3): each significand
is right-shifted by (group max exponent - own exponent), truncating; subnormals use exponent field 1. With
``align='none'`` the planes hold the exact bits and ``unpack_raw`` gives back the input bit for bit.

MX block formats (formats.py) are their element format plus the block's shared E8M0 scale, kept per value in
``bexp``: the kernel reads the element bits as it reads any float or int. MX scales each block so that its
largest element has the element's top exponent (unless the scale is clamped at 2^-127), so aligning a group to its largest element exponent aligns
every block in it to its own shared scale, as MX hardware does.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

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
    lane_valid: np.ndarray | None = None  # uint64 [n_groups]: real lanes of a lane layout (bitsieve.lanes)
    bexp: np.ndarray | None = None  # uint8 [n_groups, G]: MX E8M0 scale field of each value's block
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
        """uint64 [n_groups]: bit g set where value g is real, not padding (a lane layout's own mask)."""
        if self.lane_valid is not None:
            return self.lane_valid
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
            if f.specials != "none":  # inf / nan keep their meaning (never shifted: theirs is the top exponent)
                fmask = np.uint32((1 << f.frac) - 1)
                frac = mags.astype(np.uint32) & fmask
                special = self.exps == (1 << f.exp_bits) - 1
                if f.specials == "nan":  # e4m3fn: the rest of the top binade is finite
                    special = special & (frac == fmask)
                if special.any():
                    v = np.where(special, np.where((frac == 0) & (f.specials == "ieee"), np.inf, np.nan), v)
        elif f.twos:
            v = mags - np.where(sign, 2.0 ** f.width, 0.0)
        else:
            v = mags
        if not f.twos:
            v = np.where(sign, -v, v)  # keeps -0.0
        if self.bexp is not None:  # MX: the block's shared scale
            v = np.ldexp(v, self.bexp.astype(np.int64) - formats.E8M0_BIAS)
        if self.scale is not None:
            s = np.asarray(self.scale, dtype=np.float64).reshape(-1)
            v = v * (s[self.channel_of_group()][:, None] if s.size > 1 else s[0])  # per channel or per tensor
        elif not f.is_float and f.frac:
            v = v * f.scale_of()
        return self._ungroup(v)

    def unpack_raw(self) -> np.ndarray:
        """uint32 raw bit patterns in the original shape; bit-exact inverse of ``pack_raw`` when align='none'."""
        f = self.fmt
        if f.is_float and self.align != "none":
            shared = None if self.bexp is None else self._ungroup(self.bexp)
            return f.encode(self.values(), axis=self.axis, shared=shared)
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
        if self.bexp is not None:
            raw |= self.bexp.astype(np.uint32) << np.uint32(f.width)
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
    bexp = None
    if fmt.block:  # the MX scale field of every value, laid out like the groups (padding: 0)
        pad = -rows.shape[1] % int(group)
        bexp = np.pad(fmt.shared_exp(rows), [(0, 0), (0, pad)]).reshape(-1, int(group))
    return Planes(fmt, int(group), align, tuple(shape), axis, words, signs, nonzero, exps, gexp, lost,
                  None if scale is None else np.asarray(scale, dtype=np.float64), bexp=bexp)


def pack(x, fmt="fp32", group: int = 64, align: str = "none", axis: int | None = None,
         per_channel: bool = True) -> Planes:
    """Real values -> Planes. Floats are cast to ``fmt``; int/fixed formats quantise real values first
    (symmetric scale per output channel = axis 0, or per tensor with ``per_channel=False``); MX formats scale
    blocks along the group axis."""
    fmt = formats.get(fmt) if isinstance(fmt, str) else fmt
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if fmt.block:
        return pack_raw(fmt.encode(x, axis=default_axis(x.ndim) if axis is None else axis), fmt, group, align, axis)
    if fmt.is_float or np.issubdtype(x.dtype, np.integer):
        return pack_raw(fmt.encode(x), fmt, group, align, axis)
    q, scale = fmt.quantize(x, axis=0 if per_channel and x.ndim >= 2 else None)
    if fmt.fixed:
        scale = None  # fixed point: the format's own scale
    return pack_raw(fmt.encode(q), fmt, group, align, axis, scale=scale)


def join(parts, shape=None) -> Planes:
    """The planes of a tensor from the planes of its consecutive slices along axis 0, each packed alike
    (same format, group, alignment and dot-product axis, which must not be axis 0): exactly what packing the
    whole tensor in one go gives, since its groups run row by row with axis 0 outermost. Per-group arrays are
    joined in order, ``scale`` (one per index of axis 0, or None) too, and ``shape`` is the parts' shape with
    axis 0 summed. ``parts`` may be a generator: with the whole tensor's ``shape`` given, each part is copied
    into the result as it arrives, so no more than one part is alive besides the result."""
    if shape is None:
        parts = list(parts)
        shape = (sum(int(p.shape[0]) for p in parts),) + (tuple(parts[0].shape[1:]) if parts else ())
    shape = tuple(int(s) for s in shape)
    per_group = ("words", "signs", "nonzero", "exps", "gexp", "lost", "lane_valid", "bexp")
    first, out, n, rows = None, {}, 0, 0
    for p in parts:
        if first is None:
            first = p
            if p.axis == 0 or len(p.shape) < 2 or tuple(p.shape[1:]) != shape[1:]:
                raise ValueError(f"join: planes of shape {p.shape} (axis {p.axis}) are no slice of {shape} "
                                 "along axis 0")
            total = replace(p, shape=shape).rows * p.groups_per_row
            for k in per_group:
                v = getattr(p, k)
                out[k] = None if v is None else np.empty((total,) + v.shape[1:], v.dtype)
            if p.exps is not None and p.exps.shape[0] != p.n_groups:  # ints: exps is an empty [0, G]
                out["exps"] = p.exps
            out["scale"] = None if p.scale is None else np.empty(shape[0], np.float64)
        elif (p.fmt, p.group, p.align, p.axis, tuple(p.shape[1:])) != \
                (first.fmt, first.group, first.align, first.axis, tuple(first.shape[1:])):
            raise ValueError("join: the planes are not packed alike")
        m, r = p.n_groups, int(p.shape[0])
        for k, a in out.items():
            v = getattr(p, k)
            if (a is None) != (v is None):
                raise ValueError(f"join: {k} is set in some parts only")
            if a is None or a is first.exps:
                continue
            if k == "scale":
                v = np.asarray(v, np.float64).reshape(-1)
                if v.size != r:
                    raise ValueError("join: a part's scale is not one per index of axis 0")
                a[rows:rows + r] = v
            else:
                a[n:n + m] = v
        n, rows = n + m, rows + r
    if first is None:
        raise ValueError("join: no planes to join")
    if rows != shape[0] or n != out["words"].shape[0]:
        raise ValueError(f"join: the parts cover {rows} of {shape[0]} slices along axis 0")
    return Planes(first.fmt, first.group, first.align, shape, first.axis, **out)

# ---- kernels ----------------------------------------------------------------------------------------
# Groups are packed 64 lanes at a time (P = 64 // G groups share one pass, so small groups stay cheap):
#   1. copy the raw values into a 64-lane scratch (zero padding); floats also store their effective
#      exponents and take the group maximum;
#   2. floats: decode + align every lane into a second scratch, a branch-free loop on 32-bit lanes that
#      LLVM vectorises;
#   3. turn the 64 lanes into plane words with LLVM vector code (the intrinsics below): narrow to bytes,
#      shift the wanted bit into each byte's top bit and take the sign mask of the 64 bytes (x86: vpsllw +
#      vpmovmskb, two instructions per 32 values and plane). Signs and non-zero flags are sign masks of the
#      raw lanes too.
# Flags that change a loop (is_float, align) are constants inside each inlined copy of it. The format
# layout stays a run-time value: kernels specialised per layout were only 3-5% faster and each cost seconds
# of compilation, so one float and one int kernel serve every format. The outputs are allocated by NumPy
# (_pack_kernel), which asks the OS for huge pages: at 50M values, faulting in the 4 KiB pages of a Numba
# allocation costs more than the packing itself.

def _vec(ty):
    return ir.VectorType(ty, 64)


def _splat(builder, v, ty):
    """<64 x ty> with every lane = v (a Python int or an LLVM integer value)."""
    if isinstance(v, int):
        return ir.Constant(_vec(ty), [v] * 64)
    if v.type.width != ty.width:
        v = builder.trunc(v, ty) if v.type.width > ty.width else builder.zext(v, ty)
    v = builder.insert_element(ir.Constant(_vec(ty), None), v, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, v, ir.Constant(_vec(ir.IntType(32)), [0] * 64))


def _lanes(context, builder, aryty, ary, start):
    """Pointer to the 64 elements ary[start:start + 64] of a contiguous 1-D array, as one vector."""
    a = context.make_array(aryty)(context, builder, ary)
    ty = context.get_value_type(aryty.dtype)
    return builder.bitcast(builder.gep(a.data, [start]), _vec(ty).as_pointer())


_I1, _I8, _I32, _I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)


@intrinsic
def _bits_of(typingctx, buf, s):
    """uint64 whose bit g is bit s of buf[g], g < 64 (buf: uint32[64])."""
    def codegen(context, builder, sig, args):
        v = builder.load(_lanes(context, builder, sig.args[0], args[0], _I64(0)), align=4)
        v = builder.shl(v, _splat(builder, builder.sub(ir.Constant(args[1].type, 31), args[1]), _I32))
        return builder.bitcast(builder.icmp_signed("<", v, _splat(builder, 0, _I32)), _I64)
    return types.uint64(buf, s), codegen


@intrinsic
def _nonzero_of(typingctx, buf, mask):
    """uint64 whose bit g is set where buf[g] & mask != 0, g < 64 (buf: uint32[64])."""
    def codegen(context, builder, sig, args):
        v = builder.load(_lanes(context, builder, sig.args[0], args[0], _I64(0)), align=4)
        v = builder.and_(v, _splat(builder, args[1], _I32))
        return builder.bitcast(builder.icmp_unsigned("!=", v, _splat(builder, 0, _I32)), _I64)
    return types.uint64(buf, mask), codegen


@intrinsic
def _transpose(typingctx, buf, out, start, nbits):
    """out[start + s] = plane s of the 64 values buf[0:64] (bit g = bit s of buf[g]), for s < nbits."""
    def codegen(context, builder, sig, args):
        v = builder.load(_lanes(context, builder, sig.args[0], args[0], _I64(0)), align=4)
        o = context.make_array(sig.args[1])(context, builder, args[1])
        start, nbits = args[2], args[3]
        for k in range(4):  # byte k of every value
            with builder.if_then(builder.icmp_signed(">", nbits, ir.Constant(nbits.type, 8 * k))):
                b = builder.trunc(builder.lshr(v, _splat(builder, 8 * k, _I32)), _vec(_I8))
                for t in range(8):  # bit t of that byte -> the byte's sign bit -> sign mask
                    s = 8 * k + t
                    with builder.if_then(builder.icmp_signed(">", nbits, ir.Constant(nbits.type, s))):
                        x = builder.shl(b, _splat(builder, 7 - t, _I8))
                        m = builder.bitcast(builder.icmp_signed("<", x, _splat(builder, 0, _I8)), _I64)
                        builder.store(m, builder.gep(o.data, [builder.add(start, ir.Constant(start.type, s))]))
        return context.get_dummy_value()
    return types.void(buf, out, start, nbits), codegen


@intrinsic
def _untranspose(typingctx, words, start, nbits, out):
    """out[g] = value g of the planes words[start:start + nbits] (bit s = bit g of plane s), g < 64."""
    def codegen(context, builder, sig, args):
        w = context.make_array(sig.args[0])(context, builder, args[0])
        start, nbits = args[1], args[2]
        res = _splat(builder, 0, _I32)
        for k in range(4):  # byte k of every value, from planes 8k .. 8k+7
            b = _splat(builder, 0, _I8)
            for t in range(8):
                s = 8 * k + t
                inside = builder.icmp_signed(">", nbits, ir.Constant(nbits.type, s))
                idx = builder.select(inside, builder.add(start, ir.Constant(start.type, s)), start)
                word = builder.select(inside, builder.load(builder.gep(w.data, [idx])), _I64(0))
                bits = builder.zext(builder.bitcast(word, _vec(_I1)), _vec(_I8))
                b = builder.or_(b, builder.shl(bits, _splat(builder, t, _I8)))
            res = builder.or_(res, builder.shl(builder.zext(b, _vec(_I32)), _splat(builder, 8 * k, _I32)))
        builder.store(res, _lanes(context, builder, sig.args[3], args[3], _I64(0)), align=4)
        return context.get_dummy_value()
    return types.void(words, start, nbits, out), codegen


@intrinsic
def popcount(typingctx, x):
    """One-bits of an integer, in its own type (llvm.ctpop, which the loop vectoriser keeps as a vector
    popcount)."""
    if isinstance(x, types.Integer):
        def codegen(context, builder, sig, args):
            return builder.ctpop(args[0])
        return x(x), codegen


# In the two lane loops below, np.uint32 casts keep Numba's integer promotion from widening the lanes to
# 64 bits, and a shift by (frac & 31) tells LLVM that the shift stays below 32: both keep 8 lanes per AVX2
# instruction. Indices are unsigned so that Numba adds no negative-index wraparound.
@nb.njit(inline="always")
def _load_group(flat, off, cnt, G, raw, lane, exps, gi, is_float, frac, emask):
    """raw[lane:lane + G] = the cnt values flat[off:off + cnt], zero-padded. Floats: exps[gi, :cnt] = the
    effective exponents (field; subnormal -> 1); returns their maximum (1 for an empty group)."""
    emax = np.uint32(1)
    for g in range(cnt):
        w = flat[off + g]
        raw[lane + g] = w
        if is_float:
            ee = max(np.uint32(np.uint32(w >> np.uint32(frac & 31)) & emask), np.uint32(1))
            exps[gi, g] = ee
            emax = max(emax, ee)
    for g in range(cnt, np.uint64(G)):
        raw[lane + g] = 0
    return emax


@nb.njit(inline="always")
def _decode(raw, mag, lane, n, emax, frac, emask, fmask, align):
    """mag[lane + g] = significand (hidden bit included) of the float raw[lane + g], g < n, right-shifted by
    (emax - its effective exponent) if align; returns the number of one-bits shifted out."""
    lost = np.uint32(0)
    for g in range(n):
        w = raw[lane + g]
        e = np.uint32(np.uint32(w >> np.uint32(frac & 31)) & emask)
        m = np.uint32(np.uint32(w & fmask) | np.uint32(np.uint32(e != 0) << np.uint32(frac & 31)))
        if align:
            # A significand has at most 31 bits (width <= 32), so a shift clamped to 31 clears it just as
            # a larger one would, and stays defined on 32-bit lanes.
            d = min(np.uint32(emax - max(e, np.uint32(1))), np.uint32(31))
            lost += popcount(np.uint32(m & np.uint32(np.uint32(np.uint32(1) << d) - np.uint32(1))))
            m = np.uint32(m >> d)
        mag[lane + g] = m
    return lost


@nb.njit(inline="always")
def _pack_body(rows, G, nbits, width, exp_bits, frac, is_float, twos, align,
               words, signs, nonzero, exps, gexp, lost):
    R, L = rows.shape
    gpr = (L + G - 1) // G
    n = R * gpr
    flat = rows.reshape(-1)
    wflat = words.reshape(-1)
    emask = np.uint32((1 << exp_bits) - 1)
    fmask = np.uint32((1 << frac) - 1)
    mmask = np.uint32(0xFFFFFFFF) if twos else np.uint32((1 << (width - 1)) - 1)  # non-zero test
    P = 64 // G
    gmask = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - G)
    raw = np.zeros(64, np.uint32)  # P groups of raw values, zero-padded
    mag = np.zeros(64, np.uint32)  # floats: their (aligned) significands
    tw = np.zeros(32, np.uint64)  # plane words of a pass of P > 1 groups
    r = j = 0  # row and group within the row of group gi
    for gi0 in range(0, n, P):
        for q in range(min(P, n - gi0)):
            gi = gi0 + q
            lane = np.uint64(q * G)
            emax = _load_group(flat, np.uint64(r * L + j * G), np.uint64(min(G, L - j * G)), G, raw, lane,
                               exps, gi, is_float, frac, emask)
            if is_float:
                gexp[gi] = emax
                # align is a constant inside each _decode, so its loop has no branch. With one group per
                # pass, decoding all 64 lanes (the padding is zero) gives a loop of constant length.
                if P == 1 and align:
                    lost[gi] = _decode(raw, mag, lane, np.uint64(64), emax, frac, emask, fmask, True)
                elif P == 1:
                    lost[gi] = _decode(raw, mag, lane, np.uint64(64), emax, frac, emask, fmask, False)
                elif align:
                    lost[gi] = _decode(raw, mag, lane, np.uint64(G), emax, frac, emask, fmask, True)
                else:
                    lost[gi] = _decode(raw, mag, lane, np.uint64(G), emax, frac, emask, fmask, False)
            j += 1
            if j == gpr:
                r, j = r + 1, 0
        # ints: the planes are the raw bits below the sign (all of them, two's complement)
        _transpose(mag if is_float else raw, wflat if P == 1 else tw, gi0 * nbits if P == 1 else 0, nbits)
        sg = _bits_of(raw, width - 1)
        nz = _nonzero_of(raw, mmask)
        if P == 1:
            signs[gi0], nonzero[gi0] = sg, nz
        else:  # split the 64 lanes into the P groups
            for q in range(min(P, n - gi0)):
                sh = np.uint64(q * G)
                signs[gi0 + q] = (sg >> sh) & gmask
                nonzero[gi0 + q] = (nz >> sh) & gmask
                for s in range(nbits):
                    words[gi0 + q, s] = (tw[s] >> sh) & gmask


@nb.njit(cache=True, nogil=True)
def _pack_float(rows, G, nbits, width, exp_bits, frac, align, words, signs, nonzero, exps, gexp, lost):
    _pack_body(rows, G, nbits, width, exp_bits, frac, True, False, align,
               words, signs, nonzero, exps, gexp, lost)


@nb.njit(cache=True, nogil=True)
def _pack_int(rows, G, nbits, width, twos, words, signs, nonzero, exps, gexp, lost):
    _pack_body(rows, G, nbits, width, 0, 0, False, twos, False, words, signs, nonzero, exps, gexp, lost)


def _pack_kernel(rows, G, nbits, width, exp_bits, frac, is_float, twos, align):
    """uint32 rows [R, L] -> (words [n, nbits], signs [n], nonzero [n], exps [n, G] (floats; [0, G] for
    ints), gexp [n], lost [n]) for the n = R * ceil(L / G) groups (see the module docstring)."""
    rows = np.ascontiguousarray(rows, dtype=np.uint32)
    R, L = rows.shape
    G = int(G)
    n = R * ((L + G - 1) // G)
    out = (np.empty((n, nbits), np.uint64), np.empty(n, np.uint64), np.empty(n, np.uint64),
           np.zeros((n, G) if is_float else (0, G), np.int16), np.zeros(n, np.int16), np.zeros(n, np.int32))
    if is_float:
        _pack_float(rows, G, nbits, width, exp_bits, frac, bool(align), *out)
    else:
        _pack_int(rows, G, nbits, width, bool(twos), *out)
    return out


@nb.njit(cache=True, nogil=True)
def _unpack_into(words, G, out):
    n, nbits = words.shape
    wflat = words.reshape(-1)
    P = 64 // G
    gmask = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - G)
    v = np.zeros(64, np.uint32)
    tw = np.zeros(32, np.uint64)
    for gi0 in range(0, n, P):
        if P == 1:
            _untranspose(wflat, gi0 * nbits, nbits, v)
        else:  # gather the planes of P groups into 64 lanes (bits >= G of a word are ignored)
            tw[:] = 0
            for q in range(min(P, n - gi0)):
                for s in range(nbits):
                    tw[s] |= (words[gi0 + q, s] & gmask) << np.uint64(q * G)
            _untranspose(tw, 0, nbits, v)
        for q in range(min(P, n - gi0)):
            lane = np.uint64(q * G)
            for g in range(np.uint64(G)):
                out[gi0 + q, g] = v[lane + g]


def _unpack_kernel(words, G):
    """uint64 words [n, nbits] -> uint32 [n, G]: value g = sum over s of bit g of words[:, s] << s."""
    words = np.ascontiguousarray(words, dtype=np.uint64)
    out = np.empty((words.shape[0], int(G)), np.uint32)
    _unpack_into(words, int(G), out)
    return out
