"""The Bitlet PE (MICRO'21), bit for bit and cycle for cycle as the published RTL behaves.

Source: the public Verilog of GitHub ``Zhu-Zixuan/Bitlet-PE`` (``rtl/*.v``), as measured by simulation and
written down in ``docs/bitlet_rtl.md`` (sections 1-3 and 8). Confidence: **exact (RTL)**: the rules below
reproduce out_word, the 64-bit accumulator, N, all 24 channel cycle counts and the latency of 775/775
simulated groups (plus 44 groups with ``N_calculate`` < 63 for the check-window rule).

One call computes one group of up to 64 (weight, activation) pairs, padded to 64 with zeros, in the PE's
operand formats (bitlet_rtl.md section 1):

- ``mode="fp32"``: weights and activations are IEEE-754 binary32 words. Weights are unpacked the testbench
  (IEEE) way: sign, exponent field (1 for a subnormal), 24-bit significand {exponent != 0, fraction}.
- ``mode="fixed"``: weights are sign-magnitude ``{sign at bit 31, magnitude in bits 23..0}``; activations
  are 25-bit two's complement ``{sign at bit 31, low 24 bits in 23..0}`` (value = bits[23:0] - 2^24 * bit31).
  Bits 30..24 are ignored, as the RTL ignores them. The output word uses the activation layout.

Quirks of the published RTL that are reproduced by default (``strict_ieee=False``):

1. a subnormal fp32 *activation* is read with a hidden 1 (1.f x 2^-126 instead of 0.f x 2^-126);
2. results in the binade [2^-127, 2^-126) lose their hidden bit without a shift (exponent field 0, the
   23 fraction bits of the normalised value);
3. fixed-mode saturation tests the XOR (parity) of accumulator bits 63..48 instead of "any differs from
   the sign", so sums with |Acc| >= 2^48 and even parity there wrap silently;
4. in fixed mode ``-2^24`` times a negative weight wraps to 25 bits and keeps the wrong sign.

``strict_ieee=True`` fixes these four (hidden bit 0 for subnormal activations, correctly truncated
subnormal for the [2^-127, 2^-126) binade, true saturation, no 25-bit wrap). Both settings keep the
design's other rules, which are not numeric bugs: E.max is the maximum of We + Ae over *all* 64 pairs,
zero products and padding included; alignment and packing truncate; the accumulator is exact.

The model assumes what a working PE needs (bitlet_rtl.md sections 1, 4): ``N_calculate`` = 63, a flush
before every group, and a reset after any fp32 group before a fixed group (no stale exponents).
``prune = 0`` never produces a result in the RTL and is refused here.

Timing (bitlet_rtl.md 2.1, 4): N = max over enabled channels of the check-window cycles of the aligned,
pruned weight plane; latency N + 24 (fp32) / N + 21 (fixed) cycles from the first input beat; minimum
start-to-start period when groups are streamed N + 19 / N + 16.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from ..errors import UserError
from ..planes import pack_raw

N_PAIRS = 64  # N_total: pairs per group
N_CHANNELS = 24  # significance channels (24-bit weight magnitudes)
WINDOW = 8  # N_check
N_CALC = 63  # N_calculate (unconnected at the PE top; the design only works with 63)
LATENCY = {"fp32": 24, "fixed": 21}  # result cycle = N + this
PERIOD = {"fp32": 19, "fixed": 16}  # minimum start-to-start distance of streamed groups = N + this
MODES = ("fp32", "fixed")
ALL_CHANNELS = (1 << N_CHANNELS) - 1
U64 = np.uint64


# ---- check-window scheduler (bitlet_rtl.md 2.2 / 2.3) ------------------------------------------------
@nb.njit(cache=True)
def _ctz(x):
    """Trailing zeros of a non-zero uint64."""
    low = x & (~x + U64(1))
    y = low - U64(1)
    y = y - ((y >> U64(1)) & U64(0x5555555555555555))
    y = (y & U64(0x3333333333333333)) + ((y >> U64(2)) & U64(0x3333333333333333))
    y = (y + (y >> U64(4))) & U64(0x0F0F0F0F0F0F0F0F)
    return np.int64((y * U64(0x0101010101010101)) >> U64(56))


@nb.njit(cache=True)
def _cw_one(word, window, wmask, n_calc):
    """Cycles the check-window engine spends on one 64-bit plane (pointer p starts at 0)."""
    p = np.int64(0)
    c = np.int64(0)
    while True:
        rest = (word >> U64(p)) if p < 64 else U64(0)
        if rest == 0:  # only empty windows left: one cycle per window until p_next > n_calc
            return c + (n_calc - p) // window + 1 if p <= n_calc else c + 1
        win = rest & wmask
        c += 1
        if win == 0:
            p += window
        else:
            second = win & (win - U64(1))
            p = p + _ctz(second) if second != 0 else p + window
        if p > n_calc:
            return c


@nb.njit(cache=True, nogil=True)
def _cw_kernel(flat, window, n_calc, out):
    wmask = U64(0xFFFFFFFFFFFFFFFF) if window >= 64 else (U64(1) << U64(window)) - U64(1)
    for j in range(flat.size):
        out[j] = _cw_one(flat[j], window, wmask, n_calc)


def checkwindow_cycles(words, window: int = WINDOW, n_calc: int = N_CALC) -> np.ndarray:
    """Check-window cycles of every 64-bit plane in ``words`` (any shape; int64 array of the same shape).

    Rule (bitlet_rtl.md 2.2, exact): pointer p = 0; each cycle look at bits p..p+window-1 (bits >= 64 read
    as 0); with >= 2 ones emit the lowest and move p to the second one; with one or none move p by the
    window; stop after the cycle whose next pointer exceeds ``n_calc``. So cycles = popcount + empty-window
    steps, 8 <= cycles <= 64 for the RTL's window 8 and n_calc 63. A disabled plane (prune bit 0) costs 0:
    the caller masks it out.
    """
    if not 1 <= int(window) <= 64:
        raise UserError(f"check window must be 1..64, got {window}")
    if not 0 <= int(n_calc) <= 63:
        raise UserError(f"N_calculate must be 0..63, got {n_calc}")
    w = np.ascontiguousarray(words, dtype=np.uint64)
    out = np.empty(w.shape, dtype=np.int64)
    _cw_kernel(w.reshape(-1), int(window), int(n_calc), out.reshape(-1))
    return out


# ---- operand unpacking and result packing (bitlet_rtl.md 3) --------------------------------------------
@nb.njit(cache=True)
def _unpack_w_fp(w):
    """IEEE (testbench) weight unpack: (sign, exponent (1 for subnormal, 0 for zero), 24-bit magnitude)."""
    s = np.int64(w >> np.uint32(31))
    e = np.int64((w >> np.uint32(23)) & np.uint32(0xFF))
    f = np.int64(w & np.uint32(0x7FFFFF))
    if e == 0:
        return s, (1 if f != 0 else 0), f
    return s, e, f | 0x800000


@nb.njit(cache=True)
def _unpack_a_fp(a, strict):
    """The PE's own activation unpack: exponent forced to 1 for a subnormal, hidden bit = (exponent != 0),
    so a subnormal gets a hidden 1 (quirk 1) unless ``strict``."""
    s = np.int64(a >> np.uint32(31))
    e = np.int64((a >> np.uint32(23)) & np.uint32(0xFF))
    f = np.int64(a & np.uint32(0x7FFFFF))
    if e == 0:
        if f == 0:
            return s, 0, 0
        return s, 1, (f if strict else f | 0x800000)
    return s, e, f | 0x800000


@nb.njit(cache=True)
def _act_fixed(a, wsign, strict):
    """25-bit two's-complement activation, negated for a negative weight, wrapped to 25 bits (quirk 4)."""
    v = np.int64(a & np.uint32(0xFFFFFF)) - (np.int64(a >> np.uint32(31)) << 24)
    if wsign:
        v = -v
        if v == (1 << 24) and not strict:
            v = -(1 << 24)
    return v


