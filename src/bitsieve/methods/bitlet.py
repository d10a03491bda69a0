"""Bitlet numerics (MICRO'21) applied to whole layers, as an emulated forward pass.

Every conv/linear dot product is cut into groups of at most 64 (weight, activation) pairs and each group is
computed as the Bitlet PE computes it in fp32 mode (``bitsieve.accel.bitlet_pe``, bitlet_rtl.md 3.1):

- E_i = We_i + Ae_i (biased exponents), E.max over *all* pairs of the group, zero products included;
- each weight significand is aligned to E.max by a truncating right shift, then masked by ``prune``
  (bit s enables significance s);
- the activation significand is used in full (a subnormal activation gets a hidden 1 unless
  ``strict_ieee``), the products are summed exactly (64-bit integer accumulator);
- the sum is packed to binary32 by truncation (with the [2^-127, 2^-126) binade quirk unless
  ``strict_ieee``; overflow gives inf).

The group results of one dot product are added in fp32, in group order, outside the PE; then the bias.
This module holds the kernels (NumPy/Numba, no torch); ``bitlet_emulate`` runs a torch model through them.
Only ``conv2d`` / ``linear`` calls whose weight is a module parameter are emulated; everything else
(batch norm, activations, attention's activation x activation products) stays fp32. Fixed-point mode is
not emulated here (it needs a quantisation of every activation); ``pe_dot`` models it per group.
Groups follow methods.md decision 1: along the input channels of each kernel tap (``grouping=tap``), or
along the flattened channel-last (tap, channel) axis (``grouping=flat``: a depthwise 3x3 is one 9-pair
group), or as the Bitlet design's simulator cuts lanes with its default ``auto`` layout (``grouping=auto``,
``bitsieve.lanes``: along the kernel taps of each input channel where k^2 > c_w, first and depthwise layers,
else along the input channels of each tap), so the design's numerics and its cycles read the same groups. Confidence: **exact (RTL)** for the group numerics (bit for bit equal to ``pe_dot``); how a real
Bitlet accelerator tiles a layer into groups is not published (decision 1 is bitsieve's choice).

Speed: one Numba kernel per layer, no per-group Python; the batch and the output pixels form one axis
of columns. A weight is kept as the float64 bits of its signed significand with its exponent added, so
aligning it to a group's E.max is one integer add of (Ae - E.max) << 52 and truncating it one vroundpd;
products of 24-bit significands and their sums are exact in float64 (each accumulator receives at most
32 products < 2^48). Two kernels: one vectorised over output channels that skips zero activations (a
zero pair can only matter through E.max, which is corrected exactly where the group's largest weight
exponent could beat the non-zero pairs), and one vectorised over columns for layers with few outputs
and short groups (activations decoded once per group and reused by every output). Depthwise convs read
the padded input directly (1-pair groups: a truncated product per tap, vectorised over the plane).
The bound: about 4 vector operations per 4 multiply-accumulates (add, subtract, round, fused
multiply-add), so one AVX2 core emulates a few GMAC/s.
"""
from __future__ import annotations


import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..accel.bitlet_pe import ALL_CHANNELS, _pack_fp
from ..errors import UserError
from .core import Method, Param

GROUPINGS = ("tap", "flat", "auto")
OBLOCK = 256  # outputs per block of the output-vectorised kernel
PBLOCK = 256  # columns per block of the column-vectorised kernel
COLS_MAX_OUT, COLS_MAX_GROUP = 64, 32  # see use_columns
TWO53 = float(2 ** 53)
SUB = 2.0 ** -126  # the hidden 1 the PE gives a subnormal activation; the smallest normal binary32
BIG = 2.0 ** 128  # the first value past binary32's range


