"""Numba kernels for the sequential rules of the DNNsim family (methods.md section 7).

- ``booth``: DNNsim's Booth-like recoding (``core/src/Utils.cpp``, ``generateBoothEncodingEntry``): only runs
  of >= 3 ones become two terms; 7 -> 2 terms, 27 -> 4, 11 -> 3 (not canonical signed digit).
- ``pragmatic_cycles``: DNNsim's two-stage shifter loop (``core/src/BitPragmatic.cpp``, ``process_pe``).
- ``column_sync``: DNNsim's column synchronisation with run-ahead registers (``process_convolution``).
- ``tactical_schedule``: DNNsim's Bit-Tactical greedy promotion (``core/src/BitTactical.cpp``,
  ``original_schedule``/``search``) with its 'T' and 'L' search maps (``core/include/core/BitTactical.h``).
- ``tactical_cycles``: the Pragmatic (TCL-E) or dynamic-precision (TCL-P, ``core/src/ShapeShifter.cpp``)
  back-end on the activations each scheduled weight lane fetches.
Each kernel gives exactly the cited loop's result; where the form differs for speed it says why the result
is the same, and tests compare it with plain transcriptions (tests/test_accel.py):
- the shifter runs branch-free (low < hi read off a sign bit), on the set's non-zero masks only;
- the scheduler keeps each row's candidate lanes as bit masks (one rotation per search entry, the counts in
  bit-sliced planes, lowest set bit by cttz) instead of recounting every lane after every promotion;
- the back-end costs every distinct fetch pattern once per window (``tactical_cycles``), not once per
  filter set that uses it.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros

from ..planes import popcount

U64 = np.uint64


@nb.njit(inline="always")
def _msb(v):
    """Index of the highest set bit of v > 0 (llvm.ctlz)."""
    return np.int64(63) - np.int64(leading_zeros(U64(v)))


@nb.njit(inline="always")
def _lsb(v):
    """Index of the lowest set bit of v (llvm.cttz; 64 for v == 0)."""
    return np.int64(trailing_zeros(U64(v)))


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
    Branch-free inner loops: lowest offset o over the set, then every value whose lowest term lies below
    hi = 2^(o + 2^b) retires it. low < hi is read off bit 63 of low - hi (both at most 2^63; were hi to
    overflow, no value could retire with either test), so LLVM emits no data-dependent branch."""
    cyc = 0
    zero = U64(0)
    s63 = U64(63)
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
            vals[k] = v ^ (low & (zero - ((low - hi) >> s63)))
        cyc += 1


@nb.njit(inline="always")
def _shifter4(a, b, c, d, window_shift):
    """``_shifter`` on at most four masks held in registers (unused ones zero)."""
    cyc = 0
    zero = U64(0)
    s63 = U64(63)
    w = U64(window_shift)
    while True:
        la = a & (zero - a)
        lb = b & (zero - b)
        lc = c & (zero - c)
        ld = d & (zero - d)
        orl = la | lb | lc | ld
        if orl == zero:
            return cyc
        hi = (orl & (zero - orl)) << w
        a ^= la & (zero - ((la - hi) >> s63))
        b ^= lb & (zero - ((lb - hi) >> s63))
        c ^= lc & (zero - ((lc - hi) >> s63))
        d ^= ld & (zero - ((ld - hi) >> s63))
        cyc += 1


@nb.njit(inline="always")
def _packed_cycles(buf, m, window_shift):
    """``_shifter`` on the m non-zero masks buf[:m] (a zero mask holds no term, so it never lowers o nor
    retires anything, and the count depends only on the non-zero masks): a lone value retires one term per
    cycle (its popcount), up to four run in registers."""
    if m <= 1:
        return np.int64(popcount(U64(buf[0]))) if m == 1 else np.int64(0)
    if m <= 4:
        for q in range(m, 4):
            buf[q] = 0
        return np.int64(_shifter4(buf[0], buf[1], buf[2], buf[3], window_shift))
    return np.int64(_shifter(buf, m, window_shift))


