"""Numba kernels for the sequential rules of the DNNsim family (methods.md section 7).

- ``booth``: DNNsim's Booth-like recoding (``core/src/Utils.cpp``, ``generateBoothEncodingEntry``): only runs
  of >= 3 ones become two terms; 7 -> 2 terms, 27 -> 4, 11 -> 3 (not canonical signed digit).
- ``pragmatic_cycles``: DNNsim's two-stage shifter loop (``core/src/BitPragmatic.cpp``, ``process_pe``).
- ``column_sync``: DNNsim's column synchronisation with run-ahead registers (``process_convolution``).
- ``tactical_schedule``: DNNsim's Bit-Tactical greedy promotion (``core/src/BitTactical.cpp``,
  ``original_schedule``/``search``) with its 'T' and 'L' search maps (``core/include/core/BitTactical.h``).
- ``tactical_cycles``: the Pragmatic (TCL-E) or dynamic-precision (TCL-P, ``core/src/ShapeShifter.cpp``)
  back-end on the activations each scheduled weight lane fetches.
Each kernel is a literal transcription of the cited loop, vectorised across bricks where the rule allows.
"""
from __future__ import annotations

import numba as nb
import numpy as np

U64 = np.uint64


# ---- Booth-like recoding (DNNsim Utils.cpp) --------------------------------------------------------------
@nb.njit(cache=True, nogil=True)
def _booth_kernel(vals, top, out):
    for i in range(vals.size):
        n = np.int64(vals[i])
        enc = np.int64(0)
        booth = False
        for q in range(top, -1, -1):
            b0 = (n >> q) & 1
            b1 = (n >> (q - 1)) & 1 if q >= 1 else 0
            b2 = (n >> (q - 2)) & 1 if q >= 2 else 0
            w = (b0 << 2) | (b1 << 1) | b2
            if w == 2 or w == 3:  # 010, 011
                if booth:
                    enc |= np.int64(1) << q
            elif w == 4:  # 100
                enc |= np.int64(1) << q
                booth = False
            elif w == 5 or w == 6:  # 101, 110
                if not booth:
                    enc |= np.int64(1) << q
            elif w == 7:  # 111
                if not booth:
                    enc |= np.int64(1) << (q + 1)
                    booth = True
        out[i] = enc


_TABLE: dict = {}


def _booth_table() -> np.ndarray:
    """DNNsim's table: the recoding of every 15-bit magnitude (``generateBoothEncodingTable``, 32768 entries)."""
    if "t" not in _TABLE:
        v = np.arange(1 << 15, dtype=np.int64)
        out = np.empty_like(v)
        _booth_kernel(v, 15, out)
        _TABLE["t"] = out
    return _TABLE["t"]


def booth(values, bits: int = 15) -> np.ndarray:
    """DNNsim Booth-like recoding of non-negative magnitudes of up to ``bits`` bits: the returned mask has a
    one at every term position (its popcount is the number of terms the bit-serial lane processes).
    DNNsim's table covers 15-bit magnitudes (16-bit sign-magnitude, looked up); wider magnitudes use the
    same rule, computed."""
    v = np.ascontiguousarray(values, dtype=np.int64)
    if v.size and 0 <= v.min() and v.max() < (1 << 15):
        return _booth_table()[v]
    out = np.empty(v.shape, np.int64)
    _booth_kernel(v.reshape(-1), max(int(bits), 15), out.reshape(-1))
    return out


def terms(values, use_booth: bool = True, bits: int = 15) -> np.ndarray:
    """Number of terms (Booth-like) or of one bits of each magnitude."""
    v = np.asarray(values, dtype=np.int64)
    return np.bitwise_count(booth(v, bits) if use_booth else v).astype(np.int64)


