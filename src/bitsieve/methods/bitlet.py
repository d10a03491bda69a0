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
Only ``conv2d`` / ``linear`` calls whose weight is a module parameter are emulated; everything else
(batch norm, activations, attention's activation x activation products) stays fp32. Fixed-point mode is
not emulated here (it needs a quantisation of every activation); ``pe_dot`` models it per group.
Groups follow methods.md decision 1: along the input channels of each kernel tap (``grouping=tap``), or
along the flattened channel-last (tap, channel) axis (``grouping=flat``: a depthwise 3x3 is one 9-pair
group). Confidence: **exact (RTL)** for the group numerics (bit for bit equal to ``pe_dot``); how a real
Bitlet accelerator tiles a layer into groups is not published (decision 1 is bitsieve's choice).

Speed: one Numba kernel per layer, no per-group Python. Convs with many output pixels run a kernel
vectorised over pixels (activations decoded once per group and reused by every output); linear layers and
small feature maps run one vectorised over output channels that skips zero activations (a zero pair can
only matter through E.max, which is corrected exactly where the group's largest weight exponent could beat
the non-zero pairs). Depthwise convs read the padded input directly (1-pair groups: a truncated product).
Sums stay exact: each float64 accumulator receives at most 32 products < 2^48.
"""
from __future__ import annotations

import contextlib

import numba as nb
import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..accel.bitlet_pe import ALL_CHANNELS, _pack_fp
from ..errors import UserError
from .core import Method, Param

GROUPINGS = ("tap", "flat")
PX_MIN_PIXELS = 150  # convs with at least this many output pixels run the pixel-vectorised kernel
TWO53 = float(2 ** 53)
SUB = 2.0 ** -126  # the hidden 1 the PE gives a subnormal activation


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
OSCALE = np.ldexp(1.0, np.arange(511) - 300)  # 2^(E.max - 300): the value of one accumulator unit


# ---- the kernels ----------------------------------------------------------------------------------------
@nb.njit(cache=True)
def _act(u, strict):
    """The PE's activation unpack of one binary32 word: (Ae, signed significand as float64)."""
    e = np.int64((u >> np.uint32(23)) & np.uint32(0xFF))
    f = np.int64(u & np.uint32(0x7FFFFF))
    if e == 0:
        if f == 0:
            return 0, 0.0
        e = 1
        if not strict:
            f |= 0x800000
    else:
        f |= 0x800000
    m = np.float64(f)
    return e, (-m if u >> np.uint32(31) else m)


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


@nb.njit(cache=True)
def _accumulate(acc, wrow, rs, q, a, runs, scl, sch, fac, tmp):
    """acc += a * ((aligned weight) & prune) for one activation (a, 2^(Ae-127) = q) against a weight
    row: aligned weight = trunc(|significand| * 2^(We + Ae - E.max)), the prune mask as runs."""
    n = acc.shape[0]
    nr = runs.shape[0]
    if nr == 1 and runs[0, 1] >= 23:  # one run up to the top significance: a single truncation
        qa = q * scl[0]
        al = a * 2.0 ** runs[0, 0]
        for j in range(n):
            acc[j] += al * np.trunc(wrow[j] * (rs[j] * qa))
        return
    for j in range(n):
        tmp[j] = wrow[j] * (rs[j] * q)
    for r in range(nr):
        al = a * 2.0 ** runs[r, 0]
        sl = scl[r]
        if runs[r, 1] >= 23:
            for j in range(n):
                acc[j] += al * np.trunc(tmp[j] * sl)
        else:
            sh = sch[r]
            fc = fac[r]
            for j in range(n):
                acc[j] += al * (np.trunc(tmp[j] * sl) - np.trunc(tmp[j] * sh) * fc)


@nb.njit(cache=True)
def _run_scales(runs):
    nr = runs.shape[0]
    scl = np.empty(nr, np.float64)
    sch = np.empty(nr, np.float64)
    fac = np.empty(nr, np.float64)
    for r in range(nr):
        scl[r] = 2.0 ** (-runs[r, 0])
        sch[r] = 2.0 ** (-(runs[r, 1] + 1))
        fac[r] = 2.0 ** (runs[r, 1] + 1 - runs[r, 0])
    return scl, sch, fac


@nb.njit(cache=True, nogil=True)
def _bitlet_gemm(A, kmap, weT, wf, gstart, glen, runs, strict, bias, out, oblock):
    """out[n, l, o] = fp32 sum over groups g of Bitlet(group g of column (n, l), weights of o), + bias[o].

    A uint32 [N, R, L] activation words (any strides; row kmap[k] holds dot-product index k);
    weT int32 [K, O] weight exponents, wf float64 [K, O] = signed significand * 2^(We-127);
    groups: k in [gstart[g], gstart[g] + glen[g]), at most 64; runs: the prune mask as [lo, hi] runs.
    Vectorised over output channels, blocked by ``oblock`` outputs for the cache; zero activations are
    skipped (E.max is corrected exactly where a zero pair's weight exponent could exceed it).
    """
    N, R, L = A.shape
    O = weT.shape[1]
    G = gstart.shape[0]
    scl, sch, fac = _run_scales(runs)
    wemax = np.zeros((G, O), np.int32)
    for g in range(G):
        for k in range(gstart[g], gstart[g] + glen[g]):
            row = weT[k]
            wm = wemax[g]
            for o in range(O):
                wm[o] = max(wm[o], row[o])
    for n in range(N):
        for l in range(L):
            for o in range(O):
                out[n, l, o] = -0.0
    nzk = np.empty(64, np.int64)
    nze = np.empty(64, np.int32)
    nza = np.empty(64, np.float64)
    em = np.empty(oblock, np.int32)
    rs = np.empty(oblock, np.float64)
    a0 = np.empty(oblock, np.float64)
    a1 = np.empty(oblock, np.float64)
    tmp = np.empty(oblock, np.float64)
    vd = np.empty(oblock, np.float64)
    rv = np.empty(oblock, np.uint32)
    rf = rv.view(np.float32)
    for o0 in range(0, O, oblock):
        ob = min(oblock, O - o0)
        emb, rsb, a0b, a1b = em[:ob], rs[:ob], a0[:ob], a1[:ob]
        tmb, vdb, rvb, rfb = tmp[:ob], vd[:ob], rv[:ob], rf[:ob]
        for g in range(G):
            k0 = gstart[g]
            k1 = k0 + glen[g]
            wem = wemax[g, o0:o0 + ob]
            for n in range(N):
                for l in range(L):
                    cnt = 0
                    for k in range(k0, k1):
                        e, m = _act(A[n, kmap[k], l], strict)
                        if m != 0.0:
                            nzk[cnt] = k
                            nze[cnt] = np.int32(e)
                            nza[cnt] = m
                            cnt += 1
                    orow = out[n, l, o0:o0 + ob]
                    if cnt == 0:  # every product is zero: the PE returns +0
                        for j in range(ob):
                            orow[j] = orow[j] + np.float32(0.0)
                        continue
                    # pass 1: E.max over the non-zero pairs, then over zero pairs where they could matter
                    for j in range(ob):
                        emb[j] = -1
                    for t in range(cnt):
                        wrow = weT[nzk[t], o0:o0 + ob]
                        a_e = nze[t]
                        for j in range(ob):
                            emb[j] = max(emb[j], wrow[j] + a_e)
                    if cnt < k1 - k0:
                        for j in range(ob):
                            if emb[j] < wem[j]:
                                for k in range(k0, k1):
                                    e, m = _act(A[n, kmap[k], l], strict)
                                    if m == 0.0 and weT[k, o0 + j] > emb[j]:
                                        emb[j] = np.int32(weT[k, o0 + j])
                    for j in range(ob):
                        rsb[j] = RSCALE[emb[j]]
                        a0b[j] = 0.0
                        a1b[j] = 0.0
                    # pass 2: aligned, truncated, pruned weights x full activation significands; two exact
                    # halves (each at most 32 products < 2^48, so every partial sum is exact in float64)
                    for t in range(cnt):
                        acc = a1b if t & 1 else a0b
                        frow = wf[nzk[t], o0:o0 + ob]
                        _accumulate(acc, frow, rsb, POW2A[nze[t]], nza[t], runs, scl, sch, fac, tmb)
                    _pack_vec(a0b, a1b, emb, strict, vdb, rvb)
                    for j in range(ob):
                        orow[j] = orow[j] + rfb[j]
    if bias.shape[0]:  # no bias: nothing is added (a -0 sum stays -0)
        for n in range(N):
            for l in range(L):
                orow = out[n, l]
                for o in range(O):
                    orow[o] = orow[o] + bias[o]


@nb.njit(cache=True, nogil=True)
def _bitlet_gemm_px(A, kmap, we, wf, gstart, glen, runs, strict, out, lblock):
    """As ``_bitlet_gemm`` but vectorised over the columns l (pixels) of A [N, R, L] (contiguous along L),
    for layers with few output channels: activations are decoded once per group and block of pixels and
    reused by every output. we int32 [O, K], wf float64 [O, K]. No bias (the caller adds it)."""
    N, R, L = A.shape
    O = we.shape[0]
    G = gstart.shape[0]
    scl, sch, fac = _run_scales(runs)
    nr = runs.shape[0]
    fast = nr == 1 and runs[0, 1] >= 23
    ae = np.empty((64, lblock), np.int32)
    am = np.empty((64, lblock), np.float64)
    aqi = np.empty((64, lblock), np.int64)
    aq = aqi.view(np.float64)
    live = np.empty(64, np.bool_)
    em = np.empty(lblock, np.int32)
    rsi = np.empty(lblock, np.int64)
    rs = rsi.view(np.float64)
    a0 = np.empty(lblock, np.float64)
    a1 = np.empty(lblock, np.float64)
    tmp = np.empty(lblock, np.float64)
    vd = np.empty(lblock, np.float64)
    rv = np.empty(lblock, np.uint32)
    rf = rv.view(np.float32)
    hid = 0 if strict else 1
    for n in range(N):
        for o in range(O):
            for l in range(L):
                out[n, o, l] = -0.0
        for l0 in range(0, L, lblock):
            lb = min(lblock, L - l0)
            emb, rsb, a0b, a1b = em[:lb], rs[:lb], a0[:lb], a1[:lb]
            tmb, vdb, rvb, rfb = tmp[:lb], vd[:lb], rv[:lb], rf[:lb]
            for g in range(G):
                k0 = gstart[g]
                kn = glen[g]
                for t in range(kn):  # decode the group's activations, branch-free
                    row = A[n, kmap[k0 + t], l0:l0 + lb]
                    ea, ma, qa = ae[t, :lb], am[t, :lb], aqi[t, :lb]
                    anynz = False
                    for x in range(lb):
                        u = row[x]
                        e = np.int64((u >> np.uint32(23)) & np.uint32(0xFF))
                        f = np.int64(u & np.uint32(0x7FFFFF))
                        sub = np.int64((e == 0) & (f != 0))
                        ee = e | sub
                        m = np.float64(f | (((e != 0) | (sub & hid)) << 23))
                        ea[x] = np.int32(ee)
                        ma[x] = -m if u >> np.uint32(31) else m
                        qa[x] = (ee + 896) << 52
                        anynz |= m != 0.0
                    live[t] = anynz
                for o in range(O):
                    for x in range(lb):
                        emb[x] = -1
                    for t in range(kn):
                        w_e = np.int32(we[o, k0 + t])
                        ea = ae[t, :lb]
                        for x in range(lb):
                            emb[x] = max(emb[x], w_e + ea[x])
                    for x in range(lb):
                        rsi[x] = np.int64(1277 - emb[x]) << 52
                        a0b[x] = 0.0
                        a1b[x] = 0.0
                    for t in range(kn):
                        if not live[t]:
                            continue
                        acc = a1b if t & 1 else a0b
                        w = wf[o, k0 + t]
                        ma, qa = am[t, :lb], aq[t, :lb]
                        if fast:
                            ws = w * scl[0]
                            up = 2.0 ** runs[0, 0]
                            for x in range(lb):
                                acc[x] += (ma[x] * up) * np.trunc(ws * (rsb[x] * qa[x]))
                        else:
                            for x in range(lb):
                                tmb[x] = w * (rsb[x] * qa[x])
                            for r in range(nr):
                                up = 2.0 ** runs[r, 0]
                                sl = scl[r]
                                if runs[r, 1] >= 23:
                                    for x in range(lb):
                                        acc[x] += (ma[x] * up) * np.trunc(tmb[x] * sl)
                                else:
                                    sh = sch[r]
                                    fc = fac[r]
                                    for x in range(lb):
                                        acc[x] += (ma[x] * up) * (np.trunc(tmb[x] * sl) - np.trunc(tmb[x] * sh) * fc)
                    _pack_vec(a0b, a1b, emb, strict, vdb, rvb)
                    orow = out[n, o, l0:l0 + lb]
                    for x in range(lb):
                        orow[x] = orow[x] + rfb[x]


@nb.njit(cache=True)
def _product_tap(seg, segf, w, hid, vd, rv):
    """One tap of a 1-pair-group depthwise conv over a row of pixels: rv = binary32 words of the products,
    truncated; returns how many need the integer packer (zero, tiny or huge results)."""
    vi = vd.view(np.int64)
    n = seg.shape[0]
    for x in range(n):
        u = seg[x]
        a = np.float64(segf[x])
        sub = ((u & np.uint32(0x7F800000)) == 0) & ((u & np.uint32(0x7FFFFF)) != 0) & hid
        vd[x] = (a + np.float64(sub) * np.copysign(SUB, a)) * w
    slow = 0
    for x in range(n):
        bits = vi[x]
        e = (bits >> 52) & 0x7FF
        ok = np.int64((e >= 897) & (e <= 1150))  # binary32 exponent 1..254
        word = ((bits >> 32) & np.int64(0x80000000)) | (((bits >> 29) & np.int64(0x3FFFFFFFF)) - np.int64(896 << 23))
        rv[x] = np.uint32(word * ok)  # a zero product gives +0, as the PE does
        slow += 1 - (ok | np.int64((bits << 1) == 0))
    return slow


@nb.njit(cache=True, nogil=True)
def _single_pair_depthwise(X, Xf, we, wm, wp, kw, sh, sw, dh, dw, prune, strict, bias, out):
    """Depthwise conv with one pair per group (``grouping=tap``): the PE result is the product of the
    pruned weight and the activation (subnormal activations read with a hidden 1 unless strict),
    truncated to binary32; taps are added in fp32. wp float64 [C, T] pruned weights, we/wm their
    exponent and significand (for the rare non-normal results, which go through the integer packer)."""
    N, C, Ho, Wo = out.shape
    T = we.shape[1]
    rv = np.empty(Wo, np.uint32)
    rf = rv.view(np.float32)
    vd = np.empty(Wo, np.float64)
    vi = vd.view(np.int64)
    hid = not strict
    for n in range(N):
        for c in range(C):
            for oy in range(Ho):
                orow = out[n, c, oy]
                for x in range(Wo):
                    orow[x] = -0.0
                for k in range(T):
                    ty, tx = k // kw, k % kw
                    row = X[n, c, oy * sh + ty * dh]
                    rowf = Xf[n, c, oy * sh + ty * dh]
                    w = wp[c, k]
                    b0 = tx * dw
                    if sw == 1:  # contiguous taps: a separately compiled, vectorised specialisation
                        slow = _product_tap(row[b0:b0 + Wo], rowf[b0:b0 + Wo], w, hid, vd, rv)
                    else:
                        b1 = b0 + (Wo - 1) * sw + 1
                        slow = _product_tap(row[b0:b1:sw], rowf[b0:b1:sw], w, hid, vd, rv)
                    if slow:
                        for x in range(Wo):
                            v = vd[x]
                            e32 = ((vi[x] >> 52) & 0x7FF) - 896
                            if v != 0.0 and not (1 <= e32 <= 254):
                                ae, am = _act(row[tx * dw + x * sw], strict)
                                acc = np.int64(am) * (wm[c, k] & prune)
                                rv[x] = _pack_fp(-acc if w < 0 else acc, we[c, k] + ae, strict)
                    for x in range(Wo):
                        orow[x] = orow[x] + rf[x]
                if bias.shape[0]:
                    for x in range(Wo):
                        orow[x] = orow[x] + bias[c]


@nb.njit(cache=True, nogil=True)
def _bitlet_depthwise(X, we, wf, kw, sh, sw, dh, dw, gstart, glen, runs, strict, bias, out):
    """Depthwise conv with multi-pair groups (``grouping=flat``) straight from the padded input, vectorised
    over the pixels of an output row. X uint32 [N, C, Hp, Wp]; we int32 [C, T], wf float64 [C, T]
    (T = kh * kw taps, tap k = ty * kw + tx); out float32 [N, C, Ho, Wo]. Groups run along the taps."""
    N, C, Ho, Wo = out.shape
    G = gstart.shape[0]
    scl, sch, fac = _run_scales(runs)
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
                            e, m = _act(row[tx * dw + x * sw], strict)
                            em[x] = max(em[x], wk + e)
                    for x in range(Wo):
                        rs[x] = RSCALE[em[x]]
                    for k in range(k0, k1):  # pass 2: each pixel its own activation, one weight per tap
                        ty, tx = k // kw, k % kw
                        row = X[n, c, oy * sh + ty * dh]
                        for x in range(Wo):
                            e, m = _act(row[tx * dw + x * sw], strict)
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


def bitlet_matmul(x: np.ndarray, w: np.ndarray, gstart: np.ndarray, glen: np.ndarray, *,
                  prune: int = ALL_CHANNELS, strict_ieee: bool = False, bias: np.ndarray | None = None,
                  oblock: int = 1024) -> np.ndarray:
    """Emulated ``x @ w.T (+ bias)``: x float32 [P, K], w float32 [O, K], groups (start, length) along K.
    Returns float32 [P, O]; every group is computed as ``pe_dot`` computes it."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    we, wf = split_weights(w)
    o = w.shape[0]
    out = np.empty((1, x.shape[0], o), np.float32)
    b = np.zeros(0, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    _bitlet_gemm(x.view(np.uint32).T[None], np.arange(x.shape[1]), np.ascontiguousarray(we.T),
                 np.ascontiguousarray(wf.T), np.asarray(gstart, np.int64), np.asarray(glen, np.int64),
                 prune_runs(int(prune)), bool(strict_ieee), b, out, int(min(oblock, max(o, 1))))
    return out[0]


def _groups(taps: int, chans: int, group: int, grouping: str) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of the PE groups along a channel-last (tap, channel) axis of taps * chans."""
    if grouping == "flat":
        starts = np.arange(0, taps * chans, group)
        return starts, np.minimum(group, taps * chans - starts)
    j = np.arange(0, chans, group)
    starts = (np.arange(taps)[:, None] * chans + j[None, :]).reshape(-1)
    return starts, np.tile(np.minimum(group, chans - j), taps)


class Emulator:
    """Runs conv2d/linear calls through the Bitlet numerics (see the module docstring).

    ``prune``, ``strict_ieee``, ``group`` (<= 64 pairs) and ``grouping`` as in the method's parameters.
    Weight decompositions are cached per weight tensor (and its in-place version)."""

    def __init__(self, prune: int = ALL_CHANNELS, strict_ieee: bool = False, group: int = 64,
                 grouping: str = "tap"):
        if not 1 <= int(prune) <= ALL_CHANNELS:
            raise UserError(f"bitlet: prune must be a non-zero 24-bit mask, got {prune:#x}")
        if not 1 <= int(group) <= 64:
            raise UserError(f"bitlet: group must be 1..64, got {group}")
        if grouping not in GROUPINGS:
            raise UserError(f"bitlet: grouping must be one of {', '.join(GROUPINGS)}")
        self.prune, self.strict, self.group, self.grouping = int(prune), bool(strict_ieee), int(group), grouping
        self.runs = prune_runs(self.prune)
        self._cache: dict = {}
        self.pairs = 0  # multiply-accumulates emulated so far

    def _weights(self, w: torch.Tensor, key: str, make):
        k = (id(w), w._version, key)
        if k not in self._cache:
            self._cache[k] = make(w.detach().float().cpu().numpy())
        return self._cache[k]

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """Emulated F.linear: groups of ``group`` along the input features."""
        o, i = w.shape
        we, wf = self._weights(w, "lin", lambda a: tuple(np.ascontiguousarray(t.T) for t in split_weights(a)))
        xs = _words(x).reshape(-1, i)
        gs, gl = _groups(1, i, self.group, "flat")
        out = self._gemm(xs.T[None], np.arange(i), we, wf, gs, gl, b, o)
        return torch.from_numpy(out[0]).reshape(*x.shape[:-1], o)

    def _gemm(self, A, kmap, we, wf, gs, gl, b, o):
        """The output-vectorised kernel; returns float32 [N, L, O]."""
        out = np.empty((A.shape[0], A.shape[2], o), np.float32)
        bias = np.zeros(0, np.float32) if b is None else b.detach().float().numpy()
        _bitlet_gemm(A, kmap, we, wf, gs, gl, self.runs, self.strict, np.ascontiguousarray(bias), out, min(1024, o))
        self.pairs += A.shape[0] * A.shape[2] * len(kmap) * o
        return out

    def conv2d(self, x, w, b=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
        """Emulated F.conv2d: channel-last taps, decision 1 groups (im2col only where taps > 1)."""
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))  # noqa: E731
        stride, dilation = pair(stride), pair(dilation)
        o, cg, kh, kw = w.shape
        x = x.detach().float()
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:  # 'same' (stride 1): torch puts the odd extra pad on the right/bottom
                tot = [d * (k - 1) for d, k in zip(dilation, (kh, kw))]
                x = F.pad(x, (tot[1] // 2, tot[1] - tot[1] // 2, tot[0] // 2, tot[0] - tot[0] // 2))
                padding = (0, 0)
        padding = pair(padding)
        n, c, h, wd = x.shape
        ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        wo = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        taps, og = kh * kw, o // groups
        bias = np.zeros(0, np.float32) if b is None else np.ascontiguousarray(b.detach().float().numpy())
        if cg == 1 and og == 1 and groups > 1:  # depthwise: straight from the padded input
            xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
            gs, gl = _groups(taps, 1, self.group, self.grouping)
            out = np.empty((n, c, ho, wo), np.float32)
            geo = (kw, stride[0], stride[1], dilation[0], dilation[1])
            self.pairs += c * taps * n * ho * wo
            if gl.max() == 1:  # one pair per group: a truncated product per tap
                we, wm, wp = self._weights(w, "dw1", lambda a: _pruned_weights(a.reshape(o, taps), self.prune))
                xw = _words(xp)
                _single_pair_depthwise(xw, xw.view(np.float32), we, wm, wp, *geo, self.prune, self.strict, bias, out)
            else:
                we, wf = self._weights(w, "dw", lambda a: split_weights(a.reshape(o, taps)))
                _bitlet_depthwise(_words(xp), we, wf, *geo, gs, gl, self.runs, self.strict, bias, out)
            return torch.from_numpy(out)
        outs = []
        for gi in range(groups):
            def make(a, gi=gi):
                wg = a[gi * og:(gi + 1) * og].transpose(0, 2, 3, 1).reshape(og, taps * cg)
                return tuple(np.ascontiguousarray(t.T) for t in split_weights(wg))
            we, wf = self._weights(w, f"conv{gi}", make)
            xg = x[:, gi * cg:(gi + 1) * cg]
            if taps == 1 and padding == (0, 0):
                A = _words(xg[:, :, ::stride[0], ::stride[1]]).reshape(n, cg, ho * wo)
                kmap = np.arange(cg)
            else:  # unfold rows are (channel, tap); the groups read them tap-major
                A = _words(F.unfold(xg, (kh, kw), dilation, padding, stride))
                kmap = (np.arange(cg)[None, :] * taps + np.arange(taps)[:, None]).reshape(-1)
            gs, gl = _groups(taps, cg, self.group, self.grouping)
            if A.shape[2] >= PX_MIN_PIXELS:  # many pixels: vectorise over them
                wex, wfx = self._weights(w, f"px{gi}", lambda a, gi=gi: tuple(
                    np.ascontiguousarray(t) for t in split_weights(
                        a[gi * og:(gi + 1) * og].transpose(0, 2, 3, 1).reshape(og, taps * cg))))
                res = np.empty((n, og, A.shape[2]), np.float32)
                _bitlet_gemm_px(A, kmap, wex, wfx, gs, gl, self.runs, self.strict, res, 256)
                self.pairs += n * A.shape[2] * len(kmap) * og
                outs.append(res)
            else:
                outs.append(self._gemm(A, kmap, we, wf, gs, gl, None, og).transpose(0, 2, 1))
        out = np.concatenate(outs, axis=1) if groups > 1 else outs[0]
        if b is not None:  # the bias was left out of the per-group kernels: add it once, in fp32
            out = out + bias[None, :, None]
        return torch.from_numpy(out).reshape(n, o, ho, wo)


def _pruned_weights(w: np.ndarray, prune: int):
    """float32 weights [C, T] -> (We, significand int64, pruned value float64): what a 1-pair group
    multiplies (no alignment shift in a 1-pair group)."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    e = ((u >> 23) & 0xFF).astype(np.int64)
    f = (u & 0x7FFFFF).astype(np.int64)
    m = f | ((e != 0).astype(np.int64) << 23)
    e = np.where((e == 0) & (f != 0), 1, e)
    v = np.ldexp((m & prune).astype(np.float64), e - 150)
    return e, m, np.where(u >> 31, -v, v)


def _words(t: torch.Tensor) -> np.ndarray:
    """A float tensor's binary32 words as a contiguous uint32 array (no copy when already contiguous)."""
    return np.ascontiguousarray(t.detach().float().contiguous().numpy()).view(np.uint32)


_CONV = {torch.conv2d, F.conv2d}
_LINEAR = {F.linear, torch._C._nn.linear}


class _Mode(TorchFunctionMode):
    def __init__(self, emu: Emulator):
        super().__init__()
        self.emu = emu

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONV and len(args) > 1 and isinstance(args[1], torch.nn.Parameter):
            return self.emu.conv2d(*args, **kwargs)
        if func in _LINEAR and len(args) > 1 and isinstance(args[1], torch.nn.Parameter):
            return self.emu.linear(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def emulate(params: dict | None = None, **kw):
    """``with emulate({"prune": 0xFF0000}): module(x)`` runs every conv2d/linear whose weight is a
    parameter through the Bitlet numerics. Yields the Emulator (its ``pairs`` counts the MACs)."""
    p = {**METHOD.defaults(), **(params or {}), **kw}
    emu = Emulator(effective_prune(p), p["strict_ieee"], p["group"], p["grouping"])
    with torch.no_grad(), _Mode(emu):
        yield emu


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
                                    "along the flattened (tap, channel) axis", choices=GROUPINGS),
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
