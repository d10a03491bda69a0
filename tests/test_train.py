"""Training-time methods: BitPruner's word-level bit operations against plain per-value code, SCFLP's skipped-MAC
counts against plain loops, and short real runs on lenet-mnist (MNIST subsets) that must show the real effects:
bit sparsity rises, cycles on the target fall, a killed run resumes without repeating finished rounds and gives
the numbers of an uninterrupted run."""
import json

import numpy as np
import pytest
import torch

from bitsieve import formats, planes
from bitsieve.cli import main
from bitsieve.train import bits as B
from bitsieve.train import bitpruner as bp
from bitsieve.train import scflp as sc
from bitsieve.train.loop import Checkpoints

FMT8 = formats.get("int8")


def pack_ints(q, group):
    return planes.pack_raw(FMT8.encode(q), FMT8, group)


def naive_top_k(m: int, k: int, rounding: bool, nbits: int = 7) -> int:
    """Keep the k most significant ones of m; with rounding the nearest value with <= k ones (ties up)."""
    pos = [s for s in range(nbits - 1, -1, -1) if m >> s & 1]
    kept = sum(1 << s for s in pos[:k])
    if rounding and len(pos) > k > 0:
        p = pos[k - 1]
        if m >> (p - 1) & 1 and kept + (1 << p) < (1 << nbits):
            kept += 1 << p
    return kept


# ---- bit operations on packed planes ----------------------------------------------------------------------
@pytest.mark.parametrize("group", [1, 7, 64])
@pytest.mark.parametrize("rounding", [False, True])
def test_keep_top_k_matches_per_value_code(group, rounding):
    rng = np.random.default_rng(group)
    q = rng.integers(-127, 128, size=(5, 3, 2, 40))
    p = pack_ints(q, group)
    for k in range(8):
        got = p.with_words(B.keep_top_k(p.words, k, rounding)).unpack_raw().astype(np.int64)
        mags, signs = got & 127, got >> 7
        want = np.vectorize(lambda m: naive_top_k(int(m), k, rounding))(np.abs(q))
        assert (mags == want).all()
        assert ((signs == 1) == (q < 0))[want != 0].all()  # signs kept


def test_rounding_gives_the_nearest_k_term_value():
    for m in range(128):
        for k in (1, 2, 3):
            r = naive_top_k(m, k, True)
            cands = [c for c in range(128) if bin(c).count("1") <= k]
            assert abs(r - m) == min(abs(c - m) for c in cands)
            p = pack_ints(np.array([[m, 0]]), 2)
            assert p.with_words(B.keep_top_k(p.words, k, True)).magnitudes()[0, 0] == r


def test_per_group_budget_and_weight_cap():
    rng = np.random.default_rng(3)
    q = rng.integers(-127, 128, size=(6, 48))
    p = pack_ints(q, 16)
    k = rng.integers(0, 8, size=p.n_groups)
    got = p.with_words(B.cap_weights(p.words, k)).magnitudes()
    mags = p.magnitudes()
    for n in range(p.n_groups):
        assert [naive_top_k(int(m), int(k[n]), False) for m in mags[n]] == got[n].tolist()


def naive_cap_planes(mags: list[int], cap: int, nbits: int = 7) -> list[int]:
    """Per plane LSB first: while too many ones, clear the bit of the lane with the most essential bits
    (lowest lane first among equals)."""
    mags = list(mags)
    for s in range(nbits):
        while sum(m >> s & 1 for m in mags) > cap:
            lanes = [g for g, m in enumerate(mags) if m >> s & 1]
            g = max(lanes, key=lambda g: (bin(mags[g]).count("1"), -g))
            mags[g] &= ~(1 << s)
    return mags


def test_plane_cap_removes_bits_of_the_heaviest_lanes_first():
    rng = np.random.default_rng(4)
    q = rng.integers(-127, 128, size=(4, 64))
    p = pack_ints(q, 16)
    for cap in (0, 2, 5, 9):
        got = p.with_words(B.cap_planes(p.words, cap)).magnitudes()
        for n in range(p.n_groups):
            assert got[n].tolist() == naive_cap_planes(p.magnitudes()[n].tolist(), cap)


