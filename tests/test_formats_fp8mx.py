"""FP8 (OCP e4m3fn, e5m2) and OCP MX block formats: bit for bit against ml_dtypes, hand-worked examples, exact
round trips through the planes, and the CLI."""
import json
import math
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from bitsieve import formats
from bitsieve.cli import main
from bitsieve.errors import UserError
from bitsieve.planes import pack

FP8 = {"fp8e4m3": ml_dtypes.float8_e4m3fn, "fp8e5m2": ml_dtypes.float8_e5m2}
MX = {"mxfp8e4m3": ml_dtypes.float8_e4m3fn, "mxfp8e5m2": ml_dtypes.float8_e5m2,
      "mxfp6e3m2": ml_dtypes.float6_e3m2fn, "mxfp6e2m3": ml_dtypes.float6_e2m3fn, "mxfp4": ml_dtypes.float4_e2m1fn,
      "mxint8": None}
FINITE32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


def ml_bits(x, t):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(x).astype(t).view(np.uint8).astype(np.uint32)


# ---- FP8 --------------------------------------------------------------------------------------------
def test_fp8_hand_worked():
    e4 = formats.get("fp8e4m3")
    x = [448.0, 464.0, 0.0625 * 1.5, -0.0, 2.0 ** -9, 2.0 ** -10, 1.0, -3.5, float("nan")]
    # 464 is the tie between 448 (S.1111.110) and NaN's pattern: even wins; 2^-10 ties 0 and 2^-9: 0 wins
    assert e4.encode(np.array(x)).tolist() == [0x7E, 0x7E, 0x1C, 0x80, 0x01, 0x00, 0x38, 0xC6, 0x7F]
    assert (e4.emax, e4.max_value, e4.nbits) == (8, 448.0, 4)
    assert e4.fields(np.array([0x7E, 0x01]))[1].tolist() == [15, 0]  # 448 has the all-ones exponent: finite
    e5 = formats.get("fp8e5m2")
    x = [57344.0, 61440.0, float("inf"), 1.5 * 2.0 ** -14, 2.0 ** -16, -1.0]
    assert e5.encode(np.array(x)).tolist() == [0x7B, 0x7C, 0x7C, 0x06, 0x01, 0xBC]  # 61440 ties to inf
    assert e5.decode([0x7C, 0xFC, 0x7D]).tolist()[:2] == [np.inf, -np.inf] and np.isnan(e5.decode([0x7D])[0])


def test_fp8e4m3_refuses_overflow_with_one_line():
    """OCP e4m3fn has no infinity; ml_dtypes (OCP's non-saturating mode) makes such values NaN: refused."""
    f = formats.get("fp8e4m3")
    for bad in ([465.0], [1.0, -1e6], [np.inf]):
        with pytest.raises(UserError, match=r"448") as e:
            f.encode(np.array(bad))
        assert "\n" not in str(e.value)
    assert np.isnan(f.decode(f.encode(np.array([np.nan])))[0])  # NaN stays NaN, as in fp32


@pytest.mark.parametrize("name", list(FP8))
@given(x=hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(-448, 448, width=32) | FINITE32))
def test_fp8_matches_ml_dtypes_bit_for_bit(name, x):
    f, t = formats.get(name), FP8[name]
    want = ml_bits(x, t)
    if name == "fp8e4m3" and (want & 0x7F == 0x7F).any():
        with pytest.raises(UserError):
            f.encode(x)
        return
    raw = f.encode(x)
    assert raw.tolist() == want.tolist()
    v = f.decode(raw)
    assert np.array_equal(v, x.astype(t).astype(np.float64)) and np.array_equal(np.signbit(v), np.signbit(x))


@pytest.mark.parametrize("name", list(FP8))
def test_fp8_every_pattern_round_trips(name):
    f = formats.get(name)
    raw = np.arange(256, dtype=np.uint32)
    v = f.decode(raw)
    ok = ~np.isnan(v)
    assert np.array_equal(f.encode(v[ok]), raw[ok])
    assert ok.sum() == (254 if name == "fp8e4m3" else 250)  # e4m3fn: one NaN per sign; e5m2: 3 per sign
    fin = np.isfinite(v)
    sign, e, sig = f.fields(raw[fin])
    mag = sig * np.ldexp(1.0, np.maximum(e.astype(int), 1) - f.bias - f.frac)
    assert np.array_equal(np.where(sign == 1, -mag, mag), v[fin])