# ---- Pragmatic two-stage shifter (DNNsim BitPragmatic.cpp process_pe) ------------------------------------
@nb.njit(inline="always")
def _shifter(vals, n, window_shift):
    """Cycles for one activation set held in vals[:n] (uint64 term masks, consumed); 0 if no term at all.
    Branch-free inner loops (they vectorise): lowest offset o over the set, then every value whose lowest
    term lies below o + 2^b retires it."""
    cyc = 0
    zero = U64(0)
    while True:
        orl = zero
        for k in range(n):
            v = vals[k]
            orl |= v & (zero - v)
        if orl == zero:
            return cyc
        hi = (orl & (zero - orl)) << U64(window_shift)
        for k in range(n):
            v = vals[k]
            low = v & (zero - v)
            vals[k] = v ^ (low & (zero - U64(low < hi)))
        cyc += 1


@nb.njit(cache=True, nogil=True)
def _pragmatic_kernel(masks, window_shift, out):
    n, L = masks.shape
    buf = np.empty(L, np.uint64)
    for i in range(n):
        for k in range(L):
            buf[k] = U64(masks[i, k])
        c = _shifter(buf, L, window_shift)
        out[i] = c if c > 0 else 1


def pragmatic_cycles(masks: np.ndarray, bits_first_stage: int) -> np.ndarray:
    """Cycles of DNNsim's two-stage shifter for each activation set (row of ``masks``, term masks):
    each cycle the lowest remaining offset o over the set is found and every value clears its lowest term
    inside [o, o + 2^b - 1]; an all-zero set costs 1. (Worked example: {5, 12, 1}: b=2 -> 2, b=0 -> 3.)"""
    m = np.ascontiguousarray(masks, dtype=np.int64).reshape(-1, masks.shape[-1])
    out = np.empty(m.shape[0], np.int64)
    _pragmatic_kernel(m.view(np.uint64) if m.dtype == np.int64 else m, 1 << int(bits_first_stage), out)
    return out.reshape(masks.shape[:-1])


# ---- column synchronisation (DNNsim process_convolution) ------------------------------------------------
@nb.njit(inline="always")
def _release_columns(end, prev, ncol, registers):
    """Run-ahead registers: no column may start a set before the set `registers` back has finished on every
    column; returns the finish time of the current set (the slowest column)."""
    p0 = prev[0]
    for c in range(ncol):
        if end[c] <= p0:
            end[c] = p0 + 1
    mx = end[0]
    for c in range(1, ncol):
        if end[c] > mx:
            mx = end[c]
    for k in range(registers - 1):
        prev[k] = prev[k + 1]
    prev[registers - 1] = mx
    return mx


@nb.njit(cache=True, nogil=True)
def _sync_kernel(cost, active, registers, out):
    S, C = cost.shape
    end = np.zeros(C, np.int64)
    prev = np.zeros(registers, np.int64)
    busy = np.int64(0)
    for s in range(S):
        for c in range(C):
            if active[s, c]:
                end[c] += cost[s, c]
                busy += cost[s, c]
        _release_columns(end, prev, C, registers)
    mx = np.int64(0)
    for c in range(C):
        if end[c] > mx:
            mx = end[c]
    out[0] = mx
    out[1] = busy


def column_sync(cost: np.ndarray, active: np.ndarray, registers: int) -> tuple[int, int]:
    """Cycles of a stream of steps [S, C] (per-column costs) under DNNsim's column synchronisation, and the
    busy column-cycles. ``registers`` = 0: every step waits for its slowest column (sum of row maxima);
    r > 0: a column may run up to r steps ahead of the slowest (its end time is at least the slowest
    column's end r steps earlier, plus one)."""
    cost = np.asarray(cost, dtype=np.int64)
    if registers <= 0:
        return int(np.where(active, cost, 0).max(axis=1, initial=0).sum()), int(np.where(active, cost, 0).sum())
    out = np.zeros(2, np.int64)
    _sync_kernel(np.ascontiguousarray(cost), np.ascontiguousarray(active), int(registers), out)
    return int(out[0]), int(out[1])


