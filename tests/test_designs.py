"""Designs: one grouping truth between a method and the design it targets, and numerics as the design computes."""
import numpy as np
import pytest

from bitsieve import designs, lanes, methods, simulate
from bitsieve.accel import tiling
from bitsieve.methods.core import apply_tensor

RNG = np.random.default_rng(7)


def _layers():
    """A regular conv, a first layer (taps > channels), a depthwise conv, a grouped conv and a linear layer,
    with real-looking (heavy-tailed) weights."""
    def w(*shape):
        return (RNG.standard_t(3, size=shape) * 0.05).astype(np.float32)

    return [
        ("conv", w(40, 72, 3, 3), dict(groups=1, in_hw=(6, 6), padding=1)),
        ("first", w(16, 3, 3, 3), dict(groups=1, in_hw=(8, 8), padding=1, stride=2)),
        ("depthwise", w(48, 1, 3, 3), dict(groups=48, in_hw=(6, 6), padding=1)),
        ("grouped", w(32, 8, 3, 3), dict(groups=4, in_hw=(5, 5), padding=1)),
        ("linear", w(24, 100), None),
    ]


def _workload(name, w, kw):
    if kw is None:
        return tiling.Workload.linear(w, tokens=3, name=name)
    return tiling.Workload.conv(w, name=name, **kw)


def _cycles(design, wl, weight=None):
    sim = simulate.Simulator(simulate.Run(accels=[design.accel], fmt=design.fmt, sets={design.accel: design.overrides}))
    return sim.layer(wl, weight)[design.accel].cycles


PAIRS = [("bitx", "fp32", {"keep": 3}), ("bitx", "int16", {"keep": 2}), ("bitx", "fp32", {"keep": 5, "layout": "channel"}),
         ("bitxpro", "fp32", {"keep": 3}), ("bitxpro", "int8", {"keep": 2, "rows": 4}),
         ("bitxpro", "fp32", {"keep": 4, "layout": "flat", "rows": 8})]


@pytest.mark.parametrize("accel,fmt,sets", PAIRS)
def test_pruning_in_software_or_at_run_time_is_the_same(accel, fmt, sets):
    """The design's runtime selection applied as a method (its own numerics spec) and then simulated costs exactly
    the cycles of the design on the original weights, and a second pass changes no bit: same groups, same tiles."""
    d = designs.Design.make(accel, fmt, sets)
    steps = methods.parse_specs(list(d.numerics().weights))
    for name, w, kw in _layers():
        wl = _workload(name, w, kw)
        groups = kw["groups"] if kw else 1
        pruned, _ = apply_tensor(w, steps, groups=groups)
        assert _cycles(d, wl, pruned) == _cycles(d, wl), name
        # the weights the design computes with (its runtime selection of the original planes) are the
        # software-pruned weights, bit for bit, in the design's own packing
        acc = simulate.ACCELERATORS[accel]
        spec = acc.weight_spec(d.config(), simulate.formats.get(fmt), wl)
        sel = __import__(f"bitsieve.accel.{accel}", fromlist=["runtime_select"]).runtime_select
        before = simulate.pack_weights(wl, spec)
        kept = sel(before, d.config(), groups) if accel == "bitxpro" else sel(before, d.config())
        after = simulate.pack_weights(wl, spec, pruned)
        assert np.array_equal(kept.words, after.words), name
        live = np.bitwise_or.reduce(after.words, axis=1)
        assert np.array_equal(kept.signs & live, after.signs & live), name


def test_a_mismatched_layout_is_not_the_same():
    """The test above can fail: grouping the method along channels while the design groups by taps (the old
    behaviour on first and depthwise layers) gives other weights than the design computes with."""
    from bitsieve.accel.bitx import runtime_select

    d = designs.Design.make("bitx", "fp32", {"keep": 2})
    name, w, kw = _layers()[2]  # depthwise: the design groups its 9 taps, channel grouping has groups of 1
    wl = _workload(name, w, kw)
    spec = simulate.ACCELERATORS["bitx"].weight_spec(d.config(), simulate.formats.get("fp32"), wl)
    kept = runtime_select(simulate.pack_weights(wl, spec), d.config())
    for layout, same in (("channel", False), ("auto", True)):
        pruned, _ = apply_tensor(w, methods.parse_specs([f"bitx:keep=2,layout={layout}"]), groups=48)
        assert np.array_equal(kept.words, simulate.pack_weights(wl, spec, pruned).words) is same