def test_fp8_planes_keep_specials_per_value():
    """e4m3fn: only S.1111.111 is NaN (448 shares its exponent); an aligned group with an inf or NaN keeps the
    others finite (alignment to the top exponent flushes them to zero)."""
    e4 = np.array([448.0, np.nan, -448.0, 0.5])
    for align in ("none", "weight"):
        v = pack(e4, "fp8e4m3", 64, align).values()
        assert v[0] == 448.0 and np.isnan(v[1]) and v[2] == -448.0 and v[3] == (0.5 if align == "none" else 0.0)
        v = pack(np.array([np.inf, 1.0, -0.25]), "fp8e5m2", 64, align).values()
        assert v[0] == np.inf and np.isfinite(v[1:]).all() and (align == "weight" or v[1:].tolist() == [1.0, -0.25])


# ---- MX ---------------------------------------------------------------------------------------------
def spec_mx(x, name, block):
    """OCP MX v1.0 6.3 written out per block in plain Python: X = 2^(floor(log2 max|v|) - emax), clamped to
    E8M0; elements v/X rounded (ml_dtypes) and clamped to the element's largest value."""
    f = formats.get(f"{name}@{block}")
    out = np.zeros(len(x))
    for b in range(0, len(x), f.block):
        blk = [float(v) for v in x[b:b + f.block]]
        amax = max(abs(v) for v in blk)
        s = min(max(math.floor(math.log2(amax)) - f.emax, -127), 127) if amax else -127
        for i, v in enumerate(blk):
            el = min(max(v / 2.0 ** s, -f.max_value), f.max_value)
            el = round(el * 64) / 64 if MX[name] is None else float(np.float64(el).astype(MX[name]))
            out[b + i] = el * 2.0 ** s
    return out


def test_mx_hand_worked():
    f = formats.get("mxfp4")
    assert (f.block, f.emax, f.max_value, f.nbits) == (32, 2, 6.0, 2)
    # max 3 -> X = 2^(1 - 2): elements 6, -1.5, 0.2 -> 0, 0; the E8M0 field 126 sits above the 4 element bits
    raw = f.encode(np.array([3.0, -0.75, 0.1, 0.0]))
    assert raw.tolist() == [126 << 4 | 0x7, 126 << 4 | 0xB, 126 << 4, 126 << 4]
    assert f.decode(raw).tolist() == [3.0, -0.75, 0.0, 0.0]
    assert f.encode(np.array([7.9, 1.0])).tolist() == [127 << 4 | 0x7, 127 << 4 | 0x2]  # 7.9/1 saturates at 6
    assert f.encode(np.zeros(3)).tolist() == [0, 0, 0]  # an all-zero block: scale 2^-127 (field 0)
    i8 = formats.get("mxint8")
    raw = i8.encode(np.array([1.0, -0.5, 0.3]))  # X = 1, elements round(64 v), sign-magnitude
    assert raw.tolist() == [127 << 8 | 64, 127 << 8 | 0x80 | 32, 127 << 8 | 19]
    assert i8.decode(raw).tolist() == [1.0, -0.5, 19 / 64]
    e4 = formats.get("mxfp8e4m3")  # 500 -> X = 2^(8 - 8) = 1, 500 saturates at 448; 0.0625*1.5 -> 0x1C
    assert (e4.encode(np.array([500.0, 0.09375])) & 0xFF).tolist() == [0x7E, 0x1C]


def test_mx_blocks_run_along_the_axis_and_the_block_is_a_parameter():
    x = np.ones((2, 40))
    x[:, 32:] = 100.0  # the second block of each row (values 32..39) has its own scale
    for axis, arr in ((1, x), (0, x.T)):
        s = formats.get("mxfp4").shared_exp(formats.get("mxfp4").encode(arr, axis=axis))
        s = s if axis == 1 else s.T
        assert (s[:, :32] == 127 - 2).all() and (s[:, 32:] == 127 + 6 - 2).all()
    f16 = formats.get("mxfp4@16")
    assert f16.block == 16 and f16.name == "mxfp4@16" and formats.get("mxfp4@32").name == "mxfp4"
    assert len(set(f16.shared_exp(f16.encode(np.r_[np.ones(16), 8 * np.ones(16)])).tolist())) == 2