# ---- Bit-Tactical scheduler (DNNsim BitTactical.cpp) -----------------------------------------------------
def search_map(shape: str, H: int, D: int) -> np.ndarray:
    """DNNsim's search map [(dt, dlane)], sorted as the constructor sorts it."""
    out = [(h, 0) for h in range(1, H + 1)]
    if shape == "L":
        out += [(1, -d) for d in range(1, D + 1)]
    elif shape == "T":
        h, d, sign = 1, 1, False
        for _ in range(D):
            out.append((h, d))
            d = -d
            if sign:
                d += 1
                h += 1
                if h > H:
                    h = 1
                sign = False
            else:
                sign = True
    else:
        raise ValueError(shape)
    return np.array(sorted(out), dtype=np.int64).reshape(-1, 2)


@nb.njit(inline="always")
def _tactical_count(nzm, r, t, l, T, L, smap, cnt, fst):
    """Candidates of zero slot (t, lane l) of row r in the search map: count and index of the first."""
    c = 0
    first = -1
    for q in range(smap.shape[0]):
        th = t + smap[q, 0]
        if th >= T:
            continue
        ld = (l + smap[q, 1]) % L
        if (nzm[th, r] >> ld) & 1:
            c += 1
            if first < 0:
                first = q
    cnt[l] = c
    fst[l] = first


@nb.njit(cache=True, nogil=True)
def _schedule_kernel(nz, real, smap, H, src_t, src_l, execd):
    """nz/real [F, T, R, L] bool (weight non-zero / lane holds a real weight). Fills src_t/src_l [F, T, R, L]
    (time and lane of the activation each slot multiplies; src_t = -1: nothing) and execd [F, T].
    Each row's non-zero lanes are a bit mask; the promotion loop is DNNsim's (see tactical_schedule)."""
    F, T, R, L = nz.shape
    nzm = np.zeros((T, R), np.int64)
    ot = np.zeros((T, R, L), np.int16)
    ol = np.zeros((T, R, L), np.int16)
    full = (np.int64(1) << L) - 1
    S = smap.shape[0]
    cnt = np.zeros(L, np.int64)
    fst = np.zeros(L, np.int64)
    for f in range(F):
        for t in range(T):
            for r in range(R):
                m = np.int64(0)
                for l in range(L):
                    if nz[f, t, r, l]:
                        m |= np.int64(1) << l
                    ot[t, r, l] = t if real[f, t, r, l] else -1
                    ol[t, r, l] = l
                nzm[t, r] = m
        skip = 0
        for t in range(T):
            zero_line = True
            for r in range(R):
                if nzm[t, r] != 0:
                    zero_line = False
                    break
            if skip < H and zero_line:
                skip += 1
                execd[f, t] = False
                continue
            skip = 0
            execd[f, t] = True
            if t + 1 >= T:
                continue
            for r in range(R):
                zm = (~nzm[t, r]) & full
                if zm == 0:
                    continue
                # candidate counts and first candidates of the zero lanes, kept up to date incrementally
                # (DNNsim recounts every lane after each promotion; only lanes that saw the taken
                # candidate change, so the result is the same)
                z = zm
                while z:
                    low = z & (-z)
                    z ^= low
                    l = 0
                    while (low >> l) != 1:
                        l += 1
                    _tactical_count(nzm, r, t, l, T, L, smap, cnt, fst)
                while zm:
                    best = 0
                    bl = -1
                    z = zm
                    while z:
                        low = z & (-z)
                        z ^= low
                        l = 0
                        while (low >> l) != 1:
                            l += 1
                        if cnt[l] > best:
                            best = cnt[l]
                            bl = l
                    if best <= 0:
                        break
                    q0 = fst[bl]
                    bt = t + smap[q0, 0]
                    bd = (bl + smap[q0, 1]) % L
                    t0, l0 = ot[t, r, bl], ol[t, r, bl]
                    ot[t, r, bl], ol[t, r, bl] = ot[bt, r, bd], ol[bt, r, bd]
                    ot[bt, r, bd], ol[bt, r, bd] = t0, l0
                    nzm[t, r] |= np.int64(1) << bl
                    nzm[bt, r] &= ~(np.int64(1) << bd)
                    zm &= ~(np.int64(1) << bl)
                    for q in range(S):  # zero lanes that counted the taken weight
                        if t + smap[q, 0] != bt:
                            continue
                        l2 = (bd - smap[q, 1]) % L
                        if (zm >> l2) & 1:
                            _tactical_count(nzm, r, t, l2, T, L, smap, cnt, fst)
        for t in range(T):
            for r in range(R):
                for l in range(L):
                    o = ot[t, r, l]
                    src_t[f, t, r, l] = o if o >= t else -1
                    src_l[f, t, r, l] = ol[t, r, l]


