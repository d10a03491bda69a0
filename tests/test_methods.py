"""Bit-level methods: worked examples of methods.md, independent per-group references of the reference code
rules (BitWave bit-flip, BBS rounded averaging and zero-point shifting), properties, spec parsing, the
model-level helper and the Bitlet forward-pass emulation against the PE model."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from bitsieve import formats
from bitsieve.accel.bitlet_pe import f32_words, pe_dot_batch
from bitsieve.errors import UserError
from bitsieve.methods import REGISTRY, CONFIDENCE, apply_model, apply_tensor, parse_spec, parse_specs
from bitsieve.methods.bbs import bbs, sensitive_channels
from bitsieve.methods.bitlet import bitlet_matmul
from bitsieve.methods.bitlet_emulate import emulate
from bitsieve.methods.bitwave import bitwave
from bitsieve.methods.bitx import bitx
from bitsieve.methods.bitxpro import bitxpro
from bitsieve.methods.core import changed_bits, effectual_bits, ints_of, pack_for
from bitsieve.methods.truncate import truncate
from bitsieve.planes import pack, pack_raw


def ints_planes(values, fmt="int8", group=64):
    f = formats.get(fmt)
    return pack_raw(f.encode(np.array(values, dtype=np.int64))[None, :], f, group)


def as_ints(p):
    return [int(v) for v in ints_of(p).reshape(-1)[: p.row_len]]


# ---- worked examples ------------------------------------------------------------------------------------
def test_bitx_worked_example():
    p = ints_planes([97, 19, 65, 7])
    assert as_ints(bitx(p, keep=3)) == [96, 16, 64, 0]
    assert as_ints(bitx(p, keep=4)) == [96, 16, 64, 4]
    assert as_ints(bitx(p, keep=3, score="msb")) == [96, 16, 64, 0]  # top three non-empty: 64, 32, 16


def test_bitx_l2_prefers_a_dense_lower_plane():
    # plane 2 (4x "4") beats plane 3 (one "8") under l2 only when it has more than 4x the ones
    p = ints_planes([8, 4, 4, 4, 4, 4])
    assert as_ints(bitx(p, keep=1)) == [0, 4, 4, 4, 4, 4]  # sqrt(5) * 4 > 8
    p = ints_planes([8, 4, 4, 4, 4])
    assert as_ints(bitx(p, keep=1)) == [8, 0, 0, 0, 0]  # 4 * sqrt(4) == 8: tie, higher plane wins
    assert as_ints(bitx(ints_planes([8, 4, 4, 4]), keep=1, score="l1")) == [0, 4, 4, 4]


def test_bitwave_worked_example():
    assert as_ints(bitwave(ints_planes([5, -3, 12, 1], group=32), k=4)) == [4, -2, 12, 0]


def test_bbs_rounded_averaging_examples():
    p = ints_planes([100, -90, 45, 70], "int8tc", 32)
    assert as_ints(bbs(p, k=2, beta=0)) == [101, -91, 45, 69]
    p = ints_planes([13, -57, 20, -11], "int8tc", 32)
    assert as_ints(bbs(p, k=4, beta=0)) == [13, -59, 21, -11]


def test_bbs_zero_point_example_and_tie():
    w = [-7, 1, -20, 81]
    p = ints_planes(w, "int8tc", 32)
    assert as_ints(bbs(p, k=4, mode="zeropoint", beta=0)) == [-2, -2, -18, 78]  # code default: 5-bit c
    # several shift constants reach the minimum error (c = -14, the paper's, and c = 2); same weights
    errs = {c: ref_zero_point_one(w, 8, 4, c) for c in range(-16, 16)}
    best = min(e for e, _ in errs.values())
    tied = [c for c, (e, _) in errs.items() if e == best]
    assert len(tied) >= 2 and -14 in tied
    assert all(errs[c][1] == [-2, -2, -18, 78] for c in tied)
    # the paper's 6-bit constant range finds a better shift for this group
    six = as_ints(bbs(p, k=4, mode="zeropoint", beta=0, const_bits=6))
    assert six == ref_zero_point(w, 8, 4, 6)
    assert sum((a - b) ** 2 for a, b in zip(six, w)) < best


def test_bitlet_emulation_worked_example():
    out = bitlet_matmul(np.array([[2.0, 1.0]], np.float32), np.array([[1.5, 0.375]], np.float32),
                        np.array([0]), np.array([2]))
    assert out[0, 0] == 3.375


# ---- independent references of the reference-code rules ---------------------------------------------------
def sm_bits(v, w):
    """sign-magnitude columns, column 0 = sign, 1..w-1 magnitude MSB first (as bin_int_convert.py)."""
    v = max(v, -(2 ** (w - 1)) + 1)
    m = abs(v)
    return [1 if v < 0 else 0] + [(m >> (w - 1 - i)) & 1 for i in range(1, w)]


def sm_int(bits, w):
    m = sum(b << (w - 1 - i) for i, b in enumerate(bits) if i)
    return -m if bits[0] else m


def ref_bitflip(group, w, k):
    cols = [sm_bits(v, w) for v in group]
    zero = [all(c[i] == 0 for c in cols) for i in range(w)]
    pu = w - k
    for i in range(1, w):
        if pu > i and zero[i]:
            pu += 1
    tu = 1
    for i in range(1, w):
        if pu > i and zero[i]:
            tu = i + 1
    if pu >= w or tu >= pu:
        return list(group) if all(v != -(2 ** (w - 1)) for v in group) else [sm_int(c, w) for c in cols]
    out = []
    for c in cols:
        val = sum(b << (w - 1 - i) for i, b in enumerate(c) if i >= tu)
        best, err = 0, None
        for n in range(2 ** (pu - tu)):
            cand = n * 2 ** (w - pu)
            e = (cand - val) ** 2
            if err is None or e < err:
                best, err = cand, e
        nb = c[:tu] + [(best >> (w - 1 - i)) & 1 for i in range(tu, w)]
        out.append(sm_int(nb, w))
    return out


def tc_bits(v, w):
    u = v % (1 << w)
    return [(u >> (w - 1 - i)) & 1 for i in range(w)]  # column 0 = MSB


def tc_int(bits, w):
    u = sum(b << (w - 1 - i) for i, b in enumerate(bits))
    return u - (1 << w) if bits[0] else u


def ref_round_avg(group, w, k):
    cols = [tc_bits(v, w) for v in group]
    pu = w - k
    eq = True
    for i in range(1, w - 4):
        eq = eq and all(c[i] == c[0] for c in cols)
        if eq:
            pu += 1
    if pu >= w:
        return list(group)
    lows = [sum(b << (w - 1 - i) for i, b in enumerate(c) if i >= pu) for c in cols]
    mean = round(sum(lows) / len(lows))  # Python's round is half to even, as torch.round
    return [tc_int(c[:pu] + [(mean >> (w - 1 - i)) & 1 for i in range(pu, w)], w) for c in cols]


def ref_zero_point_one(group, w, k, c):
    vmax = 2 ** (w - 1) - 1
    shifted = [min(max(v + c, -vmax), vmax) for v in group]
    cols = [sm_bits(v, w) for v in shifted]
    pu, tu, lead = w - k, 1, True
    for i in range(1, w):
        lead = lead and all(col[i] == 0 for col in cols)
        if lead:
            pu += 1
            tu += 1
    new = []
    for col in cols:
        if pu < w and tu < pu:
            val = sum(b << (w - 1 - i) for i, b in enumerate(col) if i >= tu)
            best, err = 0, None
            for n in range(2 ** (pu - tu)):
                cand = n * 2 ** (w - pu)
                if err is None or (cand - val) ** 2 < err:
                    best, err = cand, (cand - val) ** 2
            col = col[:tu] + [(best >> (w - 1 - i)) & 1 for i in range(tu, w)]
        new.append(sm_int(col, w) - c)
    return sum((a - b) ** 2 for a, b in zip(new, group)), new


def ref_zero_point(group, w, k, cb):
    best = None
    for c in range(-(1 << (cb - 1)), 1 << (cb - 1)):
        e, new = ref_zero_point_one(group, w, k, c)
        if best is None or e < best[0]:
            best = (e, new)
    return best[1]


small_ints = st.integers(-127, 127) | st.integers(-9, 9)


@given(st.lists(st.lists(small_ints, min_size=1, max_size=40), min_size=1, max_size=3), st.integers(1, 6),
       st.sampled_from([8, 16, 32]))
def test_bitwave_matches_reference_code_rule(rows, k, group):
    for r in rows:
        got = as_ints(bitwave(ints_planes(r, "int8", group), k=k))
        want = [v for j in range(0, len(r), group) for v in ref_bitflip(r[j:j + group], 8, k)]
        assert got == want


@given(st.lists(small_ints, min_size=1, max_size=40), st.integers(1, 7), st.sampled_from([8, 32]))
def test_bbs_rounded_matches_reference_code_rule(r, k, group):
    got = as_ints(bbs(ints_planes(r, "int8tc", group), k=k, beta=0))
    want = [v for j in range(0, len(r), group) for v in ref_round_avg(r[j:j + group], 8, k)]
    assert got == want


@given(st.lists(small_ints, min_size=1, max_size=20), st.integers(1, 6), st.sampled_from([3, 5]))
def test_bbs_zeropoint_matches_reference_code_rule(r, k, cb):
    got = as_ints(bbs(ints_planes(r, "int8tc", 16), k=k, mode="zeropoint", beta=0, const_bits=cb))
    want = [v for j in range(0, len(r), 16) for v in ref_zero_point(r[j:j + 16], 8, k, cb)]
    assert got == want


def ref_bitx_group(mags, keep, nbits):
    scores = []
    for s in range(nbits):
        ones = sum((m >> s) & 1 for m in mags)
        if ones:
            scores.append((2 ** s * math.sqrt(ones), s))
    kept = {s for _, s in sorted(scores, reverse=True)[:keep]}
    mask = sum(1 << s for s in kept)
    return [m & mask for m in mags]


@given(st.lists(st.integers(-32767, 32767), min_size=1, max_size=100), st.integers(1, 16))
def test_bitx_matches_reference_ranking(vals, keep):
    p = ints_planes(vals, "int16")
    got = as_ints(bitx(p, keep=keep))
    want = []
    for j in range(0, len(vals), 64):
        g = vals[j:j + 64]
        kept = ref_bitx_group([abs(v) for v in g], keep, 15)
        want += [-m if v < 0 else m for v, m in zip(g, kept)]
    assert got == want


# ---- properties -------------------------------------------------------------------------------------------
floats = hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 90)),
                    elements=st.floats(-4, 4, width=32) | st.sampled_from([0.0, 1e-30, -2.5e-39]))
SUBSET = [("bitx", dict(keep=3)), ("bitx", dict(keep=5, score="l1")), ("bitx", dict(keep=2, score="msb")),
          ("bitxpro", dict(keep=4, tile=2)), ("bitxpro", dict(keep=6, cap=3, drop=True)),
          ("truncate", dict(keep=5)), ("truncate", dict(keep=3, align="none"))]
FNS = {"bitx": bitx, "bitxpro": bitxpro, "truncate": truncate}


@pytest.mark.parametrize("name,kw", SUBSET)
@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8", "int16"])
@given(x=floats, group=st.sampled_from([8, 33, 64]))
def test_pruned_bits_are_a_subset_and_idempotent(name, kw, fmt, x, group):
    align = kw.get("align", "weight")
    p = pack_for(x, formats.get(fmt), group, align)
    q = FNS[name](p, **kw)
    assert np.all(q.words & ~p.words == 0)
    assert np.array_equal(q.signs, p.signs)
    assert np.array_equal(FNS[name](q, **kw).words, q.words)  # idempotent on the planes


@pytest.mark.parametrize("name", ["bitx", "bitxpro", "truncate"])
@given(x=floats)
def test_keep_all_planes_is_alignment_only(name, x):
    p = pack(x, "fp32", 64, "weight")
    q = FNS[name](p, keep=24)
    assert np.array_equal(q.words, p.words)
    w, _ = apply_tensor(x, [parse_spec(f"{name}:keep=24")])
    assert np.array_equal(w, pack(x, "fp32", 64, "weight").values().astype(np.float32))


@given(x=floats, k=st.integers(1, 6), group=st.sampled_from([4, 16, 32]))
def test_bitwave_makes_k_zero_columns(x, k, group):
    p = pack_for(x, formats.get("int8"), group, "none")
    q = bitwave(p, k=k)
    zero_cols = (q.words & q.valid[:, None]) == 0
    assert np.all(zero_cols.sum(axis=1) >= k)
    assert np.array_equal(bitwave(q, k=k).words, q.words)


@given(x=floats, k=st.integers(1, 4), group=st.sampled_from([4, 32]))
def test_bbs_rounded_makes_uniform_low_planes(x, k, group):
    p = pack_for(x, formats.get("int8tc"), group, "none")
    q = bbs(p, k=k, beta=0)
    v = q.valid[:, None]
    w = q.words & v
    uniform = (w == 0) | (w == v)
    sign = w[:, 7:8]
    redundant = np.cumprod([(w[:, 7 - i] == sign[:, 0]) for i in range(1, 4)], axis=0).sum(axis=0)
    for g in range(q.n_groups):
        kk = k - redundant[g]
        assert all(uniform[g, s] for s in range(max(kk, 0)))
    assert np.array_equal(bbs(q, k=k, beta=0).words, q.words)


@given(x=floats, k=st.integers(1, 6))
def test_bbs_zeropoint_groups_share_low_bits(x, k):
    p = pack_for(x, formats.get("int8tc"), 16, "none")
    q = bbs(p, k=k, mode="zeropoint", beta=0)
    vals = ints_of(q)
    for g in range(q.n_groups):
        v = vals[g, : int(np.bitwise_count(q.valid[g]))]
        # some shift c makes every W'' + c a multiple of 2^(k - leading zero columns): uniform low planes
        ok = False
        for c in range(-16, 16):
            s_ = v + c
            if np.abs(s_).max() > 127:
                continue
            lead = 7 - int(np.abs(s_).max()).bit_length()
            step = 1 << max(k - lead, 0)
            ok |= bool(np.all(s_ % step == 0))
        assert ok
    assert np.abs(vals).max() <= 127 + 16


def test_bbs_sensitive_channels():
    s = np.array([1.0, 5.0, 3.0, 2.0])
    assert list(sensitive_channels(s, 0.25, channels=1)) == [False, True, False, False]
    assert list(sensitive_channels(s, 0.25, channels=2)) == [False, True, True, False]
    assert not sensitive_channels(s, 0.0).any()
    # beta keeps whole channels untouched
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    w[1] *= 10
    out, st_ = apply_tensor(w, [parse_spec("bbs:k=4,beta=0.25,channels=1")])
    q = pack_for(w, formats.get("int8tc"), 32, "none")
    assert np.array_equal(out[1], q.values()[1].astype(np.float32))
    assert not np.array_equal(out[0], q.values()[0].astype(np.float32))


def test_effectual_bits():
    assert effectual_bits(ints_planes([97, 19, 65, 7])) == 3 + 3 + 2 + 3  # ones of the magnitudes
    # two's complement: min(ones, zeros) per plane; planes repeating the sign plane are free
    assert effectual_bits(ints_planes([1, -1, 2], "int8tc")) == 1 + 0 + 1 + 1
    assert effectual_bits(ints_planes([1, -1, 2], "int10tc")) == 3  # wider: only more free planes


def test_changed_bits_counts_xor():
    p = ints_planes([97, 19, 65, 7])
    q = bitx(p, keep=3)
    # 97->96 (1 bit), 19->16 (2), 65->64 (1), 7->0 (3)
    assert changed_bits(p, q) == 7


# ---- spec parsing and the helper ---------------------------------------------------------------------------
def test_registry_metadata():
    assert set(REGISTRY) == {"bitx", "bitxpro", "truncate", "quantize", "bitwave", "bbs", "bitlet"}
    for m in REGISTRY.values():
        assert m.confidence in CONFIDENCE and m.source and m.description
        for p in m.params:
            assert p.doc
        assert m.fn is not None or m.kind == "forward"


def test_parse_spec():
    s = parse_spec("bitx:keep=5,score=l1")
    assert s.params["keep"] == 5 and s.params["score"] == "l1" and s.params["format"] == "fp32"
    assert parse_spec("BITX").params["keep"] == 6
    assert parse_spec("bitx:keep=5", {"format": "int16", "group": 32}).params == {
        "keep": 5, "score": "l2", "format": "int16", "group": 32, "layout": "auto"}
    assert parse_spec("bitx:format=bf16", {"format": "int16"}).params["format"] == "bf16"
    assert parse_spec("bitlet:prune=0xFF0000").params["prune"] == 0xFF0000
    assert parse_spec("bitxpro:drop=true").params["drop"] is True
    assert parse_spec("quantize:bits=4", {"format": "int16"}).params == {"bits": 4, "per_channel": True}
    for bad in ["nosuch", "bitx:keep", "bitx:keep=0", "bitx:keep=five", "bitx:score=l3", "bitx:kep=2",
                "bitx:keep=2,keep=3", "bitx:format=int8tc", "bitx:format=fp64", "bbs:format=fp32",
                "bitwave:k=7", "bbs:k=7,mode=zeropoint", "bbs:mode=avg", "bitlet:prune=0",
                "bitlet:prune=0x1000000", "bitxpro:drop=maybe",
                "bitx:group=65", ":keep=2", "bbs:beta=1.5", "bitx:keep=nan"]:
        with pytest.raises(UserError):
            parse_spec(bad)
    with pytest.raises(UserError):
        parse_specs(["bitlet", "bitx"])
    assert [s.name for s in parse_specs(["bbs:k=2", "bitx:keep=5", "bitlet"])] == ["bbs", "bitx", "bitlet"]


class L:
    def __init__(self, name, w, act=None, groups=1):
        self.name, self.weight, self.activation, self.groups, self.kind = name, w, act, groups, "conv"


def test_apply_model_composes_and_counts():
    rng = np.random.default_rng(1)
    layers = [L("a", rng.standard_normal((8, 16, 3, 3)).astype(np.float32)),
              L("b", rng.standard_normal((10, 40)).astype(np.float32))]
    steps = parse_specs(["bbs:k=2,beta=0", "bitx:keep=5,format=int8"])
    res = apply_model(layers, steps)
    for layer, r in zip(layers, res):
        w1, s1 = apply_tensor(layer.weight, steps[:1])
        w2, s2 = apply_tensor(w1, steps[1:])
        assert np.array_equal(r.weight, w2)
        assert r.changed_bits == s1[0].changed_bits + s2[0].changed_bits > 0
        assert r.weight.shape == layer.weight.shape
    with pytest.raises(UserError):
        apply_model(layers, parse_specs(["bitlet"]))
    with pytest.raises(UserError):  # exact scoring without activations
        apply_model(layers, parse_specs(["bitx:score=exact"]))


def test_bbs_beta_ranks_channels_model_wide():
    rng = np.random.default_rng(2)
    small = L("small", (rng.standard_normal((32, 64)) * 0.01).astype(np.float32))
    big = L("big", rng.standard_normal((32, 64)).astype(np.float32))
    res = apply_model([small, big], parse_specs(["bbs:k=4,beta=0.5,channels=32"]))
    assert not np.array_equal(res[0].weight, small.weight)  # all channels of the small layer are pruned
    q = pack_for(big.weight, formats.get("int8tc"), 32, "none").values().astype(np.float32)
    assert np.array_equal(res[1].weight, q)  # the 32 channels with the largest scales are all in 'big'


def test_exact_score_uses_activations():
    p = ints_planes([8, 4, 4, 4, 4, 4])
    acts = np.zeros((1, 64))
    acts[0, :6] = [100.0, 0.01, 0.01, 0.01, 0.01, 0.01]
    assert as_ints(bitx(p, keep=1, score="exact", acts=acts)) == [8, 0, 0, 0, 0, 0]
    assert as_ints(bitx(p, keep=1)) == [0, 4, 4, 4, 4, 4]
    # the model helper feeds the mean |activation| per input channel (here a conv with 2 groups)
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    a = rng.standard_normal((5, 6, 4, 4)).astype(np.float32)
    layer = L("c", w, act=a, groups=2)
    (r,) = apply_model([layer], parse_specs(["bitx:keep=2,score=exact"]))
    mean = np.abs(a).mean(axis=(0, 2, 3))
    am = np.stack([mean[0:3], mean[0:3], mean[3:6], mean[3:6]])[:, :, None, None]
    want, _ = apply_tensor(w, parse_specs(["bitx:keep=2,score=exact"]), act_mean=am)
    assert np.array_equal(r.weight, want)


# ---- the Bitlet forward pass ------------------------------------------------------------------------------
def pe_group_sum(w, a, starts, lens, prune, strict):
    acc = np.float32(-0.0)
    for s0, n in zip(starts, lens):
        r = pe_dot_batch(f32_words(w[s0:s0 + n])[None], f32_words(a[s0:s0 + n])[None], prune=prune,
                         strict_ieee=strict)
        acc = np.float32(acc + r.out_word.view(np.float32)[0])
    return acc


@given(st.integers(1, 150), st.integers(1, 5), st.integers(1, 4), st.sampled_from([0xFFFFFF, 0xFF0000, 0x0F0F0F]),
       st.booleans(), st.sampled_from(["outputs", "columns"]), st.data())
def test_bitlet_matmul_equals_pe_dot(k, o, p, prune, strict, kernel, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32)))
    x = (rng.standard_normal((p, k)) * np.exp2(rng.integers(-130, 20, (p, k)))).astype(np.float32)
    x[rng.random((p, k)) < 0.3] = 0
    w = (rng.standard_normal((o, k)) * np.exp2(rng.integers(-20, 3, (o, k)))).astype(np.float32)
    w[rng.random((o, k)) < 0.1] = 0
    starts = np.arange(0, k, 64)
    lens = np.minimum(64, k - starts)
    out = bitlet_matmul(x, w, starts, lens, prune=prune, strict_ieee=strict, kernel=kernel)
    for i in range(p):
        for j in range(o):
            assert out[i, j].view(np.uint32) == pe_group_sum(w[j], x[i], starts, lens, prune, strict).view(np.uint32)


@pytest.mark.parametrize("grouping", ["tap", "flat", "auto"])
@pytest.mark.parametrize("kind", ["conv", "depthwise", "depthwise_tiny", "pointwise", "strided1x1", "linear"])
def test_bitlet_layers_equal_pe_dot(kind, grouping):
    torch.manual_seed(0)
    if kind == "conv":
        mod, x = torch.nn.Conv2d(5, 3, 3, stride=2, padding=1), torch.randn(2, 5, 7, 6)
    elif kind == "depthwise":
        mod, x = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4), torch.randn(2, 4, 5, 5)
    elif kind == "depthwise_tiny":  # strided, with subnormal activations and products below binary32's range
        mod = torch.nn.Conv2d(3, 3, 5, stride=2, padding=2, groups=3, bias=False)
        x = torch.randn(2, 3, 9, 8) * torch.exp2(torch.randint(-150, 2, (2, 3, 9, 8)).float())
        x[:, 0] = torch.randn(2, 9, 8) * 2.0 ** -127  # a channel of only tiny values: nothing else to hide them
    elif kind == "pointwise":
        mod, x = torch.nn.Conv2d(70, 3, 1, bias=False), torch.relu(torch.randn(1, 70, 30, 30))
    elif kind == "strided1x1":
        mod, x = torch.nn.Conv2d(6, 4, 1, stride=2), torch.randn(1, 6, 5, 5)
    else:
        mod, x = torch.nn.Linear(130, 4), torch.randn(3, 2, 130)
    prune = 0xFFF000
    with emulate(prune=prune, grouping=grouping) as emu:
        y = mod(x).detach().numpy()
    assert emu.pairs > 0
    with torch.no_grad():
        ref_fp = mod(x).numpy()
    assert np.allclose(y, ref_fp, rtol=1e-2, atol=1e-2)  # a sanity bound; the exact check follows
    w = mod.weight.detach().numpy()
    has_bias = mod.bias is not None
    b = mod.bias.detach().numpy() if has_bias else np.zeros(w.shape[0], np.float32)
    fin = lambda v, o: np.float32(v + b[o]) if has_bias else v  # noqa: E731
    if kind == "linear":
        xs = x.numpy().reshape(-1, 130)
        st_, ln = np.arange(0, 130, 64), np.minimum(64, 130 - np.arange(0, 130, 64))
        for i in range(xs.shape[0]):
            for o in range(4):
                r = fin(pe_group_sum(w[o], xs[i], st_, ln, prune, False), o)
                assert y.reshape(-1, 4)[i, o].view(np.uint32) == r.view(np.uint32)
        return
    stride, pad, groups = mod.stride, mod.padding, mod.groups
    cols = torch.nn.functional.unfold(x, mod.kernel_size, 1, pad, stride)  # [N, C*T, L]
    n, c = x.shape[:2]
    cg, taps = w.shape[1], w.shape[2] * w.shape[3]
    og = w.shape[0] // groups
    cols = cols.reshape(n, c, taps, -1).numpy()
    if grouping == "auto":  # the Bitlet design's lanes (bitsieve.lanes, layout auto), group by group in order
        from bitsieve import lanes

        lay = lanes.layout(w.shape, 64, "auto")
        for ni in range(n):
            for o in range(w.shape[0]):
                g0 = (o // og) * cg
                for l in range(0, cols.shape[-1], 7):
                    acc = np.float32(-0.0)
                    for ch, tp, ok in zip(lay.lane_ch, lay.lane_tap, lay.valid):
                        wv = w[o].reshape(cg, taps)[ch[ok], tp[ok]]
                        av = cols[ni, g0 + ch[ok], tp[ok], l]
                        acc = np.float32(acc + pe_group_sum(wv, av, [0], [len(wv)], prune, False))
                    assert y[ni, o].reshape(-1)[l].view(np.uint32) == fin(acc, o).view(np.uint32), (ni, o, l)
        return
    for ni in range(n):
        for o in range(w.shape[0]):
            g0 = (o // og) * cg
            wv = w[o].transpose(1, 2, 0).reshape(-1)  # (tap, channel)
            for l in range(0, cols.shape[-1], 7):
                av = cols[ni, g0:g0 + cg, :, l].T.reshape(-1)
                if grouping == "flat":
                    st_ = np.arange(0, taps * cg, 64)
                    ln = np.minimum(64, taps * cg - st_)
                else:
                    st_ = (np.arange(taps)[:, None] * cg + np.arange(0, cg, 64)[None]).reshape(-1)
                    ln = np.tile(np.minimum(64, cg - np.arange(0, cg, 64)), taps)
                r = fin(pe_group_sum(wv, av, st_, ln, prune, False), o)
                assert y[ni, o].reshape(-1)[l].view(np.uint32) == r.view(np.uint32), (ni, o, l)


def test_bitlet_emulation_keeps_other_ops_and_restores():
    mod = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(4, 8)
    with torch.no_grad():
        ref = mod(x)
    with emulate(keep=2):
        coarse = mod(x)
    with torch.no_grad():
        assert torch.equal(mod(x), ref)  # the mode is gone after the block
    assert not torch.allclose(coarse, ref, atol=1e-3)
    with pytest.raises(UserError):
        with emulate(group=0):
            pass


def test_bitlet_emulator_cache_never_serves_a_freed_tensor():
    """Weight decompositions are cached per tensor: a temporary freed after use must not hand its cached
    weights to a later tensor that CPython gives the same id (allocations of one size reuse memory)."""
    import gc

    from bitsieve.methods.bitlet_emulate import Emulator

    em = Emulator(group=8)
    x = torch.randn(3, 16)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(12):
        w = torch.randn(4, 16, generator=gen)
        seen.add(id(w))
        got = em.linear(x, w)
        want = Emulator(group=8).linear(x, w)  # a fresh cache
        assert torch.equal(got, want)
        del w
        gc.collect()
    assert len(em._cache) <= 1  # entries of freed tensors are dropped
    assert len(seen) < 12  # ids were reused, so the check above exercised the collision


def test_bbs_beta_does_not_round_by_default():
    """The authors' pruner (BitSim software/Pruner/channel.py) keeps the top share without rounding each layer's
    count to the 32 channels processed in parallel; rounding stays a parameter."""
    s = np.arange(100, dtype=float)
    assert parse_spec("bbs").params["channels"] == 1
    assert sensitive_channels(s, 0.1).sum() == 10
    assert sensitive_channels(s, 0.1, channels=32).sum() == 32


def test_methods_and_help_do_not_import_torch():
    """Listing methods (every accelerator as a design, the training methods) and --help stay torch-free."""
    code = ("import json, sys, io, contextlib; from bitsieve.cli import main; buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf): rc = main(['methods', '--json'])\n"
            "rows = json.loads(buf.getvalue()); rc += main(['train', '--help']) + main(['simulate', '--help'])\n"
            "print(len(rows), {r['kind'] for r in rows} == {'method', 'training', 'accelerator'}, "
            "'torch' in sys.modules); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    n, kinds, torch_loaded = r.stdout.split()[-3:]
    assert int(n) > 20 and kinds == "True" and torch_loaded == "False"