# ---- operand decomposition ------------------------------------------------------------------------------
def split_weights(w: np.ndarray):
    """float32 weights -> (We int32, signed significand x 2^(We-127) float64), IEEE unpacking
    (subnormal: exponent 1, no hidden bit; zero: exponent 0)."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    e = ((u >> 23) & 0xFF).astype(np.int32)
    f = (u & 0x7FFFFF).astype(np.int64)
    m = (f | ((e != 0).astype(np.int64) << 23)).astype(np.float64)
    e = np.where((e == 0) & (f != 0), 1, e).astype(np.int32)
    return e, np.ldexp(np.where(u >> 31, -m, m), e - 127)


def prune_runs(prune: int) -> np.ndarray:
    """The enabled significances as runs [lo, hi] of consecutive set bits, int64 [n_runs, 2]."""
    runs, s = [], 0
    while s < 24:
        if (prune >> s) & 1:
            lo = s
            while s < 24 and (prune >> s) & 1:
                s += 1
            runs.append((lo, s - 1))
        else:
            s += 1
    return np.array(runs, dtype=np.int64).reshape(-1, 2)


POW2A = np.ldexp(1.0, np.arange(256) - 127)  # 2^(Ae - 127)
RSCALE = np.ldexp(1.0, 254 - np.arange(511))  # 2^(254 - E.max)


ZERO_WORD = int(np.float64(2.0 ** -400).view(np.int64))  # a zero weight: below 1 after any alignment


def weight_words(w: np.ndarray):
    """float32 weights -> (We int32, int64 words): the float64 bits of the signed significand with We
    added to the exponent field, so that adding (Ae - E.max) << 52 gives the aligned, untruncated weight
    significand x 2^(We + Ae - E.max). A zero weight becomes 2^-400, which truncates to 0 whatever the
    shift (exponent fields stay within 90..1300: no wrap)."""
    e, wf = split_weights(w)
    words = wf.view(np.int64) + (np.int64(127) << 52)
    return e, np.where(wf == 0, ZERO_WORD, words)


def use_columns(o: int, glen: np.ndarray) -> bool:
    """Whether the column-vectorised kernel is the faster one for a layer of ``o`` outputs and these
    group lengths (measured layer by layer on efficientnet-lite0: few outputs or short groups; the
    output-vectorised kernel wins elsewhere, most where activations are sparse)."""
    return o < COLS_MAX_OUT or float(np.mean(glen)) <= COLS_MAX_GROUP


# ---- the kernels ----------------------------------------------------------------------------------------
@nb.njit(cache=True)
def _pack_vec(a0, a1, em, strict, vd, rv):
    """Pack exact sums a0 + a1 (two float64 halves, each < 2^53) with E.max ``em`` into binary32 words
    ``rv`` (uint32), truncating as Bitlet_PackFloat: a vectorised fast path for normal results (the bits
    of s * 2^(E.max - 300) in float64), then the PE's integer packer for the rest (rare)."""
    n = a0.shape[0]
    vi = vd.view(np.int64)
    for j in range(n):
        vi[j] = np.int64(em[j] + 723) << 52  # 2^(E.max - 300)
    for j in range(n):
        vd[j] = (a0[j] + a1[j]) * vd[j]
    slow = 0
    for j in range(n):
        bits = vi[j]
        e = (bits >> 52) & 0x7FF
        ok = np.int64((e >= 897) & (e <= 1150) & (abs(a0[j] + a1[j]) < TWO53))  # binary32 exponent 1..254
        word = ((bits >> 32) & np.int64(0x80000000)) | (((bits >> 29) & np.int64(0x3FFFFFFFF)) - np.int64(896 << 23))
        rv[j] = np.uint32(word * ok)  # a zero sum gives +0
        slow += 1 - (ok | np.int64((bits << 1) == 0))
    if slow:  # zeros (fine as they are), tiny, huge or >= 2^53 sums: the PE's integer packer
        for j in range(n):
            s = a0[j] + a1[j]
            e = (vi[j] >> 52) & 0x7FF
            if s != 0.0 and not ((e >= 897) & (e <= 1150) & (abs(s) < TWO53)):
                rv[j] = _pack_fp(np.int64(a0[j]) + np.int64(a1[j]), np.int64(em[j]), strict)


def _bitcast(src, dst, llvm_dst):
    @intrinsic
    def cast(typingctx, x):
        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], llvm_dst)
        return dst(src), codegen
    return cast


