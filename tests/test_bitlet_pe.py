"""The Bitlet PE model against an independent per-bit reference of bitlet_rtl.md sections 2-3.

The reference below is written from the note alone, with Python ints, lists of bits and strings (no
shared code with bitsieve.accel.bitlet_pe), so a misreading in the model shows up as a disagreement.
"""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st

from bitsieve.accel.bitlet_pe import checkwindow_cycles, f32_words, pe_dot, pe_dot_batch
from bitsieve.errors import UserError

M64 = (1 << 64) - 1


# ---- independent reference ----------------------------------------------------------------------------
def ref_cycles(plane: int, window: int = 8, n_calc: int = 63) -> int:
    bits = [(plane >> i) & 1 for i in range(64)]
    p, cycles = 0, 0
    while True:
        win = [bits[j] if j < 64 else 0 for j in range(p, p + window)]
        ones = [k for k, b in enumerate(win) if b]
        cycles += 1
        p_next = p + ones[1] if len(ones) >= 2 else p + window
        if p_next > n_calc:
            return cycles
        p = p_next


def ref_pe(weights, acts, mode="fp32", prune=0xFFFFFF, quant=0, strict=False, window=8, n_calc=63):
    W = [int(w) for w in weights] + [0] * (64 - len(weights))
    A = [int(a) for a in acts] + [0] * (64 - len(acts))
    wm, av, E = [], [], []
    for w, a in zip(W, A):
        ws = w >> 31
        if mode == "fp32":
            we, wf = (w >> 23) & 255, w & 0x7FFFFF
            m = wf + (1 << 23 if we else 0)
            if we == 0 and wf:
                we = 1
            as_, ae, af = a >> 31, (a >> 23) & 255, a & 0x7FFFFF
            field = ae
            if ae == 0 and af:
                ae = 1
            hidden = (field != 0) if strict else (ae != 0)
            am = af + (1 << 23 if hidden else 0)
            wm.append(m)
            av.append(-am if ws != as_ else am)
            E.append(we + ae)
        else:
            wm.append(w & 0xFFFFFF)
            v = (a & 0xFFFFFF) - (1 << 24) * (a >> 31)
            x = -v if ws else v
            if not strict:  # keep 25 bits, two's complement
                x = (x + (1 << 24)) % (1 << 25) - (1 << 24)
            av.append(x)
            E.append(0)
    emax = max(E)
    wal = []
    for m, e in zip(wm, E):
        shifted = m
        for _ in range(emax - e):
            shifted //= 2
        wal.append(sum(((shifted >> s) & 1) << s for s in range(24) if (prune >> s) & 1))
    acc = sum(a * w for a, w in zip(av, wal))
    planes = [sum(((wal[i] >> s) & 1) << i for i in range(64)) for s in range(24)]
    cyc = [ref_cycles(planes[s], window, n_calc) if (prune >> s) & 1 else 0 for s in range(24)]
    u = acc & M64
    sign = u >> 63
    if mode == "fp32":
        if acc == 0:
            out = 0
        else:
            digits = bin(abs(acc))[2:]
            c = len(digits) - 1
            e = emax - 173 + c
            frac23 = (digits[1:] + "0" * 23)[:23]
            norm = int("1" + frac23, 2)
            if e > 254:
                out = 255 << 23
            elif e >= 1:
                out = (e << 23) | int(frac23, 2)
            elif e == 0 and not strict:
                out = int(frac23, 2)
            else:
                out = norm >> (1 - e) if 1 - e < 24 else 0
            out |= sign << 31
    else:
        ubits = bin(u)[2:].zfill(64)[::-1]  # ubits[k] = bit k
        if strict:
            over = any(int(ubits[k]) != sign for k in range(quant + 24, 64))
        else:
            over = ubits[48:64].count("1") % 2 == 1 or any(int(ubits[k]) != sign for k in range(quant + 24, 48))
        if over:
            out = 0x80000000 if sign else 0x00FFFFFF
        else:
            out = (sign << 31) | ((acc >> quant) & 0xFFFFFF)
    n = max(cyc)
    lat = n + (24 if mode == "fp32" else 21)
    return dict(out=out, acc=acc, cyc=cyc, n=n, latency=lat, period=lat - 5, emax=emax if mode == "fp32" else 0)


def agree(weights, acts, **kw):
    r = pe_dot(weights, acts, **kw)
    ref = ref_pe(weights, acts, mode=kw.get("mode", "fp32"), prune=kw.get("prune", 0xFFFFFF),
                 quant=kw.get("quant", 0), strict=kw.get("strict_ieee", False))
    assert (r.out_word, r.acc, list(r.channel_cycles), r.n, r.latency, r.period, r.emax) == (
        ref["out"], ref["acc"], ref["cyc"], ref["n"], ref["latency"], ref["period"], ref["emax"])
    return r