@nb.njit(inline="always")
def _set_cycles(M, base, loc, n, buf, window_shift):
    """``_shifter`` on the activation set M[base + loc[:n]], its non-zero masks packed first."""
    m = 0
    for q in range(n):
        x = U64(M[base + loc[q]])
        buf[m] = x
        m += x != 0
    return _packed_cycles(buf, m, window_shift)


@nb.njit(cache=True, nogil=True)
def _pragmatic_kernel(masks, window_shift, out):
    n, L = masks.shape
    flat = masks.reshape(-1)
    lanes = np.arange(L)
    buf = np.empty(max(L, 4), np.uint64)
    for i in range(n):
        c = _set_cycles(flat, i * L, lanes, L, buf, window_shift)
        out[i] = c if c > 0 else 1


def pragmatic_cycles(masks: np.ndarray, bits_first_stage: int) -> np.ndarray:
    """Cycles of DNNsim's two-stage shifter for each activation set (row of ``masks``, term masks):
    each cycle the lowest remaining offset o over the set is found and every value clears its lowest term
    inside [o, o + 2^b - 1]; an all-zero set costs 1. (Worked example: {5, 12, 1}: b=2 -> 2, b=0 -> 3.)"""
    m = np.ascontiguousarray(masks, dtype=np.int64).reshape(-1, masks.shape[-1])
    out = np.empty(m.shape[0], np.int64)
    _pragmatic_kernel(m.view(np.uint64), 1 << int(bits_first_stage), out)
    return out.reshape(masks.shape[:-1])


# ---- column synchronisation (DNNsim process_mmul) -----------------------------------------------------------
@nb.njit(inline="always")
def _run_ahead(end, cost, ncol, ring, st, sid, registers):
    """One step of DNNsim's run-ahead registers (``BitPragmatic::process_mmul``, ``ShapeShifter`` alike): every
    column starts the step at max(its own end, the ready time) and adds its cost; the ready time then becomes
    the slowest column's end ``registers`` steps earlier (a ring of the last ``registers`` step ends).
    ``st[sid]`` holds (ready time, ring index) of the stream."""
    ready = st[sid, 0]
    mx = np.int64(0)
    for c in range(ncol):
        e = max(end[c], ready) + cost[c]
        end[c] = e
        mx = max(mx, e)
    k = st[sid, 1]
    st[sid, 0] = ring[k]
    ring[k] = mx
    st[sid, 1] = (k + 1) % registers


@nb.njit(cache=True, nogil=True)
def _sync_kernel(cost, active, registers, out):
    S, C = cost.shape
    end = np.zeros(C, np.int64)
    ring = np.zeros(registers, np.int64)
    st = np.zeros((1, 2), np.int64)
    row = np.zeros(C, np.int64)
    busy = np.int64(0)
    for s in range(S):
        for c in range(C):
            row[c] = cost[s, c] if active[s, c] else 0
            busy += row[c]
        _run_ahead(end, row, C, ring, st, 0, registers)
    mx = np.int64(0)
    for c in range(C):
        mx = max(mx, end[c])
    out[0] = mx
    out[1] = busy


def column_sync(cost: np.ndarray, active: np.ndarray, registers: int) -> tuple[int, int]:
    """Cycles of a stream of steps [S, C] (per-column costs) under DNNsim's column synchronisation, and the
    busy column-cycles. ``registers`` = 0: every step waits for its slowest column (sum of row maxima);
    r > 0: step s of a column starts once that column is free and the slowest column has finished step
    s - 1 - r (DNNsim's start rule, ``_run_ahead``); the layer ends with the slowest column."""
    cost = np.asarray(cost, dtype=np.int64)
    if registers <= 0:
        return int(np.where(active, cost, 0).max(axis=1, initial=0).sum()), int(np.where(active, cost, 0).sum())
    out = np.zeros(2, np.int64)
    _sync_kernel(np.ascontiguousarray(cost), np.ascontiguousarray(active), int(registers), out)
    return int(out[0]), int(out[1])