@pytest.mark.parametrize("method,accel,k", [("bitwave", "bitwave", 3), ("bbs", "bitvert", 2)])
def test_offline_methods_prune_the_groups_their_design_reads(method, accel, k):
    """BitWave's bit-flip and BBS's binary pruning, run in their design's format, group size and layout, leave
    every group the design packs with the zero / uniform columns they promise (depthwise and grouped too)."""
    d = designs.Design.make(accel, "int8")
    steps = d.method_steps(f"{method}:k={k},beta=0" if method == "bbs" else f"{method}:k={k}")
    assert steps is not None and steps[0].params["group"] == d.config()["group"]
    assert steps[0].params["layout"] == d.config()["layout"]
    for name, w, kw in _layers():
        wl = _workload(name, w, kw)
        pruned = methods.apply_model([type("L", (), {"name": name, "weight": w, "groups": kw["groups"] if kw else 1})()],
                                     steps)[0].weight
        spec = simulate.ACCELERATORS[accel].weight_spec(d.config(), simulate.formats.get("int8"), wl)
        p = simulate.pack_weights(wl, spec, pruned)
        v = p.valid[:, None]
        if method == "bitwave":  # sign-magnitude: at least k all-zero magnitude columns per group
            zero_cols = ((p.words & v) == 0).sum(axis=1)
            assert (zero_cols >= k).all(), name
        else:  # two's complement: redundant sign planes at the top + uniform (all 0 / all 1) low planes >= k
            words = p.words & v
            uniform = (words == 0) | (words == v)
            low = np.cumprod(uniform, axis=1).sum(axis=1)
            same = words[:, -2::-1] == words[:, -1:]  # planes below the sign plane equal to it, from the top
            red = np.minimum(np.cumprod(same, axis=1).sum(axis=1), 3)
            assert (low + red >= k).all(), name


def test_lanes_round_trip_and_padding_mask():
    for _, w, kw in _layers():
        for mode in lanes.MODES:
            lay = lanes.layout(w.shape, 16, mode)
            v = lanes.to_lanes(w, lay)
            assert np.array_equal(lanes.from_lanes(v, lay, w.shape), w)
            p, _ = lanes.pack_weight(w, "fp32", 16, mode)
            real = np.bitwise_count(p.valid).sum()
            assert real == w.size  # padding lanes are not weights
            assert np.array_equal(lanes.from_lanes(p.values(), lay, w.shape), w)  # align none: exact


def test_integer_lanes_keep_the_reference_grid():
    """A method's integers on the original per-channel grid come back exactly even when a channel's max shrank."""
    w = _layers()[0][1]
    p, lay = lanes.pack_weight(w, "int8", 64, "auto")
    vals = lanes.from_lanes(p.values(), lay, w.shape).astype(np.float32)
    shrunk = vals * (np.abs(vals) < np.abs(vals).reshape(40, -1).max(1)[:, None, None, None])  # drop each max
    q, _ = lanes.quantized(shrunk, simulate.formats.get("int8"), reference=w)
    q0, _ = lanes.quantized(vals, simulate.formats.get("int8"), reference=w)
    assert np.array_equal(q, np.where(shrunk == 0, 0, q0))


def test_design_numerics_and_relevance():
    assert designs.Design.make("stripes").numerics().describe() == "weights and activations in int16"
    assert not designs.Design.make("stripes").reads_weights and designs.Design.make("bitx").reads_weights
    n = designs.Design.make("bitx", "", {"keep": 1}).numerics()
    assert n.weights == ("bitx:keep=1,score=l2,format=fp32,group=64,layout=auto",)
    assert designs.Design.make("bitx", "", {"keep": 1}).name == "bitx[keep=1]"
    assert designs.Design.make("dense", "int16").name == "dense@int16"
    assert designs.Design.make("bitlet").numerics().forward.startswith("bitlet:prune=0xffffff")
    assert designs.Design.make("bitwave").method_steps("truncate")[0].params["format"] == "int8"
    assert designs.Design.make("bitx").method_steps("bitwave") is None  # an integer method on an fp32 design
