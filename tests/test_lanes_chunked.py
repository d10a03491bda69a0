"""pack_weight in chunks of filters (lanes.CHUNK_VALUES) gives the one-go planes field by field, and
planes.join is the exact inverse of cutting a tensor's planes along axis 0."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bitsieve import formats, lanes
from bitsieve.accel import tiling
from bitsieve.planes import join, pack
from bitsieve.simulate import Run, Simulator

FIELDS = ("words", "signs", "nonzero", "exps", "gexp", "lost", "scale", "lane_valid", "bexp")
META = ("shape", "axis", "group", "align", "fmt")


def assert_same(a, b):
    for k in META:
        assert getattr(a, k) == getattr(b, k), k
    for k in FIELDS:
        x, y = getattr(a, k), getattr(b, k)
        assert (x is None) == (y is None), k
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape, k
            np.testing.assert_array_equal(x, y, err_msg=k)


def packed(chunk, monkeypatch, *args, **kw):
    """pack_weight with CHUNK_VALUES = chunk, and with no chunking at all; also how often it packed."""
    calls = []
    inner = lanes._pack_filters

    def spy(w, *a, **k):
        calls.append(len(w))
        return inner(w, *a, **k)

    monkeypatch.setattr(lanes, "_pack_filters", spy)
    monkeypatch.setattr(lanes, "CHUNK_VALUES", 1 << 62)
    one, lay1 = lanes.pack_weight(*args, **kw)
    assert len(calls) == 1
    calls.clear()
    monkeypatch.setattr(lanes, "CHUNK_VALUES", chunk)
    got, lay = lanes.pack_weight(*args, **kw)
    assert lay.mode == lay1.mode and lay.shape == lay1.shape
    np.testing.assert_array_equal(lay.lane_ch, lay1.lane_ch)
    return got, one, list(calls)


def weight(rng, shape, zeros=0.3):
    w = rng.standard_normal(shape).astype(np.float32) * rng.choice([1e-3, 0.02, 1.0, 30.0], size=shape[:1] + (1,) *
                                                                   (len(shape) - 1)).astype(np.float32)
    w[rng.random(shape) < zeros] = 0
    if shape[0] > 2:
        w[1] = 0  # an all-zero filter (scale 1)
    return w


SHAPES = [(37, 50), (13, 200), (24, 16, 3, 3), (19, 3, 7, 7), (32, 1, 3, 3), (11, 6, 5), (9, 70, 1, 2)]
CASES = [  # fmt, round_to, align
    ("fp32", "", "none"), ("fp32", "bf16", "none"), ("fp32", "bf16", "weight"), ("bf16", "", "weight"),
    ("fp16", "", "none"), ("int8", "", "none"), ("int16", "", "none"), ("int16", "int8", "none"),
    ("int10tc", "int8", "none"), ("q4.3", "", "none"), ("mxfp8e4m3", "", "weight"), ("mxfp4@16", "", "none"),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt, round_to, align", CASES)
@pytest.mark.parametrize("mode", lanes.MODES)
def test_chunked_equals_one_go(shape, fmt, round_to, align, mode, monkeypatch):
    rng = np.random.default_rng(abs(hash((shape, fmt, mode))) % 2**32)
    w = weight(rng, shape)
    G = int(rng.choice([3, 8, 16, 64]))
    got, one, calls = packed(200, monkeypatch, w, fmt, G, mode, align, round_to=round_to)
    assert_same(got, one)
    assert sum(calls) == shape[0] and len(calls) > 1  # really chunked, every filter once


@pytest.mark.parametrize("shape", [(37, 50), (24, 16, 3, 3), (32, 1, 3, 3)])
@pytest.mark.parametrize("fmt, round_to", [("int8", ""), ("int16", ""), ("int16", "int8"), ("int10tc", "int8")])
def test_chunked_with_reference(shape, fmt, round_to, monkeypatch):
    """Integer scales come from the reference's rows of the same filters (a method's output on its grid)."""
    rng = np.random.default_rng(7)
    ref = weight(rng, shape)
    w = ref * (rng.random(shape) < 0.6) + np.float32(0.01) * rng.standard_normal(shape).astype(np.float32)
    w[0] *= 3  # beyond the reference's range: clips
    for r in (ref, ref.reshape(shape[0], -1), ref.ravel()):  # any shape of the weight's size
        got, one, calls = packed(100, monkeypatch, w, fmt, 16, "auto", reference=r, round_to=round_to)
        assert_same(got, one)
        assert len(calls) > 1
    # the scale really is the reference's, row for row (a join that shuffles rows would differ)
    _, scale = formats.get(round_to or fmt).quantize(ref, axis=0)
    np.testing.assert_array_equal(got.scale, scale)


def test_reference_of_another_size_goes_in_one_go(monkeypatch):
    rng = np.random.default_rng(3)
    w = weight(rng, (40, 30))
    monkeypatch.setattr(lanes, "CHUNK_VALUES", 64)
    with pytest.raises(ValueError):  # as it always did: reshaping the reference fails
        lanes.pack_weight(w, "int8", 8, reference=np.ones(7, np.float32))
    # a float format ignores its reference, even a wrong one, chunked or not
    got, one, calls = packed(64, monkeypatch, w, "fp32", 8, reference=np.ones(7, np.float32))
    assert_same(got, one)
    assert len(calls) > 1


def test_small_weights_and_huge_filters(monkeypatch):
    rng = np.random.default_rng(5)
    w = weight(rng, (6, 40))
    got, one, calls = packed(10 ** 6, monkeypatch, w, "int8", 16)
    assert_same(got, one)
    assert calls == [6]  # fits: one go
    got, one, calls = packed(8, monkeypatch, w, "int8", 16)  # a filter is over the chunk: one per chunk
    assert_same(got, one)
    assert calls == [1] * 6
    got, one, calls = packed(48 * 5, monkeypatch, w, "int8", 16)  # 5 filters, then the last one
    assert_same(got, one)
    assert calls == [5, 1]


@settings(max_examples=40, deadline=None)
@given(O=st.integers(1, 40), cw=st.integers(1, 20), kh=st.integers(1, 4), kw=st.integers(1, 4),
       conv=st.booleans(), G=st.integers(1, 64), mode=st.sampled_from(lanes.MODES),
       fmt=st.sampled_from(["fp32", "bf16", "int8", "int16", "mxfp6e2m3"]), chunk=st.integers(1, 300),
       seed=st.integers(0, 2 ** 31), with_ref=st.booleans())
def test_chunked_hypothesis(O, cw, kh, kw, conv, G, mode, fmt, chunk, seed, with_ref):
    rng = np.random.default_rng(seed)
    shape = (O, cw, kh, kw) if conv else (O, cw * kh)
    w = weight(rng, shape, zeros=0.5)
    ref = weight(rng, shape) if with_ref else None
    with pytest.MonkeyPatch.context() as mp:
        got, one, calls = packed(chunk, mp, w, fmt, G, mode, "weight" if fmt == "bf16" else "none",
                                 reference=ref, round_to="bf16" if fmt == "fp32" else "")
    assert_same(got, one)
    assert sum(calls) == O
    vals = lanes.from_lanes(got.values().reshape(O, -1, G), lanes.layout(shape, G, mode), shape)
    assert vals.shape == shape


# ---- join ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["fp32", "int8", "mxfp8e5m2"])
def test_join_is_packing_in_one_go(fmt):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((10, 3, 21)).astype(np.float32)
    one = pack(x, fmt, group=8, axis=2, per_channel=True)
    parts = [pack(x[a:b], fmt, group=8, axis=2, per_channel=True) for a, b in [(0, 4), (4, 5), (5, 10)]]
    assert_same(join(parts), one)
    assert_same(join(iter(parts), x.shape), one)  # streamed
    assert join(parts).count == x.size
    np.testing.assert_array_equal(join(parts).values(), one.values())
    with pytest.raises(ValueError):
        join(parts[:-1], x.shape)  # a part missing
    with pytest.raises(ValueError):
        join(parts + parts[-1:], x.shape)  # one too many
    with pytest.raises(ValueError):
        join([parts[0], pack(x[4:], fmt, group=4, axis=2)])  # packed differently
    with pytest.raises(ValueError):
        join([pack(x, fmt, group=8, axis=0)])  # groups along axis 0 do not join along it
    with pytest.raises(ValueError):
        join([])


# ---- through the simulator ---------------------------------------------------------------------------------
@pytest.mark.parametrize("accel, fmt", [("bitx", "bf16"), ("bitx", "int8"), ("bitvert", "int8"),
                                        ("laconic", "int8"), ("bitwave", "int8"), ("bitxpro", "fp32")])
def test_simulation_same_chunked(accel, fmt, monkeypatch):
    rng = np.random.default_rng(1)
    w = weight(rng, (96, 128))
    w2 = w * (rng.random(w.shape) < 0.5)  # a method's output: quantised on w's grid
    convw = weight(rng, (48, 8, 3, 3))
    a = rng.standard_normal((1, 8, 8, 8)).astype(np.float32)
    wls = [(tiling.Workload.linear(w, rng.standard_normal((4, 128)).astype(np.float32), name="fc"), None),
           (tiling.Workload.linear(w, rng.standard_normal((4, 128)).astype(np.float32), name="fc"), w2),
           (tiling.Workload.conv(convw, a, padding=1, name="conv"), None)]
    sim = Simulator(Run(accels=[accel], fmt=fmt))
    for wl, w_ in wls:
        monkeypatch.setattr(lanes, "CHUNK_VALUES", 1 << 62)
        one = sim.layer(wl, w_)[accel]
        monkeypatch.setattr(lanes, "CHUNK_VALUES", 500)
        got = sim.layer(wl, w_)[accel]
        assert got.cycles == one.cycles and got.effectual == one.effectual
        assert got.events == one.events and got.dense_cycles == one.dense_cycles