@pytest.mark.parametrize("bad", ["mxfp5", "mxfp4@0", "mxfp4@x", "mx", "fp8e4m2", "mxint4"])
def test_bad_mx_names(bad):
    with pytest.raises(UserError):
        formats.get(bad)


def test_mx_refuses_non_finite_and_quantize():
    with pytest.raises(UserError, match="non-finite"):
        formats.get("mxfp8e4m3").encode(np.array([1.0, np.inf]))
    with pytest.raises(UserError):
        formats.get("mxint8").quantize(np.ones(3))


@pytest.mark.parametrize("name", list(MX))
@given(x=hnp.arrays(np.float32, st.integers(1, 70), elements=FINITE32), block=st.sampled_from([32, 8, 1]))
def test_mx_matches_the_spec_and_round_trips(name, x, block):
    f = formats.get(f"{name}@{block}")
    raw = f.encode(x)
    v = f.decode(raw)
    assert np.array_equal(v, spec_mx(x, name, block)) and np.array_equal(f.encode(v), raw)  # decode -> encode: same bits
    s = f.shared_exp(raw).astype(int) - 127
    if MX[name] is not None:  # the element bits are ml_dtypes' bits of v / X
        assert np.array_equal(raw & ((1 << f.width) - 1), ml_bits(np.ldexp(v, -s), MX[name]))


# ---- MX and FP8 through the planes ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fp8e4m3", "fp8e5m2", "mxfp8e4m3", "mxfp6e2m3", "mxfp4@16", "mxint8"])
@given(x=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 80), st.integers(1, 2)),
                    elements=st.floats(-300, 300, width=32)), group=st.integers(1, 64))
def test_planes_round_trip(name, x, group):
    f = formats.get(name)
    raw = f.encode(x, axis=1)  # the planes' group axis
    p = pack(x, f, group)
    assert np.array_equal(p.unpack_raw(), raw)
    assert np.array_equal(p.values(), f.decode(raw)) and np.array_equal(np.signbit(p.values()),
                                                                        np.signbit(f.decode(raw)))
    if f.is_float:  # aligned: truncated toward zero, and still a pattern of the format with the same scales
        a = pack(x, f, group, "weight")
        va = a.values()
        assert np.all(np.abs(va) <= np.abs(p.values())) and np.array_equal(f.decode(a.unpack_raw()), va)


def test_mx_alignment_is_per_block():
    """A group of 64 spans two blocks of 32 with scales 2^20 apart: each block aligns to its own shared
    exponent, so each block's largest value loses nothing."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 64)) * np.r_[np.ones(32), np.full(32, 2.0 ** -20)]
    v = pack(x, "mxfp8e4m3", 64, "weight").values()
    exact = formats.get("mxfp8e4m3").decode(formats.get("mxfp8e4m3").encode(x))
    for blk in (slice(0, 32), slice(32, 64)):
        top = np.abs(exact[:, blk]).argmax(axis=1)
        assert np.array_equal(v[:, blk][np.arange(3), top], exact[:, blk][np.arange(3), top])
        assert np.abs(v[:, blk]).max() > 0


# ---- the command ------------------------------------------------------------------------------------
def test_cli_formats_version_and_profile(capsys):
    assert main(["formats", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert {"fp8e4m3", "fp8e5m2", "mxfp4", "mxint8", "mxfp6e2m3"} <= set(names)
    assert main(["--version"]) == 0
    from bitsieve import __version__
    assert capsys.readouterr().out.strip() == f"bitsieve {__version__}"
    zero = {}
    for fmt in ("fp32", "fp8e4m3", "mxfp4"):
        assert main(["profile", "lenet-mnist", "--format", fmt, "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["format"] == fmt and len(r["total"]["plane_occupancy"]) == formats.get(fmt).nbits
        zero[fmt] = r["total"]["zero_bit_frac"]
    assert 0 < zero["fp32"] < zero["fp8e4m3"] < 1 and 0 < zero["mxfp4"] < 1
    assert main(["profile", "lenet-mnist", "--format", "mxfp4@0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitsieve: error:") and "\n" not in err


def test_version_and_formats_do_not_import_torch():
    code = ("import sys; from bitsieve.cli import main; rc = main(['--version']) + main(['formats']); "
            "sys.exit(rc or 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("bitsieve ") and "mxfp4" in r.stdout