@nb.njit(cache=True)
def _msb(m):
    """Index of the highest set bit of a positive int64."""
    c = 0
    while m >> (c + 1):
        c += 1
    return c


@nb.njit(cache=True)
def _pack_fp(acc, emax, strict):
    """Bitlet_PackFloat: value = Acc x 2^(Emax - 300), truncated to binary32 (quirk 2 unless ``strict``)."""
    if acc == 0:
        return np.uint32(0)
    sign = np.uint32(0x80000000) if acc < 0 else np.uint32(0)
    m = -acc if acc < 0 else acc
    c = _msb(m)
    e = emax - 173 + c
    norm = (m >> (c - 23)) if c >= 23 else (m << (23 - c))  # 24 bits, hidden bit at 23
    mant = norm & 0x7FFFFF
    if e > 254:
        return sign | np.uint32(0x7F800000)
    if e >= 1:
        return sign | np.uint32((e << 23) | mant)
    if e == 0 and not strict:
        return sign | np.uint32(mant)
    sh = 1 - e
    return sign | np.uint32(norm >> sh if sh < 24 else 0)


@nb.njit(cache=True)
def _pack_fixed(acc, quant, strict):
    """Bitlet_PackFixed: Acc[quant+23:quant] with the sign at bit 31; saturation by parity (quirk 3)."""
    neg = acc < 0
    low = np.uint32((acc >> quant) & 0xFFFFFF)
    if strict:
        top = acc >> (quant + 24)
        over = top != (-1 if neg else 0)
    else:
        hi = (acc >> 48) & 0xFFFF
        par = 0
        while hi:
            par ^= hi & 1
            hi >>= 1
        over = par != 0
        if quant + 24 <= 47:
            nb_ = 48 - (quant + 24)
            mid = (acc >> (quant + 24)) & ((1 << nb_) - 1)
            over = over or mid != (((1 << nb_) - 1) if neg else 0)
    if over:
        return np.uint32(0x80000000) if neg else np.uint32(0x00FFFFFF)
    return (np.uint32(0x80000000) if neg else np.uint32(0)) | low