@nb.njit(cache=True, nogil=True)
def _issue_kernel(cost, C, out):
    for q in range(cost.shape[0]):
        free = np.zeros(C, np.int64)
        now = np.int64(0)
        for s in range(cost.shape[1]):
            c = s % C
            now = max(now, free[c])
            free[c] = now + cost[q, s]
            now += 1
        mx = np.int64(0)
        for c in range(C):
            mx = max(mx, free[c])
        out[q] = mx


def issue_cycles(cost: np.ndarray, columns: int) -> np.ndarray:
    """DNNsim's inner-product issue (``process_linear``): call s of a stream goes to column s mod C, starts
    once that column is free and at least one cycle after the previous call started; a stream ends with its
    slowest column. ``cost`` [Q, S] -> cycles [Q]."""
    cost = np.ascontiguousarray(cost, dtype=np.int64).reshape(-1, np.shape(cost)[-1])
    out = np.zeros(cost.shape[0], np.int64)
    _issue_kernel(cost, int(columns), out)
    return out


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
def _rotr(x, s, L, full):
    """Rotate the L-bit lane mask x right by s (0 <= s < L): bit l of the result is bit (l + s) mod L of x."""
    if s == 0:
        return x
    return ((x >> s) | (x << (L - s))) & full


@nb.njit(inline="always")
def _candidates(nzm, t, r, T, L, full, sdt, srot, cand, planes, nb):
    """Candidate masks of every search-map entry q for the zero slots of row r at step t: bit l of cand[q]
    says that lane (l + dlane) mod L of step t + dt holds a non-zero weight (DNNsim's search, wrap-around
    inside the L lanes). Their per-lane counts go into nb bit-sliced planes (planes[b] = bit b of each
    lane's count), added ripple-carry. sdt/srot: each entry's step offset and lane rotation (dlane mod L)."""
    for b in range(nb):
        planes[b] = 0
    for q in range(sdt.size):
        th = t + sdt[q]
        x = _rotr(nzm[th, r], srot[q], L, full) if th < T else np.int64(0)
        cand[q] = x
        for b in range(nb):
            c = planes[b] & x
            planes[b] ^= x
            x = c


@nb.njit(inline="always")
def _cand_any(cand, S):
    """Lanes with at least one candidate."""
    x = np.int64(0)
    for q in range(S):
        x |= cand[q]
    return x