def test_column_cap_and_auto_caps():
    rng = np.random.default_rng(5)
    q, _ = FMT8.quantize(rng.normal(size=(8, 64)), axis=0)  # weight-like: high planes sparse
    p = pack_ints(q, 32)
    w = B.cap_columns(p.words, 3)
    assert ((np.bitwise_count(w) > 0).sum(axis=1) <= 3).all() and not (w & ~p.words).any()
    l1 = p.magnitudes().sum(axis=1).astype(float)
    for style in ("weight", "plane", "column"):
        b = B.balance(p.words, style, drop=0.1)
        assert not (b & ~p.words).any()  # only removes bits
        removed = l1 - p.with_words(b).magnitudes().sum(axis=1)  # value removed per group
        assert (removed <= 0.1 * l1 + 1e-9).all() and removed.sum() > 0, style
        assert (B.balance(p.words, style, drop=0.0) == p.words).all()  # no budget: nothing removed
    # the weight cap really lowers the heaviest lane of some groups
    b = B.balance(p.words, "weight", drop=0.1)
    heavy = lambda w: np.bitwise_count(p.with_words(w).magnitudes()).max(axis=1)  # noqa: E731
    assert (heavy(b) <= heavy(p.words)).all() and (heavy(b) < heavy(p.words)).any()


# ---- SCFLP: skipped MACs against plain loops --------------------------------------------------------------
def loop_counts(x, w, dy, stride, pad, removed, wmask):
    """Every MAC (n, o, p, i, tap) visited one by one."""
    N, I, H, W = x.shape
    O, _, KH, KW = w.shape
    P1, P2 = (H + 2 * pad - KH) // stride + 1, (W + 2 * pad - KW) // stride + 1
    r = {k: np.zeros(O) for k in ("fp.input", "fp.weight", "fp.output", "wg.input", "wg.error", "wg.output")}
    r.update({k: np.zeros(I) for k in ("bp.input", "bp.weight", "bp.output")})
    dense = 0
    for n in range(N):
        for o in range(O):
            for p1 in range(P1):
                for p2 in range(P2):
                    for i in range(I):
                        for a in range(KH):
                            for b in range(KW):
                                dense += 1
                                yy, xx = p1 * stride + a - pad, p2 * stride + b - pad
                                xz = not (0 <= yy < H and 0 <= xx < W) or x[n, i, yy, xx] == 0
                                if xz:
                                    r["fp.input"][o] += 1
                                    r["wg.input"][o] += 1
                                    r["bp.output"][i] += 1
                                if w[o, i, a, b] == 0:
                                    r["fp.weight"][o] += 1
                                    r["bp.weight"][i] += 1
                                if removed[o]:
                                    r["fp.output"][o] += 1
                                if dy[n, o, p1, p2] == 0:
                                    r["bp.input"][i] += 1
                                    r["wg.error"][o] += 1
                                if wmask[o, i, a, b] == 0:
                                    r["wg.output"][o] += 1
    return r, dense


@pytest.mark.parametrize("shape", [(2, 3, 4, 6, 3, 2, 1), (1, 2, 5, 5, 2, 1, 0), (2, 4, 3, 7, 3, 1, 2)])
def test_skip_counts_equal_a_loop_count(shape):
    N, I, O, H, K, s, pad = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=(N, I, H, H))
    x[rng.random(x.shape) < 0.5] = 0
    wmask = (rng.random((O, I, K, K)) > 0.4).astype(float)
    w = rng.normal(size=(O, I, K, K)) * wmask
    P = (H + 2 * pad - K) // s + 1
    dy = rng.normal(size=(N, O, P, P))
    dy[rng.random(dy.shape) < 0.6] = 0
    removed = rng.random(O) < 0.3
    c = sc.skip_counts(torch.tensor(x), torch.tensor(w), torch.tensor(dy), s, pad, torch.tensor(removed),
                       torch.tensor(wmask))
    want, dense = loop_counts(x, w, dy, s, pad, removed, wmask)
    for key, v in want.items():
        assert np.array_equal(c[tuple(key.split("."))], v), key
    for phase in sc.PHASES:
        assert c["dense"][phase].sum() == dense


def test_skip_counts_of_a_linear_layer():
    rng = np.random.default_rng(9)
    x = np.maximum(rng.normal(size=(5, 7)), 0)
    w = rng.normal(size=(3, 7)) * (rng.random((3, 7)) > 0.5)
    dy = np.maximum(rng.normal(size=(5, 3)), 0)
    c = sc.skip_counts(torch.tensor(x), torch.tensor(w), torch.tensor(dy))
    want, _ = loop_counts(x[:, :, None, None], w[:, :, None, None], dy[:, :, None, None], 1, 0, np.zeros(3, bool),
                          (w != 0)[:, :, None, None])
    for key, v in want.items():
        assert np.array_equal(c[tuple(key.split("."))], v), key


