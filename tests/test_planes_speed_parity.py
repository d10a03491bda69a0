"""The vectorised packing kernels of planes.py against a plain NumPy reference, bit for bit.

The reference below is written from the specification (module docstring of planes.py, methods.md decision 3)
with one NumPy operation per significance and no code shared with the kernels. Before the kernels were
rewritten, every test in this file also passed with the previous (8x8 bit-transpose) kernels, so they pin the
behaviour the rest of the code base was written against: field masks, padding, the exponent of subnormals and
of empty groups, alignment (a shift of 32 or more clears a significand), lost-bit counts, and what happens to
bits above a format's width in a raw pattern.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bitsieve import formats, planes

ONE = np.uint64(1)
FORMATS = ["fp32", "fp16", "bf16", "int8", "int8tc", "int3", "q3.4", "int32tc"]
GROUPS = [1, 7, 8, 33, 64]
SHAPES = [(1,), (5,), (130,), (3, 64), (4, 71), (2, 200), (3, 5, 2, 2), (2, 9, 3, 3), (4, 64, 1, 1)]
ALL_FORMATS = FORMATS + ["int2", "int16", "int32", "int5tc", "q7.8tc", "q0.7"]


def _popcount(x):
    return sum(((x >> np.uint64(s)) & ONE) for s in range(64))


def _to_words(bits, G):
    """bool/0-1 [n, G] -> uint64 [n]: bit g = bits[:, g]."""
    return (bits.astype(np.uint64) * (ONE << np.arange(G, dtype=np.uint64))).sum(axis=1, dtype=np.uint64)


def ref_pack(rows, G, nbits, width, exp_bits, frac, is_float, twos, align):
    """Same contract as planes._pack_kernel, one plane at a time."""
    R, L = rows.shape
    gpr = -(-L // G)
    n = R * gpr
    vals = np.zeros((R, gpr * G), np.uint64)
    vals[:, :L] = rows
    valid = np.zeros((R, gpr * G), bool)
    valid[:, :L] = True
    vals, valid = vals.reshape(n, G), valid.reshape(n, G)
    sign = (vals >> np.uint64(width - 1)) & ONE
    exps = np.zeros((n, G) if is_float else (0, G), np.int16)
    gexp = np.zeros(n, np.int16)
    lost = np.zeros(n, np.int32)
    if is_float:
        e = (vals >> np.uint64(frac)) & np.uint64((1 << exp_bits) - 1)
        mag = (vals & np.uint64((1 << frac) - 1)) | np.where(e != 0, ONE << np.uint64(frac), np.uint64(0))
        eff = np.maximum(e, ONE)  # subnormal: exponent field 1
        exps = np.where(valid, eff, 0).astype(np.int16)
        emax = np.where(valid, eff, ONE).max(axis=1, initial=ONE)
        gexp = emax.astype(np.int16)
        nonzero = mag != 0
        if align:
            d = emax[:, None] - eff
            shift = np.minimum(d, np.uint64(63))
            dropped = np.where(d >= 32, mag, mag & ((ONE << shift) - ONE))
            lost = _popcount(dropped).sum(axis=1).astype(np.int32)
            mag = np.where(d >= 32, np.uint64(0), mag >> shift)
    else:
        mag = vals if twos else vals & np.uint64((1 << (width - 1)) - 1)
        nonzero = mag != 0
    words = np.zeros((n, nbits), np.uint64)
    for s in range(nbits):
        words[:, s] = _to_words((mag >> np.uint64(s)) & ONE, G)
    return words, _to_words(sign, G), _to_words(nonzero, G), exps, gexp, lost


def ref_unpack(words, G):
    out = np.zeros((words.shape[0], G), np.uint64)
    for s in range(words.shape[1]):
        out |= ((words[:, s:s + 1] >> np.arange(G, dtype=np.uint64)) & ONE) << np.uint64(s)
    return out.astype(np.uint32)


def kernel_args(f, align):
    return f.nbits, f.width, f.exp_bits, f.frac, f.is_float, f.twos, f.is_float and align == "weight"


def assert_same(got, want):
    names = ["words", "signs", "nonzero", "exps", "gexp", "lost"]
    for name, a, b in zip(names, got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, a.shape, b.dtype, b.shape)
        assert np.array_equal(a, b), name


def varied_raw(fmt, shape, rng):
    """Raw patterns with zeros, -0.0, subnormals, largest values, inf/nan (floats) or range ends (ints)."""
    f = formats.get(fmt)
    n = int(np.prod(shape))
    if f.is_float:
        x = rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n) * (rng.random(n) < 0.3))
        finfo = {"fp32": np.float32, "fp16": np.float16, "bf16": np.float32}[fmt]
        tiny = np.finfo(finfo).smallest_subnormal if fmt != "bf16" else 9.2e-41
        big = float(np.finfo(finfo).max) if fmt != "bf16" else 3.38e38
        specials = [0.0, -0.0, tiny, -tiny, 3 * tiny, float(np.finfo(finfo).tiny), big, -big, np.inf, np.nan]
        k = min(n, 2 * len(specials))
        x[rng.choice(n, k, replace=False)] = rng.choice(specials, k)
        x[rng.random(n) < 0.15] = 0.0
        with np.errstate(all="ignore"):
            return f.encode(x.reshape(shape))
    lo = -(1 << (f.width - 1)) if f.twos else -f.qmax
    v = rng.integers(lo, f.qmax + 1, n, dtype=np.int64)
    v[rng.random(n) < 0.2] = 0
    v[rng.random(n) < 0.05] = f.qmax
    v[rng.random(n) < 0.05] = lo
    return f.encode(v.reshape(shape))


def check_pack_raw(raw, fmt, G, align, axis=None):
    f = formats.get(fmt)
    p = planes.pack_raw(raw, f, G, align, axis)
    rows = np.moveaxis(raw, p.axis, -1).reshape(-1, raw.shape[p.axis]) if raw.ndim else raw.reshape(1, 1)
    want = ref_pack(rows, G, *kernel_args(f, align))
    got = (p.words, p.signs, p.nonzero, p.exps, p.gexp, p.lost)
    if not f.is_float:  # pack_raw drops the exponents of integer formats
        assert p.exps is None and p.gexp is None
        got, want = got[:3] + got[5:], want[:3] + want[5:]
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    assert np.array_equal(p.magnitudes(), ref_unpack(p.words, G))
    if align == "none" or not f.is_float:
        assert np.array_equal(p.unpack_raw(), raw)


@pytest.mark.parametrize("fmt", FORMATS)
def test_varied_cases(fmt):
    rng = np.random.default_rng(FORMATS.index(fmt))
    for shape in SHAPES:
        raw = varied_raw(fmt, shape, rng)
        for G in GROUPS:
            for align in ("none", "weight"):
                check_pack_raw(raw, fmt, G, align)


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8", "int16tc"])
@pytest.mark.parametrize("G", [8, 16, 33, 64])
def test_many_groups_and_rows(fmt, G):
    """Enough rows and groups for every pass of several groups and row boundaries inside a pass."""
    f = formats.get(fmt)
    rng = np.random.default_rng(G)
    x = rng.standard_normal((37, 301)) * (100 if not f.is_float else 1)
    raw = f.encode(x) if f.is_float else f.encode(np.clip(np.rint(x), -f.qmax, f.qmax).astype(np.int64))
    for align in ("none", "weight"):
        check_pack_raw(raw, fmt, G, align)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_kernels_on_random_bits(data):
    """Any raw pattern, also with bits above the format's width, any layout of rows and groups."""
    fmt = formats.get(data.draw(st.sampled_from(ALL_FORMATS)))
    R, L = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 150))
    G = data.draw(st.integers(1, 64))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 2**32, (R, L), dtype=np.uint64).astype(np.uint32)
    mode = data.draw(st.sampled_from(["width", "garbage", "sparse"]))
    if mode != "garbage":
        raw &= np.uint32((1 << fmt.width) - 1)
    if mode == "sparse":  # few set bits, many zeros and equal exponents
        raw &= rng.integers(0, 2**32, (R, L), dtype=np.uint64).astype(np.uint32)
        raw[rng.random((R, L)) < 0.5] = 0
    align = data.draw(st.sampled_from(["none", "weight"]))
    got = planes._pack_kernel(raw, G, *kernel_args(fmt, align))
    assert_same(got, ref_pack(raw, G, *kernel_args(fmt, align)))
    assert np.array_equal(planes._unpack_kernel(got[0], G), ref_unpack(got[0], G))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 70), nbits=st.integers(1, 32), G=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_unpack_ignores_bits_above_group(n, nbits, G, seed):
    """Methods hand back arbitrary words: bits >= G of a word are not values and must not leak."""
    words = np.random.default_rng(seed).integers(0, 2**64, (n, nbits), dtype=np.uint64)
    assert np.array_equal(planes._unpack_kernel(words, G), ref_unpack(words, G))