def fx_w(values):
    """signed ints -> fixed weight words (sign at 31, magnitude in 23..0)."""
    return np.array([(abs(v) & 0xFFFFFF) | ((v < 0) << 31) for v in values], dtype=np.uint32)


def fx_a(values):
    """signed ints in -2^24..2^24-1 -> 25-bit two's complement activation words."""
    return np.array([(v & 0xFFFFFF) | ((v < 0) << 31) for v in values], dtype=np.uint32)


# ---- check-window rule ---------------------------------------------------------------------------------
def test_checkwindow_bounds_and_examples():
    assert checkwindow_cycles(np.uint64(0)) == 8
    assert checkwindow_cycles(np.uint64(M64)) == 64
    # methods.md 2.3 worked example: 8 weights (N_calculate = 7), planes {0,2,3}, {0,5,6}, {2,5,7}
    planes = np.array([0b1101, 0b1100001, 0b10100100], dtype=np.uint64)
    assert list(checkwindow_cycles(planes, n_calc=7)) == [3, 3, 3]
    # at N_calculate = 0 every engine runs exactly one cycle
    assert list(checkwindow_cycles(planes, n_calc=0)) == [1, 1, 1]
    # shape is kept
    assert checkwindow_cycles(np.zeros((3, 4, 5), np.uint64)).shape == (3, 4, 5)


@given(st.integers(0, M64), st.integers(1, 16), st.integers(0, 63))
def test_checkwindow_matches_reference(plane, window, n_calc):
    assert checkwindow_cycles(np.array([plane], np.uint64), window, n_calc)[0] == ref_cycles(plane, window, n_calc)


@given(st.integers(0, M64))
def test_checkwindow_is_popcount_plus_empty_windows(plane):
    c = int(checkwindow_cycles(np.array([plane], np.uint64))[0])
    assert 8 <= c <= 64 and c >= bin(plane).count("1")


def test_checkwindow_rejects_bad_parameters():
    with pytest.raises(UserError):
        checkwindow_cycles(np.zeros(1, np.uint64), window=0)
    with pytest.raises(UserError):
        checkwindow_cycles(np.zeros(1, np.uint64), n_calc=64)


# ---- worked examples -------------------------------------------------------------------------------------
def test_fp32_worked_example():
    r = agree(f32_words([1.5, 0.375]), f32_words([2.0, 1.0]))
    assert r.value == 3.375 and r.emax == 255
    assert r.acc == 0x800000 * 0xC00000 + 0x800000 * 0x180000
    assert r.latency == r.n + 24 and r.period == r.n + 19 and r.n == 8


def test_fixed_worked_example_three_cycles_per_plane():
    w = [3, 0, -5, 1, 0, 6, -2, 4]
    a = [7, -3, 2, 11, 5, -1, 9, 4]
    b = pe_dot_batch(fx_w(w)[None], fx_a(a)[None], mode="fixed", prune=0b111, n_calc=7)
    assert list(b.channel_cycles[0][:3]) == [3, 3, 3] and int(b.n[0]) == 3
    assert b[0].value == sum(x * y for x, y in zip(w, a)) == b[0].acc
    assert b[0].latency == 3 + 21 and b[0].period == 3 + 16
    r = agree(fx_w(w), fx_a(a), mode="fixed")  # as the RTL runs it (N_calculate = 63)
    assert r.value == sum(x * y for x, y in zip(w, a))


# ---- every rule and quirk of bitlet_rtl.md 3 --------------------------------------------------------------
def test_subnormal_activation_gets_hidden_one():
    w, a = f32_words([1.0]), np.array([0x00000001], np.uint32)  # smallest subnormal activation
    rtl = agree(w, a)
    assert rtl.out_word == 0x00800001  # read as (1 + 2^-23) * 2^-126
    strict = agree(w, a, strict_ieee=True)
    assert strict.out_word == 0x00000001  # 1.0 * 2^-149, correct


def test_exponent_zero_binade_loses_hidden_bit():
    w, a = f32_words([0.5]), np.array([0x00800000], np.uint32)  # 0.5 * 2^-126 = 2^-127
    assert agree(w, a).out_word == 0  # +0: the hidden 1 is dropped without a shift
    assert agree(w, a, strict_ieee=True).out_word == 0x00400000  # 2^-127 as a subnormal
    w2 = f32_words([0.75])  # 1.5 * 2^-127: RTL keeps the fraction .1 but as 0.5 * 2^-126
    assert agree(w2, a).out_word == 0x00400000
    assert agree(w2, a, strict_ieee=True).out_word == 0x00600000