# free reinterpretations that keep loops vectorisable (a view of one buffer as two types does not)
_as_f64 = _bitcast(types.int64, types.float64, ir.DoubleType())
_as_i64 = _bitcast(types.float64, types.int64, ir.IntType(64))
_as_f32 = _bitcast(types.uint32, types.float32, ir.FloatType())


@nb.njit(cache=True, inline="always")
def _decode(u, hid, dn):
    """The PE's activation unpack of one binary32 word, branch-free: (Ae, Ae << 52 - dn, signed
    significand). A subnormal reads exponent 1, with a hidden 1 when ``hid``."""
    e = np.int64((u >> np.uint32(23)) & np.uint32(0xFF))
    f = np.int64(u & np.uint32(0x7FFFFF))
    sub = np.int64((e == 0) & (f != 0))
    ee = e | sub
    m = np.float64(f | (((e != 0) | (sub & hid)) << 23))
    return ee, (ee << 52) - dn, (-m if u >> np.uint32(31) else m)


@nb.njit(cache=True, inline="always")
def _acc_runs(acc, v, am, ups, scl, sch, fac):
    """acc += am * (trunc(v) & prune) * 2^lo, for a prune mask of several runs [lo, hi] of significances:
    bits lo..hi of trunc(v) are trunc(v 2^-lo) - trunc(v 2^-(hi+1)) 2^(hi+1-lo) (exact)."""
    for r in range(scl.shape[0]):
        for x in range(acc.shape[0]):
            acc[x] += (am[x] * ups[r]) * (np.trunc(v[x] * scl[r]) - np.trunc(v[x] * sch[r]) * fac[r])


@nb.njit(cache=True)
def _prune_plan(runs):
    """(fast, up, dn, ups, scl, sch, fac): a single run up to the top significance ('fast') is one
    truncation of the weight shifted down by lo (dn = lo << 52), the activation scaled up by 2^lo."""
    fast = runs.shape[0] == 1 and runs[0, 1] >= 23
    lo = runs[0, 0] if fast else 0
    nr = runs.shape[0]
    ups = np.empty(nr, np.float64)
    scl = np.empty(nr, np.float64)
    sch = np.empty(nr, np.float64)
    fac = np.empty(nr, np.float64)
    for r in range(nr):
        ups[r] = 2.0 ** runs[r, 0]
        scl[r] = 2.0 ** (-runs[r, 0])
        sch[r] = 2.0 ** (-(runs[r, 1] + 1))
        fac[r] = 2.0 ** (runs[r, 1] + 1 - runs[r, 0])
    return fast, 2.0 ** lo, np.int64(lo) << 52, ups, scl, sch, fac


@nb.njit(cache=True)
def _block_vectors(n):
    """A block's scratch: E.max (int32 and << 52), the two exact half sums, a temporary, the packed words."""
    return (np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n, np.float64), np.empty(n, np.float64),
            np.empty(n, np.float64), np.empty(n, np.uint32))