def tactical_schedule(nz: np.ndarray, real: np.ndarray, shape: str = "T", H: int = 2, D: int = 5):
    """Schedule every filter set: ``nz``/``real`` bool [F, T, R, L]. Returns (src_t, src_l, executed) as
    described in ``_schedule_kernel``: a slot reads the activation of step src_t, lane src_l (a zero weight
    left in place still reads its own activation, as DNNsim's ``process_pe`` does; a slot that gave its
    weight away or holds padding reads nothing); ``executed`` [F, T] is False for all-zero steps skipped
    (at most H in a row)."""
    F, T, R, L = nz.shape
    if T >= 32767:
        raise ValueError("too many steps for the scheduler's 16-bit step index")
    src_t = np.empty((F, T, R, L), np.int16)
    src_l = np.empty((F, T, R, L), np.int16)
    execd = np.empty((F, T), np.bool_)
    _schedule_kernel(np.ascontiguousarray(nz), np.ascontiguousarray(real), search_map(shape, H, D), int(H),
                     src_t, src_l, execd)
    return src_t, src_l, execd


@nb.njit(cache=True, nogil=True)
def _patterns_kernel(src_t, src_l, real, rows_real, step_off, boff, L, has_ident, pat_off, pat_start, pat_n):
    """Per (filter set, step): whether some live row has the identity schedule, and the distinct fetch
    patterns (sorted flat offsets) of the other live rows. Returns the number of patterns written."""
    F, T, R, Lw = src_t.shape
    cur = np.empty(Lw, np.int64)
    k = 0
    for f in range(F):
        for t in range(T):
            pat_start[f, t] = k
            has_ident[f, t] = False
            for r in range(rows_real[f]):
                ident = True
                for l in range(Lw):
                    s = src_t[f, t, r, l]
                    if s >= 0:
                        cur[l] = step_off[s] + boff[f] * L + src_l[f, t, r, l]
                        if s != t or src_l[f, t, r, l] != l:
                            ident = False
                    else:
                        cur[l] = -1
                        if real[f, t, r, l]:
                            ident = False
                if ident:
                    has_ident[f, t] = True
                    continue
                cur.sort()
                dup = False
                for q in range(pat_start[f, t], k):
                    same = True
                    for l in range(Lw):
                        if pat_off[q, l] != cur[l]:
                            same = False
                            break
                    if same:
                        dup = True
                        break
                if not dup:
                    for l in range(Lw):
                        pat_off[k, l] = cur[l]
                    k += 1
            pat_n[f, t] = k - pat_start[f, t]
    return k


@nb.njit(inline="always")
def _msb(v):
    c = 0
    while v >> U64(c + 1):
        c += 1
    return c


@nb.njit(inline="always")
def _lsb(v):
    c = 0
    while ((v >> U64(c)) & U64(1)) == 0:
        c += 1
    return c