def test_underflow_truncates_and_negative_gives_minus_zero():
    w, a = f32_words([2.0 ** -100]), f32_words([-(2.0 ** -60)])
    assert agree(w, a).out_word == 0x80000000  # -2^-160 underflows to -0
    w, a = f32_words([1.75 * 2.0 ** -70]), f32_words([2.0 ** -70])  # 1.75 * 2^-140: subnormal, truncated
    r = agree(w, a)
    assert r.out_word == np.float32(1.75 * 2.0 ** -140).view(np.uint32)


def test_overflow_gives_infinity():
    assert agree(f32_words([2.0 ** 127]), f32_words([2.0 ** 127])).out_word == 0x7F800000
    assert agree(f32_words([-(2.0 ** 127)]), f32_words([2.0 ** 10])).out_word == 0xFF800000


def test_packing_truncates_not_rounds():
    x = np.float32(1 + 2.0 ** -23)
    r = agree(f32_words([x]), f32_words([x]))  # exact 1 + 2^-22 + 2^-46
    assert r.value == 1 + 2.0 ** -22
    y = np.float32(1 + 2.0 ** -12 + 2.0 ** -23)  # y*y = 1 + 2^-11 + 2^-22 + (2^-24 + 2^-34 + 2^-46)
    r = agree(f32_words([y]), f32_words([y]))
    assert r.value == 1 + 2.0 ** -11 + 2.0 ** -22  # truncated
    assert np.float32(np.float64(y) * np.float64(y)) == 1 + 2.0 ** -11 + 2.0 ** -22 + 2.0 ** -23  # would round up


def test_alignment_truncates_weight_bits_and_prune_clears_planes():
    w = f32_words([1.0, 1.0 + 2.0 ** -23])
    a = f32_words([1.0, 0.5])  # E = 254, 253: the second weight is shifted by 1 and loses its last bit
    r = agree(w, a)
    assert r.acc == 0x800000 * 0x800000 + 0x800000 * (0x800001 >> 1)
    assert r.acc != 0x800000 * 0x800000 + 0x800000 * 0x800001 // 2 * 2 + 0x800000  # the exact sum differs
    r = agree(w, a, prune=0xFF0000)  # top 8 planes only
    assert r.acc == 0x800000 * 0x800000 + 0x800000 * 0x400000
    assert list(r.channel_cycles[:16]) == [0] * 16 and all(c >= 8 for c in r.channel_cycles[16:])


def test_emax_includes_zero_products():
    w = f32_words([2.0 ** 127, 2.0 ** -20])
    a = f32_words([0.0, 2.0 ** -20])  # the zero pair has E = 254, the real product E = 214
    for strict in (False, True):
        r = agree(w, a, strict_ieee=strict)
        assert r.emax == 254 and r.out_word == 0  # the exact value 2^-40 is lost


def test_fixed_parity_saturation():
    w, a = fx_w([0xFFFFFF] * 64), fx_a([0xFFFFFF] * 64)  # Acc = 0x003fffff80000040
    r = agree(w, a, mode="fixed", quant=24)
    assert r.acc == 0x003FFFFF80000040 and r.out_word == 0x00FFFF80  # even parity: wraps silently
    assert agree(w, a, mode="fixed", quant=24, strict_ieee=True).out_word == 0x00FFFFFF
    assert agree(w, a, mode="fixed", quant=0).out_word == 0x00FFFFFF  # caught by the bits below 48
    r = agree(w[:32], a[:32], mode="fixed", quant=24)  # bits 63..48 = 0x1f: odd parity saturates
    assert r.out_word == 0x00FFFFFF
    n = agree(fx_w([-0xFFFFFF] * 32), a[:32], mode="fixed", quant=24)
    assert n.out_word == 0x80000000  # negative saturation = -2^24


def test_fixed_minus_2_24_wrap():
    w, a = fx_w([-1]), fx_a([-(1 << 24)])
    r = agree(w, a, mode="fixed", quant=1)
    assert r.acc == -(1 << 24) and r.value == -(1 << 23)  # wrong sign kept
    s = agree(w, a, mode="fixed", quant=1, strict_ieee=True)
    assert s.acc == 1 << 24 and s.value == 1 << 23


def test_fixed_output_floor_shift_and_ignored_bits():
    r = agree(fx_w([1]), fx_a([-1]), mode="fixed", quant=1)
    assert r.out_word == 0x80FFFFFF and r.value == -1  # arithmetic shift: floor(-1/2) = -1
    junk = np.array([0x7F000003], np.uint32)  # bits 30..24 are ignored
    assert agree(junk, fx_a([5]), mode="fixed").value == 15