def test_counter_hooks_count_the_real_training_tensors():
    """The hooks of a real LeNet training step give the same counts as skip_counts on tensors captured apart."""
    from bitsieve.zoo import lenet

    torch.manual_seed(0)
    net = lenet.LeNet().train()
    with torch.no_grad():
        net.conv2.weight[net.conv2.weight.abs() < 0.05] = 0
    x = torch.randn(4, 1, 28, 28)
    y = torch.tensor([1, 2, 3, 4])
    counter = sc.SkipCounter(net, lanes=4, balance=False)
    counter.step(1)
    seen = {}
    h1 = net.conv2.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach(), out=o))
    loss = torch.nn.functional.cross_entropy(net(x), y)
    seen["out"].retain_grad()
    loss.backward()
    h1.remove()
    counter.remove()
    c = sc.skip_counts(seen["x"], net.conv2.weight, seen["out"].grad, 1, 0)
    t = counter.totals["conv2"]
    for p in sc.PHASES:
        for o in sc.OPERANDS[p]:
            assert t[f"{p}.{o}.skipped_macs"] == c[(p, o)].sum()
    assert t["dense_macs"]["fp"] == 4 * 16 * 10 * 10 * 6 * 25
    assert counter.totals["conv1"]["dense_macs"]["bp"] == 0  # no dX for the first layer
    assert t["fp.weight.skipped_macs"] > 0 and t["bp.input.skipped_macs"] > 0  # ReLU/pool zeros in dY


def test_lane_model_and_balancer():
    work = np.array([8.0, 1, 1, 1, 1, 4])
    assert sc.lane_time(work, sc.assign_lanes(work, 2, False), 2) == 10  # 8+1+1 | 1+1+4
    lanes = sc.assign_lanes(work, 2, True)
    assert sc.lane_time(work, lanes, 2) == 8  # 8 | 4+1+1+1+1


def test_clp_removes_the_weaker_of_two_similar_filters_and_counts_work():
    lin = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 2))
    with torch.no_grad():
        lin[0].weight.copy_(torch.eye(5, 6))
        lin[0].weight[3] = 0.5 * lin[0].weight[1]  # channel 3 = weaker copy of channel 1
    cfg = sc.SCFLPConfig(clp="exhaustive", sparsity=0.1, ramp_start=0, ramp_end=0)
    pr = sc.Pruner(lin, cfg, total_iterations=10)
    pr.prune(5)
    assert pr.removed["0"].tolist() == [False, False, False, True, False]
    assert float(lin[0].weight[3].detach().abs().sum()) == 0 and float(lin[0].bias[3].detach()) == 0
    assert pr.sim["computed"] == pr.sim["exhaustive"] == 10  # 5 channels: 10 pairs
    cfg = sc.SCFLPConfig(clp="stochastic", sample=0.2, sparsity=0.1, ramp_start=0, ramp_end=0)
    pr = sc.Pruner(torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.Linear(40, 2)), cfg, 10)
    pr.prune(5)
    assert pr.sim["computed"] == 8 * 7 // 2 and pr.sim["exhaustive"] == 40 * 39 // 2
    for name, m in pr.layers:  # FLP reached the target in every layer
        assert abs(float((m.weight == 0).double().mean()) - 0.1) < 0.02


def test_checkpoints_refuse_to_mix_runs(tmp_path):
    Checkpoints(tmp_path / "a", {"x": 1}).save("s", {"t": torch.zeros(2)}, {"v": 1})
    with pytest.raises(Exception, match="--resume"):
        Checkpoints(tmp_path / "a", {"x": 1})
    with pytest.raises(Exception, match="other settings"):
        Checkpoints(tmp_path / "a", {"x": 2}, resume=True)
    ck = Checkpoints(tmp_path / "a", {"x": 1}, resume=True)
    assert ck.done("s")["v"] == 1 and torch.equal(ck.tensors("s")["t"], torch.zeros(2))
    (tmp_path / "f").write_text("mine")
    with pytest.raises(Exception, match="is a file"):
        Checkpoints(tmp_path / "f", {"x": 1}, force=True)
    assert (tmp_path / "f").read_text() == "mine"


