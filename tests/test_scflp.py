"""SCFLP / PNPU (Kim et al.): skipped-MAC counts against plain loops, the coarse step on similar filters, and a
short real run on lenet-mnist that must survive a kill and resume."""
import numpy as np
import pytest
import torch

from bitsieve.train import scflp as sc

LIMITS = dict(train_limit=3000, val_size=1000, test_limit=2000, progress=False)

def _strip(r):
    """A result without what may differ between an uninterrupted and a resumed run: timings, stage lists."""
    if isinstance(r, dict):
        return {k: _strip(v) for k, v in r.items() if k not in ("stages_run", "stages_loaded", "wall_s")}
    if isinstance(r, list):
        return [_strip(v) for v in r]
    return r



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