@nb.njit(cache=True, nogil=True, fastmath={"contract"})
def _gemm_outputs(A, kmap, weT, wbT, gstart, glen, runs, strict, out, oblock):
    """out[p, o] = fp32 sum over groups g of Bitlet(pairs k of group g: weight (k, o), activation
    A[kmap[k], p]), vectorised over the outputs o and skipping zero activations.

    A uint32 [R, P] activation words; weT int32 [K, O] weight exponents; wbT int64 [K, O] weight words
    (``weight_words``); groups k in [gstart[g], gstart[g] + glen[g]) of at most 64 pairs; runs: the prune
    mask as [lo, hi] runs. A zero pair can only matter through E.max: it is corrected exactly where the
    group's largest weight exponent could beat the non-zero pairs. Blocked by ``oblock`` outputs."""
    P = A.shape[1]
    O = weT.shape[1]
    G = gstart.shape[0]
    fast, up, dn, ups, scl, sch, fac = _prune_plan(runs)
    hid = 0 if strict else 1
    wemax = np.zeros((G, O), np.int32)
    for g in range(G):
        for k in range(gstart[g], gstart[g] + glen[g]):
            row = weT[k]
            wm = wemax[g]
            for o in range(O):
                wm[o] = max(wm[o], row[o])
    for p in range(P):
        for o in range(O):
            out[p, o] = -0.0
    nzk = np.empty(64, np.int64)
    nze = np.empty(64, np.int32)
    nzb = np.empty(64, np.int64)
    nza = np.empty(64, np.float64)
    em, emx, a0, a1, v, rv = _block_vectors(oblock)
    amb = np.empty(oblock, np.float64)
    rf = rv.view(np.float32)
    for o0 in range(0, O, oblock):
        ob = min(oblock, O - o0)
        emb, emxb, a0b, a1b, vb, ambb, rvb, rfb = em[:ob], emx[:ob], a0[:ob], a1[:ob], v[:ob], amb[:ob], rv[:ob], rf[:ob]
        for g in range(G):
            k0 = gstart[g]
            k1 = k0 + glen[g]
            wem = wemax[g, o0:o0 + ob]
            for p in range(P):
                cnt = 0
                for k in range(k0, k1):
                    u = A[kmap[k], p]
                    if u & np.uint32(0x7FFFFFFF):
                        ee, eb, m = _decode(u, hid, dn)
                        nzk[cnt] = k
                        nze[cnt] = np.int32(ee)
                        nzb[cnt] = eb
                        nza[cnt] = m * up
                        cnt += 1
                orow = out[p, o0:o0 + ob]
                if cnt == 0:  # every product is zero: the PE returns +0
                    for j in range(ob):
                        orow[j] = orow[j] + np.float32(0.0)
                    continue
                # pass 1: E.max over the non-zero pairs, then over zero pairs where they could matter
                r0 = weT[nzk[0], o0:o0 + ob]
                e0 = nze[0]
                for j in range(ob):
                    emb[j] = r0[j] + e0
                for t in range(1, cnt):
                    wr = weT[nzk[t], o0:o0 + ob]
                    a_e = nze[t]
                    for j in range(ob):
                        s = np.int32(wr[j] + a_e)
                        emb[j] = s if s > emb[j] else emb[j]
                if cnt < k1 - k0:
                    for j in range(ob):
                        if emb[j] < wem[j]:
                            for k in range(k0, k1):
                                if (A[kmap[k], p] & np.uint32(0x7FFFFFFF)) == 0 and weT[k, o0 + j] > emb[j]:
                                    emb[j] = weT[k, o0 + j]
                for j in range(ob):
                    emxb[j] = np.int64(emb[j]) << 52
                    a0b[j] = 0.0
                    a1b[j] = 0.0
                # pass 2: aligned, truncated, pruned weights x full activation significands, summed exactly
                # in two halves (each at most 32 products < 2^48, so every partial sum is exact in float64)
                t = 0
                while fast and t + 1 < cnt:  # two pairs per sweep (the sum of two products is exact)
                    acc = a0b if t < 32 else a1b
                    wr, wr1 = wbT[nzk[t], o0:o0 + ob], wbT[nzk[t + 1], o0:o0 + ob]
                    eb, eb1, am, am1 = nzb[t], nzb[t + 1], nza[t], nza[t + 1]
                    for j in range(ob):
                        ex = emxb[j]
                        acc[j] += am * np.trunc(_as_f64(wr[j] + eb - ex)) + am1 * np.trunc(_as_f64(wr1[j] + eb1 - ex))
                    t += 2
                for t in range(t, cnt):
                    acc = a0b if t < 32 else a1b
                    wr = wbT[nzk[t], o0:o0 + ob]
                    eb = nzb[t]
                    am = nza[t]
                    if fast:
                        for j in range(ob):
                            acc[j] += am * np.trunc(_as_f64(wr[j] + eb - emxb[j]))
                    else:
                        for j in range(ob):
                            vb[j] = _as_f64(wr[j] + eb - emxb[j])
                            ambb[j] = am
                        _acc_runs(acc, vb, ambb, ups, scl, sch, fac)
                _pack_vec(a0b, a1b, emb, strict, vb, rvb)
                for j in range(ob):
                    orow[j] = orow[j] + rfb[j]