@nb.njit(cache=True, nogil=True)
def _tactical_kernel(M, gcost, ghi, glo, pat_off, pat_start, pat_n, goff, execd, has_ident, fs_img0, fs_img1,
                     Hp, Wp, Cp, cb, sh, sw, oh, ow, C, L, backend, window_shift, gsize, minor, registers,
                     out_cycles, out_busy):
    """Cycles of every filter set. Rows of a filter set whose schedule at step t is the identity share the
    brick's cost (``gcost``/``ghi``/``glo`` at ``goff``); the other rows at (f, t) are given as their distinct
    fetch patterns ``pat_off`` (flat offsets of the activations their lanes read, -1 = nothing; rows with the
    same pattern read the same activations, so each pattern is costed once)."""
    F = goff.shape[0]
    T = goff.shape[1]
    nwin = oh * ow
    nsets = (nwin + C - 1) // C
    ngroups = (C + gsize - 1) // gsize
    ncol = C if backend == 0 else ngroups
    buf = np.empty(L, np.uint64)
    loc = np.empty(L, np.int64)
    colc = np.zeros(C, np.int64)
    gmax = np.zeros(ngroups, np.int64)
    gmin = np.zeros(ngroups, np.int64)
    bm = np.zeros(C, np.int64)
    bg = np.zeros(C, np.int64)
    act = np.zeros(C, np.bool_)
    end = np.zeros(ncol, np.int64)
    prev = np.zeros(max(registers, 1), np.int64)
    sign_bit = U64(1) << U64(62)
    mag_mask = ~sign_bit
    for f in range(F):
        end[:] = 0
        prev[:] = 0
        busy = np.int64(0)
        for img in range(fs_img0[f], fs_img1[f]):
            for st in range(nsets):
                for c in range(C):
                    w = st * C + c
                    act[c] = w < nwin
                    if act[c]:
                        oy = w // ow
                        ox = w - oy * ow
                        pix = (img * Hp + oy * sh) * Wp + ox * sw
                        bm[c] = pix * Cp
                        bg[c] = pix * cb
                for t in range(T):
                    if not execd[f, t]:
                        continue
                    if backend == 0:
                        for c in range(C):
                            colc[c] = gcost[bg[c] + goff[f, t]] if (act[c] and has_ident[f, t]) else 0
                    else:
                        for g in range(ngroups):
                            gmax[g] = 0
                            gmin[g] = 64
                        if has_ident[f, t]:
                            for c in range(C):
                                if act[c]:
                                    g = c // gsize
                                    h = ghi[bg[c] + goff[f, t]]
                                    lo = glo[bg[c] + goff[f, t]]
                                    if h > gmax[g]:
                                        gmax[g] = h
                                    if lo < gmin[g]:
                                        gmin[g] = lo
                    for k in range(pat_n[f, t]):
                        pr = pat_start[f, t] + k
                        n = 0
                        for l in range(L):
                            o = pat_off[pr, l]
                            if o >= 0:
                                loc[n] = o
                                n += 1
                        for c in range(C):
                            if not act[c]:
                                continue
                            base = bm[c]
                            if backend == 0:
                                for q in range(n):
                                    buf[q] = M[base + loc[q]]
                                v = _shifter(buf, n, window_shift)
                                if v == 0:
                                    v = 1
                                if v > colc[c]:
                                    colc[c] = v
                            else:
                                g = c // gsize
                                for q in range(n):
                                    a = M[base + loc[q]]
                                    mag = a & mag_mask
                                    mb = np.int64(0)
                                    if mag != 0:
                                        mb = _msb(mag)
                                        lb = _lsb(mag)
                                        if lb < gmin[g]:
                                            gmin[g] = lb
                                    if a & sign_bit:
                                        mb += 1
                                    if mb > gmax[g]:
                                        gmax[g] = mb
                    if backend == 0:
                        for c in range(C):
                            if act[c]:
                                if colc[c] == 0:
                                    colc[c] = 1
                                end[c] += colc[c]
                                busy += colc[c]
                    else:
                        for g in range(ngroups):
                            any_act = False
                            for c in range(g * gsize, min(C, (g + 1) * gsize)):
                                if act[c]:
                                    any_act = True
                            if not any_act:
                                continue
                            if minor:
                                cy = gmax[g] - gmin[g] + 1 if gmin[g] <= gmax[g] else 1
                            else:
                                cy = gmax[g] + 1
                            end[g] += cy
                            busy += cy
                    if registers > 0:
                        mx = _release_columns(end, prev, ncol, registers)
                    else:
                        mx = end[0]
                        for c in range(1, ncol):
                            if end[c] > mx:
                                mx = end[c]
                        for c in range(ncol):
                            end[c] = mx
        mx = np.int64(0)
        for c in range(ncol):
            if end[c] > mx:
                mx = end[c]
        out_cycles[f] = mx
        out_busy[f] = busy