@nb.njit(cache=True, nogil=True)
def _pe_kernel(W, A, fixed, prune, quant, strict, wal_out, acc_out, emax_out, word_out):
    B, n = W.shape
    e = np.zeros(n, np.int64)
    a = np.zeros(n, np.int64)
    wm = np.zeros(n, np.int64)
    for b in range(B):
        emax = np.int64(0)
        for i in range(n):
            if fixed:
                ws = np.int64(W[b, i] >> np.uint32(31))
                wm[i] = np.int64(W[b, i] & np.uint32(0xFFFFFF))
                a[i] = _act_fixed(A[b, i], ws, strict)
                e[i] = 0
            else:
                ws, we, m = _unpack_w_fp(W[b, i])
                as_, ae, am = _unpack_a_fp(A[b, i], strict)
                wm[i] = m
                a[i] = -am if (ws ^ as_) else am
                e[i] = we + ae
                if e[i] > emax:
                    emax = e[i]
        acc = np.int64(0)
        for i in range(n):
            d = emax - e[i]
            wal = (wm[i] >> d) if d < 24 else 0
            wal &= prune
            wal_out[b, i] = np.uint32(wal)
            acc += a[i] * wal
        acc_out[b] = acc
        emax_out[b] = emax
        word_out[b] = _pack_fixed(acc, quant, strict) if fixed else _pack_fp(acc, emax, strict)


# ---- public API ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PEResult:
    """One group through the PE. ``acc`` is the 64-bit two's-complement accumulator as a signed int."""

    out_word: int  # the 32-bit ``res`` word
    acc: int
    channel_cycles: np.ndarray  # int64 [24]; 0 for a disabled channel
    n: int  # compute cycles N = max(channel_cycles)
    latency: int  # cycles from the first input beat to res_vld: N + 24 (fp32) / N + 21 (fixed)
    period: int  # minimum start-to-start distance when streaming groups: N + 19 / N + 16
    emax: int = 0  # E.max (fp32: max over all pairs of We + Ae, biased twice); 0 in fixed mode

    @property
    def value(self) -> float:
        """The output as a number: the binary32 value (fp32), or the 25-bit two's-complement integer (fixed)."""
        if self.latency - self.n == LATENCY["fp32"]:
            return float(np.uint32(self.out_word).view(np.float32))
        return (self.out_word & 0xFFFFFF) - ((self.out_word >> 31) << 24)


@dataclass(frozen=True)
class PEBatch:
    """Many groups through the PE (one row per group); fields as in PEResult, as arrays."""

    out_word: np.ndarray  # uint32 [B]
    acc: np.ndarray  # int64 [B]
    channel_cycles: np.ndarray  # int64 [B, 24]
    n: np.ndarray  # int64 [B]
    latency: np.ndarray
    period: np.ndarray
    emax: np.ndarray  # int64 [B]
    aligned: np.ndarray  # uint32 [B, 64]: aligned, pruned weight magnitudes (what the engines see)

    def __getitem__(self, i) -> PEResult:
        return PEResult(int(self.out_word[i]), int(self.acc[i]), self.channel_cycles[i].copy(), int(self.n[i]),
                        int(self.latency[i]), int(self.period[i]), int(self.emax[i]))

    def __len__(self) -> int:
        return len(self.out_word)