@nb.njit(cache=True, nogil=True, fastmath={"contract"})
def _gemm_columns(A, kmap, we, wb, gstart, glen, runs, strict, out, pblock):
    """As ``_gemm_outputs`` but vectorised over the columns p of A [R, P] (contiguous along P): each
    group's activations are decoded once per block of columns and reused by every output; for layers
    with few outputs and short groups. we int32 [O, K], wb int64 [O, K]; out float32 [O, P]."""
    P = A.shape[1]
    O = we.shape[0]
    G = gstart.shape[0]
    fast, up, dn, ups, scl, sch, fac = _prune_plan(runs)
    hid = 0 if strict else 1
    ea = np.empty((64, pblock), np.int32)
    eb = np.empty((64, pblock), np.int64)
    am = np.empty((64, pblock), np.float64)
    em, emx, a0, a1, v, rv = _block_vectors(pblock)
    rf = rv.view(np.float32)
    for o in range(O):
        for p in range(P):
            out[o, p] = -0.0
    for p0 in range(0, P, pblock):
        pb = min(pblock, P - p0)
        emb, emxb, a0b, a1b, vb, rvb, rfb = em[:pb], emx[:pb], a0[:pb], a1[:pb], v[:pb], rv[:pb], rf[:pb]
        for g in range(G):
            k0 = gstart[g]
            kn = glen[g]
            for t in range(kn):
                row = A[kmap[k0 + t], p0:p0 + pb]
                eat, ebt, amt = ea[t], eb[t], am[t]
                for x in range(pb):
                    ee, b, m = _decode(row[x], hid, dn)
                    eat[x] = np.int32(ee)
                    ebt[x] = b
                    amt[x] = m * up
            h = min(kn, 32)  # an even split: the pairs of a sweep never straddle it
            for o in range(O):
                wo_e = we[o, k0:k0 + kn]
                wo_b = wb[o, k0:k0 + kn]
                # pass 1: E.max over every pair (zero products included)
                e0 = wo_e[0]
                ea0 = ea[0]
                for x in range(pb):
                    emb[x] = e0 + ea0[x]
                for t in range(1, kn):
                    w_e = wo_e[t]
                    eat = ea[t]
                    for x in range(pb):
                        s = np.int32(w_e + eat[x])
                        emb[x] = s if s > emb[x] else emb[x]
                for x in range(pb):
                    emxb[x] = np.int64(emb[x]) << 52
                    a0b[x] = 0.0
                    a1b[x] = 0.0
                # pass 2, in two exact halves (see _gemm_outputs)
                t = 0
                while fast and t + 1 < kn:  # two pairs per sweep, as in _gemm_outputs
                    acc = a0b if t < h else a1b
                    w, w1 = wo_b[t], wo_b[t + 1]
                    ebt, amt, eb1, am1 = eb[t, :pb], am[t, :pb], eb[t + 1, :pb], am[t + 1, :pb]
                    for x in range(pb):
                        ex = emxb[x]
                        acc[x] += amt[x] * np.trunc(_as_f64(w + ebt[x] - ex)) + am1[x] * np.trunc(_as_f64(w1 + eb1[x] - ex))
                    t += 2
                for t in range(t, kn):
                    acc = a0b if t < h else a1b
                    w = wo_b[t]
                    ebt, amt = eb[t, :pb], am[t, :pb]
                    if fast:
                        for x in range(pb):
                            acc[x] += amt[x] * np.trunc(_as_f64(w + ebt[x] - emxb[x]))
                    else:
                        for x in range(pb):
                            vb[x] = _as_f64(w + ebt[x] - emxb[x])
                        _acc_runs(acc, vb, amt, ups, scl, sch, fac)
                _pack_vec(a0b, a1b, emb, strict, vb, rvb)
                orow = out[o, p0:p0 + pb]
                for x in range(pb):
                    orow[x] = orow[x] + rfb[x]