def test_rejects_what_the_rtl_cannot_do():
    with pytest.raises(UserError):
        pe_dot(f32_words([1.0]), f32_words([1.0]), prune=0)
    with pytest.raises(UserError):
        pe_dot(fx_w([1]), fx_a([1]), mode="fixed", quant=25)
    with pytest.raises(UserError):
        pe_dot(np.zeros(65, np.uint32), np.zeros(65, np.uint32))
    with pytest.raises(UserError):
        pe_dot(np.array([1.0]), np.array([1.0]))
    with pytest.raises(UserError):
        pe_dot(f32_words([1.0]), f32_words([1.0]), mode="int8")


# ---- randomised agreement and properties ------------------------------------------------------------------
def fp_word():
    exp = st.one_of(st.integers(0, 255), st.integers(100, 140), st.just(0))
    return st.builds(lambda s, e, f: (s << 31) | (e << 23) | f, st.integers(0, 1), exp,
                     st.one_of(st.integers(0, 0x7FFFFF), st.sampled_from([0, 1, 0x400000, 0x7FFFFF])))


@given(st.integers(1, 64).flatmap(lambda n: st.tuples(st.lists(fp_word(), min_size=n, max_size=n),
                                                      st.lists(fp_word(), min_size=n, max_size=n))),
       st.one_of(st.just(0xFFFFFF), st.integers(1, 0xFFFFFF)), st.booleans())
def test_fp32_agrees_with_reference(wa, prune, strict):
    w, a = wa
    agree(np.array(w, np.uint32), np.array(a, np.uint32), prune=prune, strict_ieee=strict)


@given(st.integers(1, 64).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-(1 << 24) + 1, (1 << 24) - 1) | st.integers(-300, 300), min_size=n, max_size=n),
    st.lists(st.integers(-(1 << 24), (1 << 24) - 1) | st.integers(-300, 300), min_size=n, max_size=n))),
    st.one_of(st.just(0xFFFFFF), st.integers(1, 0xFFFFFF)), st.integers(0, 24), st.booleans())
def test_fixed_agrees_with_reference(wa, prune, quant, strict):
    w, a = wa
    agree(fx_w(w), fx_a(a), mode="fixed", prune=prune, quant=quant, strict_ieee=strict)


@given(st.lists(st.tuples(st.integers(-(1 << 24) + 1, (1 << 24) - 1), st.integers(-(1 << 24) + 1, (1 << 24) - 1)),
                min_size=1, max_size=64))
def test_fixed_equals_exact_dot_without_saturation(pairs):
    w, a = [p[0] for p in pairs], [p[1] for p in pairs]
    exact = sum(x * y for x, y in pairs)
    r = pe_dot(fx_w(w), fx_a(a), mode="fixed")
    assert r.acc == exact
    if -(1 << 24) <= exact < (1 << 24):
        assert r.value == exact


@given(st.lists(st.floats(-1e3, 1e3, width=32).filter(lambda x: x == 0 or abs(x) > 1e-3), min_size=1, max_size=64),
       st.data())
def test_fp32_close_to_exact_dot(w, data):
    a = data.draw(st.lists(st.floats(-1e3, 1e3, width=32).filter(lambda x: x == 0 or abs(x) > 1e-3),
                           min_size=len(w), max_size=len(w)))
    r = pe_dot(f32_words(w), f32_words(a))
    exact = sum(Fraction(float(x)) * Fraction(float(y)) for x, y in zip(w, a))
    scale = sum(abs(Fraction(float(x)) * Fraction(float(y))) for x, y in zip(w, a))
    # both truncations cut towards zero; the error is relative to the largest product (bitlet_rtl.md 7)
    assert abs(Fraction(r.value) - exact) <= scale * Fraction(1, 2 ** 21) + Fraction(1, 2 ** 140)


def test_batch_equals_single():
    rng = np.random.default_rng(0)
    W = f32_words(rng.standard_normal((20, 64)))
    A = f32_words(np.maximum(rng.standard_normal((20, 64)), 0))
    b = pe_dot_batch(W, A, prune=0xFFF000)
    assert len(b) == 20
    for i in range(20):
        s = pe_dot(W[i], A[i], prune=0xFFF000)
        assert (s.out_word, s.acc, s.n) == (int(b.out_word[i]), int(b.acc[i]), int(b.n[i]))
        assert list(s.channel_cycles) == list(b.channel_cycles[i])