@nb.njit(cache=True, nogil=True)
def _schedule_kernel(nz, real, smap, H, src_t, src_l, execd):
    """nz/real [F, T, R, L] bool (weight non-zero / lane holds a real weight). Fills src_t/src_l [F, T, R, L]
    (time and lane of the activation each slot multiplies; src_t = -1: nothing) and execd [F, T].
    Each row's non-zero lanes are a bit mask; the promotion loop is DNNsim's (see tactical_schedule): among
    the zero slots of a row, the lowest lane with the most candidates takes its first candidate in search
    order, until no zero slot has one. The candidates of all lanes are bit-parallel: per search entry a
    rotation of the source row's mask, the counts in bit-sliced planes, the lowest lane with the largest
    count read off the planes (highest plane first) and the trailing-zero count."""
    F, T, R, L = nz.shape
    nzm = np.zeros((T, R), np.int64)
    ot = np.zeros((T, R, L), np.int16)
    ol = np.zeros((T, R, L), np.int16)
    full = (np.int64(1) << L) - 1
    S = smap.shape[0]
    nb = 1
    while (1 << nb) <= S:
        nb += 1
    cand = np.zeros(S, np.int64)
    planes = np.zeros(nb, np.int64)
    sdt = np.empty(S, np.int64)
    srot = np.empty(S, np.int64)
    for q in range(S):
        sdt[q] = smap[q, 0]
        srot[q] = smap[q, 1] % L
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
                _candidates(nzm, t, r, T, L, full, sdt, srot, cand, planes, nb)
                while zm:
                    best = zm  # zero lanes with the largest count: keep those with the highest plane set
                    for b in range(nb - 1, -1, -1):
                        x = best & planes[b]
                        if x != 0:
                            best = x
                    bl = _lsb(best)
                    if ((_cand_any(cand, S) >> bl) & 1) == 0:  # the best count is 0: no slot has a candidate
                        break
                    q0 = 0
                    while ((cand[q0] >> bl) & 1) == 0:
                        q0 += 1
                    bt = t + sdt[q0]
                    bd = bl + srot[q0]
                    if bd >= L:
                        bd -= L
                    t0, l0 = ot[t, r, bl], ol[t, r, bl]
                    ot[t, r, bl], ol[t, r, bl] = ot[bt, r, bd], ol[bt, r, bd]
                    ot[bt, r, bd], ol[bt, r, bd] = t0, l0
                    nzm[t, r] |= np.int64(1) << bl
                    nzm[bt, r] &= ~(np.int64(1) << bd)
                    zm &= ~(np.int64(1) << bl)
                    for q in range(S):  # the taken weight stops being a candidate: one lane's count drops by 1
                        if sdt[q] != bt - t:
                            continue
                        l2 = bd - srot[q]
                        if l2 < 0:
                            l2 += L
                        x = np.int64(1) << l2
                        if cand[q] & x:
                            cand[q] ^= x
                            for b in range(nb):  # bit-sliced decrement of lane l2
                                c = x & ~planes[b]
                                planes[b] ^= x
                                x = c
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
def _patterns_kernel(src_t, src_l, real, rows_real, step_off, boff, L, pad_zero, has_ident, pat_off, pat_start,
                     pat_n):
    """Per (filter set, step): whether some live row has the identity schedule, and the distinct fetch
    patterns (sorted flat offsets) of the other live rows. Returns the number of patterns written.
    At step 0 a slot that reads nothing still holds DNNsim's default buffer entry (value 0, time 0, lane 0:
    ``OutputStationary::fill_weight_buffer`` leaves padding lanes so) and ``process_pe`` fetches lane 0 of
    step 0 for it. ``pad_zero``: padding lanes meet zero activations (channels past c_w), so a row whose real
    lanes keep their weights reads exactly the brick; a depthwise row (one real lane, the other lanes other
    channels) never does."""
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
                        cur[l] = step_off[0] + boff[f] * L if t == 0 else -1
                        if real[f, t, r, l] or not pad_zero:
                            ident = False
                if ident:
                    has_ident[f, t] = True
                    continue
                for a in range(1, Lw):  # insertion sort: lanes that kept their weight are in order already
                    x = cur[a]
                    b = a - 1
                    while b >= 0 and cur[b] > x:
                        cur[b + 1] = cur[b]
                        b -= 1
                    cur[b + 1] = x
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


@nb.njit(cache=True, nogil=True)
def _dedupe_rows(rows, order, row_cls, pid):
    """Distinct rows of ``rows`` within each class ``row_cls``, visiting the rows in ``order`` (open-addressing
    hash of (class, row)). Writes pid[i] (the distinct entry of row i, numbered in order of first visit) and
    returns each entry's flat offsets packed left (locs, -1 entries dropped, zero-padded) and their number
    (nlocs)."""
    P, Lw = rows.shape
    size = 2
    while size < 2 * P:
        size *= 2
    slots = np.full(size, -1, np.int64)
    first = np.empty(P, np.int64)
    nu = 0
    for j in range(P):
        i = order[j]
        h = U64(row_cls[i]) * U64(0x9E3779B97F4A7C15)
        for l in range(Lw):
            h = (h ^ U64(rows[i, l] + 1)) * U64(0xBF58476D1CE4E5B9)
            h ^= h >> U64(29)
        k = np.int64(h & U64(size - 1))
        while True:
            e = slots[k]
            if e < 0:
                slots[k] = nu
                first[nu] = i
                pid[i] = nu
                nu += 1
                break
            r = first[e]
            same = row_cls[r] == row_cls[i]
            if same:
                for l in range(Lw):
                    if rows[r, l] != rows[i, l]:
                        same = False
                        break
            if same:
                pid[i] = e
                break
            k = (k + 1) & (size - 1)
    locs = np.zeros((nu, Lw), np.int64)
    nlocs = np.zeros(nu, np.int64)
    for e in range(nu):
        n = 0
        for l in range(Lw):
            o = rows[first[e], l]
            if o >= 0:
                locs[e, n] = o
                n += 1
        nlocs[e] = n
    return locs, nlocs