@nb.njit(cache=True, inline="always")
def _f32_word(bits):
    """The binary32 word of a float64 (given as its bits) truncated towards zero; valid when its value is
    normal in binary32 (exponent 1..254)."""
    return np.uint32(((bits >> 32) & np.int64(0x80000000)) | (((bits >> 29) - np.int64(896 << 23)) & np.int64(0x7FFFFFFF)))


@nb.njit(cache=True, inline="always")
def _non_normal(p):
    """Whether a non-zero product falls outside binary32's normal range (the PE's packer decides it)."""
    ap = abs(p)
    return ((ap < SUB) & (ap != 0.0)) | (ap >= BIG)


@nb.njit(cache=True, nogil=True)
def _single_pair_depthwise(X, Xf, we, wm, wp, kw, sh, sw, dh, dw, ph, pw, prune, strict, bias, out):
    """Depthwise conv with one pair per group (``grouping=tap``): the PE result is the product of the
    pruned weight and the activation (subnormal activations read with a hidden 1 unless strict),
    truncated to binary32; taps are added in fp32. wp float64 [C, T] pruned weights, we/wm their
    exponent and significand (for the rare non-normal results, which go through the integer packer).

    Each input plane is decoded once into sh x sw phase planes of the plane padded by (ph, pw) zeros
    (padded row y in phase y % sh, column x in x % sw; the padding is never written, so it stays zero),
    so every tap reads one contiguous run: the output is computed on a 'wide' plane of Ho rows of Wq
    columns (the columns past Wo are discarded)."""
    N, C, Ho, Wo = out.shape
    H, W = X.shape[2], X.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    T = we.shape[1]
    Hq, Wq = (Hp + sh - 1) // sh, (Wp + sw - 1) // sw
    wide = Ho * Wq
    dec = np.zeros((sh, sw, Hq * Wq + Wq + kw * dw), np.float64)
    rv = np.empty(wide, np.uint32)
    acc = np.empty(wide, np.float32)
    hid = 0 if strict else 1
    for n in range(N):
        for c in range(C):
            lo, hi = BIG, 0.0  # the smallest non-zero and the largest magnitude of the plane
            for y in range(H):  # decode: a subnormal activation gets its hidden 1
                row, rowf = X[n, c, y], Xf[n, c, y]
                yp = y + ph
                for px in range(sw):
                    drow = dec[yp % sh, px, (yp // sh) * Wq:(yp // sh + 1) * Wq]
                    j0 = (pw + (px - pw) % sw) // sw  # the first padded column in this phase that is real
                    for j in range(j0, (pw + W - px + sw - 1) // sw):
                        u = row[j * sw + px - pw]
                        a = np.float64(rowf[j * sw + px - pw])
                        sub = ((u & np.uint32(0x7F800000)) == 0) & ((u & np.uint32(0x7FFFFF)) != 0)
                        d = a + (np.float64(sub) * hid) * np.copysign(SUB, a)
                        drow[j] = d
                        lo = min(lo, abs(d) if d != 0.0 else BIG)
                        hi = max(hi, abs(d))
            for i in range(wide):
                acc[i] = -0.0
            for k in range(T):
                iy, ix = (k // kw) * dh, (k % kw) * dw
                off = (iy // sh) * Wq + ix // sw
                src = dec[iy % sh, ix % sw, off:off + wide]
                w = wp[c, k]
                if lo * abs(w) >= SUB and hi * abs(w) < BIG:  # every product is zero or normal: one pass
                    for i in range(wide):
                        p = src[i] * w
                        acc[i] = acc[i] + (_as_f32(_f32_word(_as_i64(p))) if p != 0.0 else np.float32(0.0))
                    continue
                slow = 0
                for i in range(wide):  # the exact product, truncated to binary32 through its float64 bits
                    p = src[i] * w
                    rv[i] = _f32_word(_as_i64(p)) if abs(p) >= SUB else np.uint32(0)  # a zero product gives +0
                    slow += _non_normal(p)
                if slow:  # tiny or huge products: the PE's integer packer
                    for i in range(wide):
                        oy, x = i // Wq, i % Wq
                        if x < Wo and _non_normal(src[i] * w):
                            ae, _, am = _decode(X[n, c, oy * sh + iy - ph, x * sw + ix - pw], hid, 0)  # a real pixel: p != 0
                            q = np.int64(am) * (wm[c, k] & prune)
                            rv[i] = _pack_fp(-q if w < 0 else q, we[c, k] + ae, strict)
                for i in range(wide):
                    acc[i] = acc[i] + _as_f32(rv[i])
            b = bias[c] if bias.shape[0] else np.float32(0.0)
            for oy in range(Ho):
                orow = out[n, c, oy]
                for x in range(Wo):
                    orow[x] = acc[oy * Wq + x] + b if bias.shape[0] else acc[oy * Wq + x]


@nb.njit(cache=True, nogil=True)
def _bitlet_depthwise(X, we, wf, kw, sh, sw, dh, dw, gstart, glen, runs, strict, bias, out):
    """Depthwise conv with multi-pair groups (``grouping=flat``) straight from the padded input, vectorised
    over the pixels of an output row. X uint32 [N, C, Hp, Wp]; we int32 [C, T], wf float64 [C, T]
    (T = kh * kw taps, tap k = ty * kw + tx); out float32 [N, C, Ho, Wo]. Groups run along the taps."""
    N, C, Ho, Wo = out.shape
    G = gstart.shape[0]
    _, _, _, _, scl, sch, fac = _prune_plan(runs)
    em = np.empty(Wo, np.int64)
    rs = np.empty(Wo, np.float64)
    a0 = np.empty(Wo, np.float64)
    a1 = np.empty(Wo, np.float64)
    tmp = np.empty(Wo, np.float64)
    vd = np.empty(Wo, np.float64)
    rv = np.empty(Wo, np.uint32)
    rf = rv.view(np.float32)
    am = np.empty(Wo, np.float64)
    aq = np.empty(Wo, np.float64)
    hid = 0 if strict else 1
    for n in range(N):
        for c in range(C):
            for oy in range(Ho):
                orow = out[n, c, oy]
                for x in range(Wo):
                    orow[x] = -0.0
                for g in range(G):
                    k0 = gstart[g]
                    k1 = k0 + glen[g]
                    for x in range(Wo):
                        em[x] = -1
                        a0[x] = 0.0
                        a1[x] = 0.0
                    for k in range(k0, k1):  # pass 1: E.max over every pair (zero products included)
                        ty, tx = k // kw, k % kw
                        row = X[n, c, oy * sh + ty * dh]
                        wk = we[c, k]
                        for x in range(Wo):
                            e, _, m = _decode(row[tx * dw + x * sw], hid, 0)
                            em[x] = max(em[x], wk + e)
                    for x in range(Wo):
                        rs[x] = RSCALE[em[x]]
                    for k in range(k0, k1):  # pass 2: each pixel its own activation, one weight per tap
                        ty, tx = k // kw, k % kw
                        row = X[n, c, oy * sh + ty * dh]
                        for x in range(Wo):
                            e, _, m = _decode(row[tx * dw + x * sw], hid, 0)
                            am[x] = m
                            aq[x] = POW2A[e]
                        acc = a1 if (k - k0) & 1 else a0
                        w = wf[c, k]
                        for r in range(runs.shape[0]):
                            up = 2.0 ** runs[r, 0]
                            for x in range(Wo):
                                tmp[x] = w * (rs[x] * aq[x])
                            if runs[r, 1] >= 23:
                                for x in range(Wo):
                                    acc[x] += (am[x] * up) * np.trunc(tmp[x] * scl[r])
                            else:
                                for x in range(Wo):
                                    part = np.trunc(tmp[x] * scl[r]) - np.trunc(tmp[x] * sch[r]) * fac[r]
                                    acc[x] += (am[x] * up) * part
                    _pack_vec(a0, a1, em, strict, vd, rv)
                    for x in range(Wo):
                        orow[x] = orow[x] + rf[x]
                if bias.shape[0]:
                    for x in range(Wo):
                        orow[x] = orow[x] + bias[c]


def kernel_words(w: np.ndarray, columns: bool):
    """``weight_words`` of a weight matrix [O, K] in the layout its kernel reads ([K, O] for outputs)."""
    words = weight_words(w)
    return words if columns else tuple(np.ascontiguousarray(t.T) for t in words)


def _matmul(A, kmap, words, gs, gl, runs, strict, columns: bool) -> np.ndarray:
    """W @ A with one of the two kernels: A uint32 [R, P] activation words (row kmap[k] holds dot-product
    index k), ``words`` from ``kernel_words``; returns float32 [O, P]."""
    we, wb = words
    if columns:
        out = np.empty((we.shape[0], A.shape[1]), np.float32)
        _gemm_columns(np.ascontiguousarray(A), kmap, we, wb, gs, gl, runs, strict, out, PBLOCK)
        return out
    out = np.empty((A.shape[1], we.shape[1]), np.float32)
    _gemm_outputs(A, kmap, we, wb, gs, gl, runs, strict, out, min(OBLOCK, max(we.shape[1], 1)))
    return out.T


def bitlet_matmul(x: np.ndarray, w: np.ndarray, gstart: np.ndarray, glen: np.ndarray, *,
                  prune: int = ALL_CHANNELS, strict_ieee: bool = False, bias: np.ndarray | None = None,
                  kernel: str = "auto") -> np.ndarray:
    """Emulated ``x @ w.T (+ bias)``: x float32 [P, K], w float32 [O, K], groups (start, length) along K.
    Returns float32 [P, O]; every group is computed as ``pe_dot`` computes it. ``kernel``: ``outputs``
    (vectorised over outputs), ``columns`` (over the rows of x) or ``auto`` (``use_columns``); all give
    the same bits."""
    if kernel not in ("auto", "outputs", "columns"):
        raise UserError(f"bitlet_matmul: kernel must be auto, outputs or columns, got {kernel!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    gl = np.asarray(glen, np.int64)
    columns = kernel == "columns" or (kernel == "auto" and use_columns(w.shape[0], gl))
    words = kernel_words(np.ascontiguousarray(w, dtype=np.float32), columns)
    out = _matmul(x.view(np.uint32).T, np.arange(x.shape[1]), words, np.asarray(gstart, np.int64), gl,
                  prune_runs(int(prune)), bool(strict_ieee), columns).T
    return out if bias is None else out + np.asarray(bias, np.float32)


PARAMS = (
    Param("prune", "mask", ALL_CHANNELS, "24-bit mask of enabled significances of the aligned weight "
                                         "significands (0xFFFFFF = all; e.g. 0xFF0000 = the top 8)", lo=1,
          hi=ALL_CHANNELS),
    Param("keep", "int", 0, "shorthand: enable only the top N significances (overrides prune when > 0)",
          lo=0, hi=24),
    Param("strict_ieee", "bool", False, "fix the RTL's numeric quirks (subnormal activations, the "
                                        "2^-127 binade)"),
    Param("group", "int", 64, "pairs per PE group (the RTL's N_total is 64; fewer = zero-padded groups)",
          lo=1, hi=64),
    Param("grouping", "str", "tap", "tap: groups along input channels per kernel tap (decision 1); flat: "
                                    "along the flattened (tap, channel) axis; auto: the lanes of the Bitlet "
                                    "design's default layout (taps of each channel where k^2 > c_w)",
          choices=GROUPINGS),
)


def effective_prune(params: dict) -> int:
    """The prune mask a parameter set means (``keep`` > 0 overrides ``prune``)."""
    k = int(params.get("keep", 0))
    return ((1 << k) - 1) << (24 - k) if k else int(params["prune"])


METHOD = Method(
    name="bitlet",
    fn=None,
    source="Bitlet, MICRO'21 (Lu, Chang et al.); RTL Zhu-Zixuan/Bitlet-PE as measured in bitlet_rtl.md",
    confidence="exact (RTL)",
    description="Bitlet PE numerics on every conv/linear: 64-pair groups, product-exponent alignment with "
                "truncation, exact sums, truncating pack (emulated forward pass)",
    params=PARAMS,
    kind="forward",
)
