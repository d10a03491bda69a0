import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from bitsieve import formats
from bitsieve.errors import UserError

INT_NAMES = [f"int{b}" for b in (2, 3, 5, 8, 16, 24, 32)] + [f"int{b}tc" for b in (2, 4, 8, 16, 32)]
FIX_NAMES = ["q3.4", "q0.7", "q7.8tc", "q15.16"]


def test_layouts():
    assert [formats.get(n).nbits for n in ("fp32", "fp16", "bf16", "fp8e4m3", "fp8e5m2")] == [24, 11, 8, 4, 3]
    assert [formats.get(n).max_value for n in ("fp16", "fp8e4m3", "fp8e5m2")] == [65504.0, 448.0, 57344.0]
    assert [(formats.get(n).width, formats.get(n).nbits) for n in ("mxfp6e3m2", "mxfp4", "mxint8")] == [
        (6, 3), (4, 2), (8, 7)]
    assert formats.get("int8").nbits == 7 and formats.get("int8tc").nbits == 8
    q = formats.get("q3.4")
    assert (q.width, q.frac, q.nbits) == (8, 4, 7)


@pytest.mark.parametrize("bad", ["fp64", "int1", "int33", "q20.20", "", "int8x", "fp8", "mxfp4@5000"])
def test_unknown_formats_are_user_errors(bad):
    with pytest.raises(UserError):
        formats.get(bad)


def test_float_fields_by_hand():
    f = formats.get("fp32")
    raw = f.encode(np.array([1.5, -0.375, 0.0, -0.0, 1e-45], np.float32))
    sign, e, sig = f.fields(raw)
    assert sign.tolist() == [0, 1, 0, 1, 0]
    assert e.tolist() == [127, 125, 0, 0, 0]
    assert sig.tolist() == [0xC00000, 0xC00000, 0, 0, 1]  # hidden bit; a subnormal has none


def test_bf16_rounds_to_nearest_even():
    f = formats.get("bf16")
    x = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20], np.float32)
    assert f.decode(f.encode(x)).tolist() == [1.0, 1.0 + 2**-6, 1.0 + 2**-7]


def test_quantize_symmetric_per_channel():
    f = formats.get("int8")
    w = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -0.01]])
    q, scale = f.quantize(w, axis=0)
    assert scale.tolist() == [1.0 / 127, 1.0, 3.0 / 127]
    assert q.tolist() == [[64, -127, 32], [0, 0, 0], [127, 64, 0]]  # 63.5 rounds to even 64


def test_sign_magnitude_refuses_most_negative():
    with pytest.raises(UserError):
        formats.get("int8").encode(np.array([-128]))
    assert formats.get("int8tc").encode(np.array([-128])).tolist() == [0x80]


@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16"])
@given(bits=st.integers(0, 2**32 - 1))
def test_float_raw_round_trip(name, bits):
    f = formats.get(name)
    raw = np.array([bits >> (32 - f.width)], np.uint32)
    sign, e, sig = f.fields(raw)
    if e[0] == (1 << f.exp_bits) - 1:
        return  # inf/nan: fields still round trip, values do not compare
    v = f.decode(raw)
    assert f.encode(v.astype(np.float32) if name != "fp16" else v.astype(np.float16)).tolist() == raw.tolist()
    mag = sig[0] * 2.0 ** (max(int(e[0]), 1) - f.bias - f.frac)
    assert v[0] == (-mag if sign[0] else mag) and np.signbit(v[0]) == bool(sign[0])


@pytest.mark.parametrize("name", INT_NAMES + FIX_NAMES)
@given(data=st.data())
def test_int_round_trip(name, data):
    f = formats.get(name)
    lo = -(1 << (f.width - 1)) if f.twos else -f.qmax
    v = data.draw(hnp.arrays(np.int64, st.integers(1, 20), elements=st.integers(lo, f.qmax)))
    raw = f.encode(v)
    assert f.decode(raw).tolist() == v.tolist()
    sign, _, mag = f.fields(raw)
    assert ((sign == 1) == (v < 0)).all()
    if not f.twos:
        assert mag.tolist() == np.abs(v).tolist()