@nb.njit(cache=True, nogil=True)
def _pattern_table(M, locs, nlocs, u0, u1, img, w0, w1, pixw, HWp, Cp, backend, window_shift, signed, tab, tlo):
    """Cost of the distinct fetch patterns u in [u0, u1) (flat offsets locs[u, :nlocs[u]]) in windows
    [w0, w1) of image ``img``: tab[u - u0, w - w0] = Pragmatic cycles of the fetched term masks (at least 1;
    backend 0), or the highest bit (+ ``signed``) (tab) and lowest bit (tlo; 64: none) of the fetched values
    (backend 1, ``M`` as ``precision_values`` gives it). Window-major: the patterns of one window read
    neighbouring activations."""
    buf = np.empty(max(locs.shape[1], 4), np.uint64)
    for w in range(w0, w1):
        base = (img * HWp + pixw[w]) * Cp
        r = w - w0
        for u in range(u0, u1):
            n = nlocs[u]
            if backend == 0:
                v = _set_cycles(M, base, locs[u], n, buf, window_shift)
                tab[u - u0, r] = v if v > 0 else 1
            else:
                hi = np.int64(0)
                lo = np.int64(64)
                for q in range(n):
                    a = U64(M[base + locs[u, q]])
                    if a != 0:
                        hi = max(hi, _msb(a))
                        lo = min(lo, _lsb(a))
                tab[u - u0, r] = hi + signed
                tlo[u - u0, r] = lo


