"""The packed bit-plane core: layout, exact inverse, alignment, worked examples of methods.md 2.2-2.3, 3.2."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from bitsieve import formats
from bitsieve.errors import UserError
from bitsieve.planes import pack, pack_raw

FORMATS = ["fp32", "fp16", "bf16", "int8", "int8tc", "int3", "int16", "int32tc", "q3.4", "q7.8tc"]
SPECIAL = np.array([0.0, -0.0, 1e-45, -1e-42, 1.1754942e-38, 3.4028235e38, -3.4028235e38, 1.0, -2.5],
                   np.float32)

def rows_of(x, axis):
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])

def raw_of(fmt, x):
    f = formats.get(fmt)
    if f.is_float:
        return f.encode(x)
    q, _ = f.quantize(x, axis=0 if x.ndim >= 2 else None)
    return f.encode(q)

@pytest.mark.parametrize("fmt", FORMATS)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=9),
                    elements=st.floats(-1e6, 1e6, width=32) | st.sampled_from(SPECIAL.tolist())),
       group=st.integers(1, 64))
def test_exact_round_trip(fmt, x, group):
    raw = raw_of(fmt, x) if formats.get(fmt).is_float else formats.get(fmt).encode(
        np.clip(np.rint(x.astype(np.float64)), -formats.get(fmt).qmax, formats.get(fmt).qmax).astype(np.int64))
    p = pack_raw(raw, fmt, group)
    assert p.unpack_raw().shape == raw.shape
    assert np.array_equal(p.unpack_raw(), raw)
    if formats.get(fmt).is_float:
        v = p.values()
        assert np.array_equal(v, formats.get(fmt).decode(raw)) and np.array_equal(np.signbit(v), np.signbit(
            formats.get(fmt).decode(raw)))

@given(x=hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 70), st.integers(1, 3),
                                          st.integers(1, 3)), elements=st.floats(-100, 100, width=32)),
       group=st.integers(1, 64), fmt=st.sampled_from(FORMATS))
def test_layout_channel_last_groups(x, group, fmt):
    """Bit g of words[group, s] is bit s of value g, groups cut along I for each kernel tap."""
    p = pack(x, fmt, group)
    f = formats.get(fmt)
    rows = rows_of(raw_of(fmt, x), 1)  # [O*KH*KW, I], channel-last
    _, _, mags = f.fields(rows)
    L = rows.shape[1]
    pad = -L % group
    mags = np.pad(mags, ((0, 0), (0, pad))).reshape(-1, group)
    want = np.zeros((mags.shape[0], f.nbits), np.uint64)
    for s in range(f.nbits):
        for g in range(group):
            want[:, s] |= ((mags[:, g].astype(np.uint64) >> np.uint64(s)) & np.uint64(1)) << np.uint64(g)
    assert np.array_equal(p.words, want)
    assert p.n_groups == x.shape[0] * x.shape[2] * x.shape[3] * -(-x.shape[1] // group)

def test_align_none_and_weight_agree_when_exponents_equal():
    x = np.array([1.5, 1.25, -1.75, 1.0], np.float32)
    a, b = pack(x, "fp32", align="none"), pack(x, "fp32", align="weight")
    assert np.array_equal(a.words, b.words) and b.lost.sum() == 0

def test_weight_alignment_truncates_and_counts_lost_bits():
    # 1.5 (exp 127) and 0.375 = 1.5 * 2^-2 (exp 125): the second significand moves right by 2.
    p = pack(np.array([1.5, 0.375, 2**-30], np.float32), "fp32", align="weight")
    ones = {s for s in range(24) if p.words[0, s]}
    assert {s for s in ones if p.words[0, s] & 1} == {23, 22}
    assert {s for s in ones if p.words[0, s] & 2} == {21, 20}
    assert not p.words[0, :, ].__and__(np.uint64(4)).any()  # 2^-30 shifted out entirely (31 places)
    assert p.lost[0] == 1 and p.gexp[0] == 127
    assert p.values().tolist() == [1.5, 0.375, 0.0]

def test_subnormals_use_exponent_one():
    tiny = np.float32(1e-45)  # subnormal: exponent field 0 -> 1, no hidden bit
    p = pack(np.array([tiny, np.float32(2**-126)], np.float32), "fp32", align="weight")
    assert p.exps[0, :2].tolist() == [1, 1] and p.lost[0] == 0
    assert p.words[0, 0] == 1 and p.words[0, 23] == 2

def test_bitx_worked_example_planes():
    """methods.md 3.2: 97, 19, 65, 7 -> plane popcounts s6:2 s5:1 s4:1 s3:0 s2:1 s1:2 s0:4."""
    p = pack(np.array([97, 19, 65, 7]), "int8")
    assert p.ones()[0].tolist() == [4, 2, 1, 0, 1, 1, 2]

def test_bitlet_fixed_worked_example_planes():
    """methods.md 2.3: |W| = [3,0,5,1,0,6,2,4], signs [+,+,-,+,+,+,-,+]."""
    p = pack(np.array([3, 0, -5, 1, 0, 6, -2, 4]), "int8", group=8)
    sets = [{g for g in range(8) if int(p.words[0, s]) >> g & 1} for s in range(3)]
    assert sets == [{0, 2, 3}, {0, 5, 6}, {2, 5, 7}]
    assert p.signs[0] == 0b01000100 and p.nonzero[0] == 0b11101101

def test_valid_mask_and_padding():
    p = pack(np.ones((2, 70), np.float32), "fp32", group=64)
    assert p.valid.tolist() == [2**64 - 1, 0b111111] * 2
    assert (p.words[1] == 0b111111).sum() == 1  # only the hidden-bit plane, only real values

@pytest.mark.parametrize("g", [0, 65, -1])
def test_bad_group(g):
    with pytest.raises(UserError):
        pack(np.ones(4, np.float32), "fp32", group=g)

def test_quantised_values_rebuild_with_channel_scale():
    w = np.random.default_rng(1).standard_normal((5, 7, 3, 3)).astype(np.float32)
    p = pack(w, "int16", group=8)
    err = np.abs(p.values() - w).max(axis=(1, 2, 3))
    assert (err <= np.abs(w).max(axis=(1, 2, 3)) / 32767 / 2 + 1e-12).all()


def test_per_tensor_scale_on_a_matrix():
    w = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    p = pack(w, "int8", per_channel=False)
    assert p.scale.size == 1
    assert np.allclose(p.values(), np.rint(w / (2.0 / 127)) * (2.0 / 127))