def _check(mode: str, prune: int, quant: int) -> None:
    if mode not in MODES:
        raise UserError(f"unknown Bitlet mode {mode!r} (fp32 or fixed)")
    if not 0 <= int(prune) <= ALL_CHANNELS:
        raise UserError(f"prune must be a 24-bit mask 0..0x{ALL_CHANNELS:X}, got {prune:#x}")
    if int(prune) == 0:
        raise UserError("prune = 0 enables no channel: the RTL never produces a result")
    if not 0 <= int(quant) <= 24:
        raise UserError(f"quant must be 0..24 (25..31 index past the RTL's vector), got {quant}")


def _words(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind == "f":
        raise UserError(f"{name}: pass raw uint32 words (e.g. np.float32(x).view(np.uint32)), not floats")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 0xFFFFFFFF):
        raise UserError(f"{name}: words must be 32-bit unsigned")
    return a.astype(np.uint32)


def plane_words(aligned: np.ndarray) -> np.ndarray:
    """uint32 [B, <=64] aligned magnitudes -> uint64 [B, 24] planes (bit i of plane s = bit s of weight i),
    through the planes core (24 magnitude bits = the int25 sign-magnitude layout)."""
    a = np.asarray(aligned, dtype=np.uint32)
    return pack_raw(a.reshape(-1, a.shape[-1]), "int25", group=N_PAIRS, axis=1).words


def pe_dot_batch(weights, acts, *, mode: str = "fp32", prune: int = ALL_CHANNELS, quant: int = 0,
                 strict_ieee: bool = False, window: int = WINDOW, n_calc: int = N_CALC) -> PEBatch:
    """``pe_dot`` over many groups at once: ``weights`` and ``acts`` are uint32 [B, n <= 64] (zero-padded
    to 64). ``window`` and ``n_calc`` change only the cycle counts (the RTL has 8 and 63)."""
    _check(mode, prune, quant)
    W, A = _words(weights, "weights"), _words(acts, "acts")
    if W.ndim == 1 and A.ndim == 1:
        W, A = W[None], A[None]
    if W.shape != A.shape or W.ndim != 2:
        raise UserError(f"weights and acts must have the same shape [groups, <=64], got {W.shape} and {A.shape}")
    if W.shape[1] > N_PAIRS:
        raise UserError(f"a Bitlet group holds at most {N_PAIRS} pairs, got {W.shape[1]}")
    B = W.shape[0]
    pad = ((0, 0), (0, N_PAIRS - W.shape[1]))
    W = np.ascontiguousarray(np.pad(W, pad))
    A = np.ascontiguousarray(np.pad(A, pad))
    wal = np.zeros((B, N_PAIRS), np.uint32)
    acc = np.zeros(B, np.int64)
    emax = np.zeros(B, np.int64)
    word = np.zeros(B, np.uint32)
    _pe_kernel(W, A, mode == "fixed", np.int64(prune), np.int64(quant), bool(strict_ieee), wal, acc, emax, word)
    enabled = ((int(prune) >> np.arange(N_CHANNELS)) & 1).astype(bool)
    cyc = np.where(enabled, checkwindow_cycles(plane_words(wal), window, n_calc), 0)
    n = cyc.max(axis=1)
    return PEBatch(word, acc, cyc, n, n + LATENCY[mode], n + PERIOD[mode], emax, wal)


def pe_dot(weights, acts, *, mode: str = "fp32", prune: int = ALL_CHANNELS, quant: int = 0,
           strict_ieee: bool = False) -> PEResult:
    """One 64-pair group through the Bitlet PE (see the module docstring for formats and quirks).

    ``weights``, ``acts``: up to 64 uint32 words each (same length; padded with zeros to 64).
    ``prune``: 24-bit mask of enabled significance channels (bit s = plane 2^s of the aligned magnitudes).
    ``quant``: fixed-mode output shift 0..24 (output = Acc[quant+23:quant], floor, saturating).
    Returns the output word, the exact 64-bit accumulator, the 24 channel cycle counts, N, the latency
    (N + 24 fp32 / N + 21 fixed) and the streaming period (N + 19 / N + 16).
    """
    W, A = np.atleast_1d(_words(weights, "weights")), np.atleast_1d(_words(acts, "acts"))
    if W.ndim != 1 or A.ndim != 1:
        raise UserError("pe_dot takes one group: 1-D weights and acts (use pe_dot_batch for many)")
    return pe_dot_batch(W[None], A[None], mode=mode, prune=prune, quant=quant, strict_ieee=strict_ieee)[0]


def f32_words(x) -> np.ndarray:
    """float values -> their binary32 words (a convenience for building fp32 operands)."""
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32)).view(np.uint32)