@nb.njit(cache=True, nogil=True)
def _tactical_kernel(M, gcost, ghi, glo, locs, nlocs, ustart, pid, pat_start, pat_n, goff, exec_t, n_exec, has_ident,
                     cls_fs, cls_pass, pass_fs, cimg0, cimg1, state_base, img_stride, Hp, Wp, Cp, cb, sh, sw, oh, ow,
                     C, backend, window_shift, gsize, minor, signed, registers, max_entries, out_cycles):
    """Cycles of every column-sync state (``out_cycles``). Rows of a filter set whose schedule at step t is
    the identity share the brick's cost (``gcost``/``ghi``/``glo`` at ``goff``); every other row at (f, t) is
    one of the pat_n[f, t] distinct fetch patterns at pat_start[f, t], ``pid`` naming its entry among the
    distinct patterns of its class (filter sets cls_fs[...] reading images cimg0[k]..cimg1[k]; entries
    ustart[k]..ustart[k+1]). A pattern that recurs in several filter sets (other row blocks) is costed once
    per window: per class, image and chunk of column sets, a table of every entry's cost
    (``_pattern_table``). Class k runs passes cls_pass[k]..cls_pass[k+1], pass p being the tiles
    cls_fs[pass_fs[p]:pass_fs[p + 1]] in lock-step, as DNNsim's ``WindowFirstOutS`` issues them: per column
    set, pass after pass, call i runs the i-th executed step (``exec_t``) of every tile of the pass and each
    column (group) waits for its slowest tile and row. A pass on image ``img`` advances the state
    state_base[f] + (img - cimg0[k]) * img_stride."""
    nwin = oh * ow
    nsets = (nwin + C - 1) // C
    ngroups = (C + gsize - 1) // gsize
    ncol = C if backend == 0 else ngroups
    nst = out_cycles.shape[0]
    colc = np.zeros(C, np.int64)
    step = np.zeros(ncol, np.int64)
    gmax = np.zeros(ngroups, np.int64)
    gmin = np.zeros(ngroups, np.int64)
    bg = np.zeros(C, np.int64)
    act = np.zeros(C, np.bool_)
    end2 = np.zeros((nst, ncol), np.int64)
    ring2 = np.zeros((nst, max(registers, 1)), np.int64)
    st2 = np.zeros((nst, 2), np.int64)
    pixw = np.zeros(max(nwin, 1), np.int64)
    for w in range(nwin):
        oy = w // ow
        pixw[w] = oy * sh * Wp + (w - oy * ow) * sw
    HWp = Hp * Wp
    maxu = 1
    for k in range(ustart.size - 1):
        maxu = max(maxu, ustart[k + 1] - ustart[k])
    chunk = max(1, min(nsets, max_entries // (maxu * C)))  # column sets per table
    tab = np.zeros((maxu, chunk * C), np.int16)
    tlo = np.zeros((maxu if backend == 1 else 1, chunk * C), np.int16)
    for k in range(ustart.size - 1):
        u0, u1 = ustart[k], ustart[k + 1]
        for img in range(cimg0[k], cimg1[k]):
            for s0 in range(0, nsets, chunk):
                s1 = min(nsets, s0 + chunk)
                _pattern_table(M, locs, nlocs, u0, u1, img, s0 * C, min(nwin, s1 * C), pixw, HWp, Cp,
                               backend, window_shift, signed, tab, tlo)
                for st in range(s0, s1):
                    wb = (st - s0) * C
                    for c in range(C):
                        w = st * C + c
                        act[c] = w < nwin
                        if act[c]:
                            bg[c] = (img * HWp + pixw[w]) * cb
                    for p in range(cls_pass[k], cls_pass[k + 1]):
                        q0, q1 = pass_fs[p], pass_fs[p + 1]
                        sid = state_base[cls_fs[q0]] + (img - cimg0[k]) * img_stride
                        calls = 0
                        for q in range(q0, q1):
                            calls = max(calls, n_exec[cls_fs[q]])
                        for i in range(calls):
                            for c in range(ncol):
                                step[c] = 0
                            for q in range(q0, q1):
                                f = cls_fs[q]
                                if i >= n_exec[f]:
                                    continue
                                t = exec_t[f, i]
                                ident = has_ident[f, t]
                                g0 = goff[f, t]
                                p0 = pat_start[f, t]
                                npat = pat_n[f, t]
                                if backend == 0:
                                    for c in range(C):
                                        colc[c] = gcost[bg[c] + g0] if (ident and act[c]) else 0
                                    for q2 in range(npat):  # one table row per pattern: the C columns side by side
                                        e = pid[p0 + q2] - u0
                                        for c in range(C):
                                            colc[c] = max(colc[c], np.int64(tab[e, wb + c]))
                                    for c in range(C):
                                        if act[c]:
                                            step[c] = max(step[c], max(colc[c], 1))
                                else:
                                    for g in range(ngroups):
                                        gmax[g] = 0
                                        gmin[g] = 64
                                    for c in range(C):
                                        if ident and act[c]:
                                            g = c // gsize
                                            gmax[g] = max(gmax[g], ghi[bg[c] + g0])
                                            gmin[g] = min(gmin[g], glo[bg[c] + g0])
                                    for q2 in range(npat):
                                        e = pid[p0 + q2] - u0
                                        for c in range(C):
                                            if act[c]:
                                                g = c // gsize
                                                gmax[g] = max(gmax[g], np.int64(tab[e, wb + c]))
                                                gmin[g] = min(gmin[g], np.int64(tlo[e, wb + c]))
                                    for g in range(ngroups):
                                        if not act[g * gsize]:  # columns fill in order: live iff its first is
                                            continue
                                        if minor:
                                            cy = gmax[g] - gmin[g] + 1 if gmin[g] <= gmax[g] else 1 + signed
                                        else:
                                            cy = gmax[g] + 1
                                        step[g] = max(step[g], cy)
                            end = end2[sid]
                            if registers > 0:
                                _run_ahead(end, step, ncol, ring2[sid], st2, sid, registers)
                            else:
                                mx = np.int64(0)
                                for c in range(ncol):
                                    mx = max(mx, step[c])
                                for c in range(ncol):
                                    end[c] += mx
    for s_ in range(nst):
        mx = np.int64(0)
        for c in range(ncol):
            mx = max(mx, end2[s_, c])
        out_cycles[s_] = mx


@nb.njit(cache=True, nogil=True)
def _tactical_linear_kernel(M, src_t, src_l, exec_t, n_exec, rows_real, pass_fs, C, backend, window_shift, signed,
                            minor, out):
    """Per (token, call) costs of Bit-Tactical on a linear layer the DNNsim way (``process_linear`` with TCL):
    call i of a pass runs the i-th executed step of each of its tiles; a slot fetches value M[token, step,
    lane] of the step its weight came from, but only if that step's brick sits in the column of the call (call
    index mod C; brick k sits in column k mod C), else a zero; at step 0 a padding slot fetches lane 0 of step
    0. E (backend 0): the slowest row's shifter cycles (at least 1); P: highest bit over the rows and lanes
    (+ ``signed``) + 1, or the trimmed span with ``minor``. The call costs its slowest tile."""
    ntok, J, L = M.shape
    R = src_t.shape[2]
    buf = np.empty(max(L, 4), np.uint64)
    for tok in range(ntok):
        call = 0
        for p in range(pass_fs.size - 1):
            calls = 0
            for f in range(pass_fs[p], pass_fs[p + 1]):
                calls = max(calls, n_exec[f])
            for i in range(calls):
                col = call % C
                cost = np.int64(0)
                for f in range(pass_fs[p], pass_fs[p + 1]):
                    if i >= n_exec[f]:
                        continue
                    t = exec_t[f, i]
                    hi = np.int64(0)
                    lo = np.int64(64)
                    for r in range(min(rows_real[f], R)):
                        m = 0
                        for l in range(L):
                            st = src_t[f, t, r, l]
                            ln = src_l[f, t, r, l]
                            if st < 0:
                                if t != 0:
                                    continue
                                st, ln = 0, 0
                            x = U64(M[tok, st, ln]) if st % C == col else U64(0)
                            if backend == 0:
                                buf[m] = x
                                m += x != 0
                            elif x != 0:
                                hi = max(hi, _msb(x))
                                lo = min(lo, _lsb(x))
                        if backend == 0:
                            cost = max(cost, max(_packed_cycles(buf, m, window_shift), np.int64(1)))
                    if backend == 1:
                        hi += signed
                        cost = max(cost, (hi - lo + 1 if lo <= hi else 1 + signed) if minor else hi + 1)
                out[tok, call] = cost
                call += 1


def tactical_linear_costs(M, src_t, src_l, execd, rows_real, pass_fs, C, backend, window_shift, signed, minor):
    """[tokens, calls] costs of ``_tactical_linear_kernel``; ``M`` [tokens, steps, lanes] (term masks for E,
    ``precision_values`` for P), ``pass_fs``: filter-set boundaries of the passes."""
    F, T = execd.shape
    n_exec = execd.sum(axis=1).astype(np.int64)
    exec_t = np.zeros((F, max(T, 1)), np.int64)
    for f in range(F):
        ts = np.flatnonzero(execd[f])
        exec_t[f, :ts.size] = ts
    ncalls = sum(int(n_exec[pass_fs[p]:pass_fs[p + 1]].max(initial=0)) for p in range(len(pass_fs) - 1))
    out = np.zeros((M.shape[0], ncalls), np.int64)
    _tactical_linear_kernel(np.ascontiguousarray(M, dtype=np.int64), src_t, src_l, exec_t, n_exec,
                            np.asarray(rows_real, np.int64), np.asarray(pass_fs, np.int64), int(C), int(backend),
                            int(window_shift), int(signed), bool(minor), out)
    return out


def tactical_cycles(M, gcost, ghi, glo, pat_off, pat_start, pat_n, goff, execd, has_ident, img0, img1, cls, pass_id,
                    state_base, img_stride, nstates, Hp, Wp, Cp, cb, sh, sw, oh, ow, C, backend, window_shift, gsize,
                    minor, signed, registers, max_entries: int = 1 << 18):
    """Cycles [nstates] of every column-sync state on the TCL-E (backend 0: Pragmatic on term masks ``M``) or
    TCL-P (backend 1: dynamic precision on ``M`` = ``precision_values``) back-end.
    ``M``: the activation bricks (image, y, x, brick) of Cp = cb x lanes values; ``gcost``/``ghi``/``glo``: per
    brick costs for rows with the identity schedule; ``pat_off`` [P, lanes]: the distinct fetch patterns of
    each (f, t) from ``_patterns_kernel`` (pat_start, pat_n); ``img0``/``img1``: the images each filter set
    reads; ``cls`` [F]: classes run in increasing order (their filter sets read the same images);
    ``pass_id`` [F]: filter sets of a class with the same id run in lock-step (one pass of the tiles);
    ``state_base``/``img_stride``: which column-sync state a pass advances (``_tactical_kernel``). Patterns are
    de-duplicated within a class and costed once per window (tables of at most ``max_entries``)."""
    F, T = goff.shape
    img0 = np.asarray(img0, np.int64)
    img1 = np.asarray(img1, np.int64)
    ckeys, fcls = np.unique(np.asarray(cls, np.int64), return_inverse=True)
    fcls = fcls.reshape(-1).astype(np.int64)
    order = np.lexsort((np.arange(F), np.asarray(pass_id, np.int64), fcls))
    cls_fs = order.astype(np.int64)
    cls_fs_start = np.searchsorted(fcls[cls_fs], np.arange(ckeys.size + 1)).astype(np.int64)
    key = fcls[cls_fs] * (int(np.max(pass_id, initial=0)) + 1) + np.asarray(pass_id, np.int64)[cls_fs]
    pass_fs = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True]).astype(np.int64)
    cls_pass = np.searchsorted(pass_fs, cls_fs_start).astype(np.int64)
    cimg0 = img0[cls_fs[cls_fs_start[:-1]]]
    cimg1 = img1[cls_fs[cls_fs_start[:-1]]]
    n_exec = execd.sum(axis=1).astype(np.int64)
    exec_t = np.zeros((F, max(T, 1)), np.int64)
    for f in range(F):
        ts = np.flatnonzero(execd[f])
        exec_t[f, :ts.size] = ts
    P = pat_off.shape[0]
    row_cls = np.repeat(fcls, pat_n.sum(axis=1))
    perm = np.argsort(row_cls, kind="stable")  # rows class by class: entries of one class are contiguous
    pid = np.empty(P, np.int64)
    locs, nlocs = _dedupe_rows(pat_off, perm, row_cls, pid)
    ustart = np.zeros(ckeys.size + 1, np.int64)
    np.maximum.at(ustart, row_cls + 1, pid + 1)  # entries of class k end at the largest entry it visits
    ustart = np.maximum.accumulate(ustart)
    out_c = np.zeros(int(nstates), np.int64)
    _tactical_kernel(M, gcost, ghi, glo, locs, nlocs, ustart, pid, pat_start, pat_n, goff, exec_t, n_exec, has_ident,
                     cls_fs, cls_pass, pass_fs, cimg0, cimg1, np.asarray(state_base, np.int64), int(img_stride), Hp,
                     Wp, Cp, cb, sh, sw, oh, ow, C, backend, window_shift, gsize, minor, int(signed), registers,
                     int(max_entries), out_c)
    return out_c