@pytest.mark.parametrize("args, msg", [
    (["train", "lenet-mnist", "--method", "nope"], "--method"),
    (["train", "no-such-model", "--method", "bitpruner"], "unknown built-in"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--resume"], "--resume needs --out"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--sparsity", "0.5"], "scflp option"),
    (["train", "lenet-mnist", "--method", "scflp", "--target", "bitlet"], "bitpruner option"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--target", "tpu"], "unknown target"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--set", "foo=1"], "unknown BitPrunerConfig"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--schedule", "9"], "budgets must be"),
])
def test_user_errors(args, msg, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


# ---- short real runs --------------------------------------------------------------------------------------
BP_SMALL = dict(schedule=(4, 2), magnitude_schedule=(0.5, 0.7), steps=60, lr=1e-4)
LIMITS = dict(train_limit=3000, val_size=1000, test_limit=2000, progress=False)


def _strip(r):
    """A result without what may differ between an uninterrupted and a resumed run: timings, stage lists."""
    if isinstance(r, dict):
        return {k: _strip(v) for k, v in r.items() if k not in ("stages_run", "stages_loaded", "wall_s")}
    if isinstance(r, list):
        return [_strip(v) for v in r]
    return r


@pytest.mark.slow
def test_bitpruner_short_run_kill_resume_and_repeat(tmp_path):
    full = bp.run("lenet-mnist", bp.BitPrunerConfig(**BP_SMALL), **LIMITS)
    v = {x["name"]: x for x in full["variants"]}
    # real effects: BitPruner's rounds raise bit sparsity over the non-pruned model and over each other
    rounds = v["bitpruner"]["rounds"]
    assert v["non-pruned"]["bit_sparsity"] < rounds[0]["bit_sparsity"] < rounds[-1]["bit_sparsity"]
    assert v["bitpruner"]["bit_sparsity"] > v["non-pruned"]["bit_sparsity"] + 0.1
    assert v["bitpruner"]["mean_essential_bits"] <= 2.0 + 1e-9
    assert v["bitpruner"]["accuracy"] > 95.0 and all(r["kept"] for r in rounds)
    assert v["magnitude-pruned"]["weight_sparsity"] >= 0.5
    if full["accel_available"]:  # cycles on the target model fall
        assert v["bitpruner"]["cycles"] < v["non-pruned"]["cycles"]
        assert full["speedup"]["vs_nonpruned"] > 1.2
    # killed after two finished stages, then resumed: nothing finished is recomputed, numbers identical
    with pytest.raises(KeyboardInterrupt):
        bp.run("lenet-mnist", bp.BitPrunerConfig(**BP_SMALL), out_dir=tmp_path, stop_after=2, **LIMITS)
    first = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert list(first) == ["nonpruned", "bitpruner/k4"]
    again = bp.run("lenet-mnist", bp.BitPrunerConfig(**BP_SMALL), out_dir=tmp_path, resume=True, **LIMITS)
    assert again["stages_loaded"] == ["nonpruned", "bitpruner/k4"]
    assert again["stages_run"] == ["bitpruner/k2", "magnitude/s0.5", "magnitude/s0.7"]
    assert _strip(again) == _strip(full)  # same seed -> same numbers, with or without the kill


@pytest.mark.slow
@pytest.mark.skipif(not bp.cycles_available(), reason="bitsieve.accel has no weight-serial target model yet")
@pytest.mark.parametrize("target", ["laconic", "bitlet", "bitwave"])
def test_bitpruner_lowers_cycles_on_every_target(target):
    cfg = bp.BitPrunerConfig(schedule=(3,), magnitude_schedule=(0.5,), steps=20, target=target)
    r = bp.run("lenet-mnist", cfg, **LIMITS)
    v = {x["name"]: x for x in r["variants"]}
    assert v["bitpruner"]["cycles"] < v["non-pruned"]["cycles"]


@pytest.mark.slow
def test_scflp_short_run_kill_resume(tmp_path):
    cfg = sc.SCFLPConfig(epochs=2, interval=10, sample=0.1)
    lim = dict(train_limit=3200, val_size=1000, test_limit=2000, progress=False)
    full = sc.run("lenet-mnist", cfg, **lim)
    s = full["scflp"]
    assert abs(s["weight_sparsity"] - 0.9) < 0.005
    assert full["dense"]["accuracy"] > 80 and s["accuracy"] > 25  # 100 steps from scratch: it learns
    pw = full["pruning_work"]
    assert pw["steps"] > 0 and 0.9 < pw["saving"] < 1
    zs = full["zero_skipping"]
    for p in sc.PHASES:
        d = zs["phases"][p]
        assert d["speedup_adaptive"] >= max(d[f"speedup_{pol}_only"] for pol in sc.POLICIES) - 1e-9
    assert zs["overall"]["speedup_adaptive"] > 1.5
    with pytest.raises(KeyboardInterrupt):
        sc.run("lenet-mnist", cfg, out_dir=tmp_path, stop_after=3, **lim)
    again = sc.run("lenet-mnist", cfg, out_dir=tmp_path, resume=True, **lim)
    assert again["stages_loaded"] == ["dense/epoch1", "dense/epoch2", "scflp/epoch1"]
    assert again["stages_run"] == ["scflp/epoch2"]
    assert _strip(again) == _strip(full)


@pytest.mark.slow
def test_cli_train_json(tmp_path, capsys):
    args = ["train", "lenet-mnist", "--method", "bitpruner", "--schedule", "3", "--steps", "20",
            "--set", "magnitude_schedule=0.5", "--train-limit", "1000", "--test-limit", "500", "--json",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in r["variants"]] == ["non-pruned", "magnitude-pruned", "bitpruner"]
    assert (tmp_path / "run" / "result.json").exists()
    assert main(args) == 2  # the folder holds a run: --resume or --force
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    r2 = json.loads(capsys.readouterr().out)
    assert r2["stages_run"] == [] and _strip(r2["variants"]) == _strip(r["variants"])