@pytest.mark.parametrize("exp_bits,frac", [(4, 3), (5, 2), (1, 30), (8, 10)])
@pytest.mark.parametrize("G", [5, 64])
def test_other_float_layouts(exp_bits, frac, G):
    """The float kernel takes its layout at run time: any 1 + exp_bits + frac <= 32 works, even 31-bit
    significands (the alignment shift is clamped to 31)."""
    width = 1 + exp_bits + frac
    rng = np.random.default_rng(width)
    raw = rng.integers(0, 1 << width, (3, 150), dtype=np.uint64).astype(np.uint32)
    raw[:, ::7] &= np.uint32((1 << frac) - 1)  # subnormals
    for align in (False, True):
        args = (frac + 1, width, exp_bits, frac, True, False, align)
        assert_same(planes._pack_kernel(raw, G, *args), ref_pack(raw, G, *args))


def test_non_contiguous_input_and_words():
    raw = formats.get("fp32").encode(np.random.default_rng(0).standard_normal((6, 130)))
    args = kernel_args(formats.get("fp32"), "weight")
    assert_same(planes._pack_kernel(raw[::2, ::2], 64, *args), ref_pack(raw[::2, ::2], 64, *args))
    words = planes._pack_kernel(raw, 64, *args)[0]
    assert np.array_equal(planes._unpack_kernel(words[::2], 64), ref_unpack(words[::2], 64))
