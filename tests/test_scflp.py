"""SCFLP / PNPU (Kim et al.): skipped-MAC counts against plain loops, the coarse step worked by hand, the runtime
AIOWS policy against the oracle, and a short seeded run on the widened lenet-mnist whose figures are pinned
(and which must survive a kill and resume)."""
import numpy as np
import pytest
import torch

from bitsieve.train import scflp as sc
from bitsieve.train.scflp_models import widen_lenet

# the pinned short run: 47 iterations of 64 images, pruning every 2, from the widened pretrained LeNet
LIMITS = dict(train_limit=3000, val_size=1000, test_limit=2000, progress=False)
SHORT = dict(epochs=1, interval=2, sample=0.1, energy_images=4)
PINNED_MEMORY_FRAC, PINNED_TRAIN_WORDS, PINNED_TOPS_COMPUTE = 0.103370, 8297635, 38.9972


def _strip(r):
    """A result without what may differ between an uninterrupted and a resumed run: timings, stage lists."""
    if isinstance(r, dict):
        return {k: _strip(v) for k, v in r.items() if k not in ("stages_run", "stages_loaded", "wall_s")}
    if isinstance(r, list):
        return [_strip(v) for v in r]
    return r


# ---- AIOWS: skipped MACs against plain loops --------------------------------------------------------------
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


def test_runtime_policy_uses_the_previous_iteration_only():
    """One unit, one lane, dense work 10 per phase. FP skips (input, weight, output) = (6, 2, 0), then (1, 5, 0)
    twice: times (4, 8, 10), (9, 5, 10), (9, 5, 10). The runtime policy starts on the weights (8), then takes
    the last iteration's fastest: input (9), weight (5): 22; the oracle 4 + 5 + 5 = 14."""
    net = torch.nn.Sequential(torch.nn.Linear(1, 1))
    counter = sc.SkipCounter(net, lanes=1, balance=False)
    counter.remove()
    one = np.ones(1)
    for fp in ((6, 2, 0), (1, 5, 0), (1, 5, 0)):
        c = {"dense": {p: 10 * one for p in sc.PHASES}}
        for p in sc.PHASES:
            for o, k in zip(sc.OPERANDS[p], fp if p == "fp" else (0, 0, 3)):
                c[(p, o)] = k * one
        counter._add("0", c)
    t = counter.totals["0"]
    assert t["runtime_time"]["fp"] == 22 and t["oracle_time"]["fp"] == 14 and t["dense_time"]["fp"] == 30
    assert t["chosen"]["fp"] == {"input": 1, "weight": 2, "output": 0}
    assert t["agree"]["fp"] == 1
    # WG: the output (pruned gradients) is fastest every time and is the first choice: runtime = oracle
    assert t["runtime_time"]["wg"] == t["oracle_time"]["wg"] == 21


# ---- the coarse step by hand --------------------------------------------------------------------------------
def _four_filters():
    """Four filters of a linear layer; filter 3 is a weaker near-copy of filter 0 (cosine 0.99875), the others are
    orthogonal or nearly so."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.025, 0]]))
    return net


def test_coarse_step_removes_the_weaker_duplicate_and_counts_the_pairs_it_computed():
    # tiny sparsity: FLP zeroes nothing (round(0.01 x 12) = 0), so only CLP acts
    cfg = sc.SCFLPConfig(clp="exhaustive", sparsity=0.01, ramp_start=0, ramp_end=0, max_channel_frac=0.25)
    net = _four_filters()
    pr = sc.Pruner(net, cfg, total_iterations=10)
    pr.prune(1)
    assert pr.removed["0"].tolist() == [False, False, False, True]
    assert float(net[0].weight[3].detach().abs().sum()) == 0 and float(net[0].bias[3].detach()) == 0
    assert pr.sim["computed"] == 6  # all C(4, 2) pairs
    assert pr.max_sim["0"] == pytest.approx(1 / np.sqrt(1 + 0.05 ** 2))
    pr.prune(2)  # budget int(0.25 x 4) = 1 is used up: the layer computes nothing more
    assert pr.sim["computed"] == 6 and pr.sim["steps"] == 2
    # with room for two channels, the next step compares the 3 alive channels (3 pairs) and finds nothing
    cfg = sc.SCFLPConfig(clp="exhaustive", sparsity=0.01, ramp_start=0, ramp_end=0, max_channel_frac=0.5)
    pr = sc.Pruner(_four_filters(), cfg, total_iterations=10)
    pr.prune(1)
    pr.prune(2)
    assert pr.sim["computed"] == 9 and pr.removed["0"].tolist() == [False, False, False, True]
    # no coarse step: nothing computed, nothing removed
    pr = sc.Pruner(_four_filters(), sc.SCFLPConfig(clp="none", sparsity=0.01, ramp_start=0, ramp_end=0), 10)
    pr.prune(1)
    assert pr.sim["computed"] == 0 and not pr.removed["0"].any()


def test_stochastic_coarse_step_computes_one_pair_per_step_until_it_samples_the_duplicates():
    """sample 0.5 of 4 channels = 2 channels = 1 pair per step; the seeded draws (seed 9) hit the pair (0, 3) at
    step 4, after which the budget (1 channel) is used up: 4 similarities computed in 10 steps."""
    cfg = sc.SCFLPConfig(clp="stochastic", sample=0.5, sparsity=0.01, ramp_start=0, ramp_end=0,
                         max_channel_frac=0.25, seed=9)
    pr = sc.Pruner(_four_filters(), cfg, total_iterations=20)
    for it in range(1, 11):
        pr.prune(it)
    assert pr.removed["0"].tolist() == [False, False, False, True]
    assert pr.removed_at["0"][3] == 4
    assert pr.sim["computed"] == 4 and pr.sim["steps"] == 10


def test_coarse_only_step_between_pruning_steps_leaves_the_fine_masks():
    """clp_every: a coarse step alone removes the duplicate but zeroes no weight by magnitude and reads no FLP scan."""
    cfg = sc.SCFLPConfig(clp="exhaustive", sparsity=0.5, ramp_start=0, ramp_end=0)
    pr = sc.Pruner(_four_filters(), cfg, total_iterations=10)
    pr.prune(1, fine=False)
    zeros = (pr.masks["0"] == 0).sum(dim=1).tolist()
    assert zeros == [0, 0, 0, 3] and int((pr.masks["1"] == 0).sum()) == 0
    assert pr.sim == {"computed": 6, "computed_macs": 18, "steps": 0, "coarse_steps": 1, "channels_removed": 1}
    assert pr.memory.words["prune_flp_read"] == 0 and pr.memory.words["prune_clp_read"] == 5  # 1 + 1 + 1 + 2 non-zero weights
    assert pr.memory.words["prune_write"] == 3  # the mask entries of filter 3 turned to zero


def test_widening_plants_duplicates_and_keeps_the_function():
    from bitsieve.zoo import lenet

    net = lenet.load()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        before = net(x)
    planted = widen_lenet(net, 0.5, 0.0, seed=0)
    with torch.no_grad():
        after = net(x)
    assert torch.allclose(before, after, atol=1e-4)  # noise 0: exact Net2Wider copies
    assert {k: len(v) for k, v in planted.items()} == {"conv1": 3, "conv2": 8, "fc1": 60, "fc2": 42}
    assert net.conv2.weight.shape == (24, 9, 5, 5) and net.fc1.weight.shape == (180, 24 * 25)
    orig, dup = planted["fc1"][0]
    assert torch.equal(net.fc1.weight[orig], net.fc1.weight[dup])


# ---- a short real run, pinned -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_run():
    """The short run, with every call of Pruner.similarity counted apart (pairs per variant)."""
    spy = {}
    real = sc.Pruner.similarity

    def counting(self, w, a, b):
        spy[self.clp] = spy.get(self.clp, 0) + len(a)
        return real(self, w, a, b)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sc.Pruner, "similarity", counting)
        r = sc.run("lenet-mnist", sc.SCFLPConfig(**SHORT), **LIMITS)
    return r, spy


def test_short_run_coarse_step_finds_the_planted_duplicates(short_run):
    r, spy = short_run
    v = r["variants"]
    assert r["start"]["accuracy"] == pytest.approx(97.6)  # the widened model before fine-tuning
    ex, st, no = v["exhaustive"], v["stochastic"], v["none"]
    # exhaustive: one channel of every planted pair, nothing else
    assert ex["planted"] == {"pairs": 113, "one_removed": 113, "both_removed": 0, "missed": 0, "outside_pairs": 0}
    assert st["planted"] == {"pairs": 113, "one_removed": 20, "both_removed": 0, "missed": 93, "outside_pairs": 0}
    assert no["channels_removed_total"] == 0
    # the counters read what was executed, and are pinned
    assert spy == {"stochastic": st["similarity_computations"], "exhaustive": ex["similarity_computations"]}
    assert (st["similarity_computations"], ex["similarity_computations"]) == (4863, 239517)
    assert r["agreement"]["computation_saving"] == pytest.approx(1 - 4863 / 239517)
    assert (r["agreement"]["both"], r["agreement"]["only_first"], r["agreement"]["only_second"]) == (15, 5, 98)
    # FLP reaches the configured target (by construction); channels CLP removes after the ramp add to it
    for d in (no, ex):
        assert d["weight_sparsity"] == pytest.approx(0.9, abs=2e-4)
    assert st["weight_sparsity"] == pytest.approx(0.90273, abs=2e-5)
    assert no["structured_zero_frac"] == 0 and ex["structured_zero_frac"] > st["structured_zero_frac"] > 0


def test_short_run_accuracies_are_pinned(short_run):
    r, _ = short_run
    got = {k: d["accuracy"] for k, d in r["variants"].items()}
    want = {"dense": 97.6, "stochastic": 63.0, "exhaustive": 68.8, "none": 63.25}
    for k, a in want.items():
        assert got[k] == pytest.approx(a, abs=0.5), k
    d = r["variants"]["exhaustive"]
    assert d["n_test"] == 2000 and d["accuracy_ci"][0] < d["accuracy"] < d["accuracy_ci"][1]
    pe = r["paired"]["exhaustive-none"]  # removing the planted duplicates helps FLP at 90% in this short run
    assert pe["diff"] == pytest.approx(got["exhaustive"] - got["none"]) and pe["ci"][0] > 0 and pe["mcnemar_p"] < 0.01
    assert r["paired"]["stochastic-dense"]["diff"] == pytest.approx(got["stochastic"] - got["dense"])


def test_short_run_aiows_runtime_policy_below_the_oracle(short_run):
    r, _ = short_run
    sk = r["zero_skipping"]
    assert sk["iterations"] == 47
    o = sk["overall"]
    assert o["speedup_runtime"] == pytest.approx(4.7515, rel=2e-3)
    assert o["speedup_oracle"] == pytest.approx(5.1073, rel=2e-3)
    assert o["speedup_oracle"] > o["speedup_runtime"] + 0.2  # the runtime policy cannot see the current iteration
    assert o["speedup_runtime"] > max(o[f"speedup_{p}_only"] for p in sc.POLICIES)
    for p in sc.PHASES:
        d = sk["phases"][p]
        assert d["speedup_oracle"] >= max(d[f"speedup_{pol}_only"] for pol in sc.POLICIES) - 1e-9
        assert d["speedup_oracle"] >= d["speedup_runtime"]


def test_short_run_weight_memory_and_pnpu_efficiency(short_run):
    r, _ = short_run
    m = r["variants"]["stochastic"]["weight_memory"]
    assert m["separate_unit_total"] == m["shared_unit_total"] + m["saved"]
    assert m["saved_frac"] == pytest.approx(PINNED_MEMORY_FRAC, rel=1e-3)
    assert m["train"] == PINNED_TRAIN_WORDS
    e = r["pnpu_efficiency"]
    assert e["scflp"]["pnpu"]["tops_per_w_compute"] == pytest.approx(PINNED_TOPS_COMPUTE, rel=1e-3)
    assert e["scflp"]["skip_speedup"] > e["dense-trained"]["skip_speedup"] > 1


def test_render_prints_every_table(short_run):
    from rich.console import Console
    from rich.table import Table

    parts = sc.render(short_run[0])
    assert sum(isinstance(p, Table) for p in parts) == 4
    con = Console(width=200, record=True)
    for p in parts:
        con.print(p)
    text = con.export_text()
    assert "oracle (upper bound)" in text and "4,863" in text and "239,517" in text and "146.52" in text


@pytest.mark.slow
def test_scflp_kill_resume(tmp_path):
    cfg = sc.SCFLPConfig(epochs=2, interval=5, sample=0.1, energy_images=2, compare=False)
    lim = dict(train_limit=1600, val_size=500, test_limit=500, progress=False)
    full = sc.run("lenet-mnist", cfg, **lim)
    with pytest.raises(KeyboardInterrupt):
        sc.run("lenet-mnist", cfg, out_dir=tmp_path, stop_after=3, **lim)
    again = sc.run("lenet-mnist", cfg, out_dir=tmp_path, resume=True, **lim)
    assert again["stages_loaded"] == ["dense/epoch1", "dense/epoch2", "stochastic/epoch1"]
    assert again["stages_run"] == ["stochastic/epoch2"]
    assert _strip(again) == _strip(full)


def test_cli_prints_the_run(capsys):
    """The terminal path of `bitsieve train --method scflp` (not --json) prints every part of render()."""
    from bitsieve.cli import main

    args = ["train", "lenet-mnist", "--method", "scflp", "--epochs", "1", "--train-limit", "640",
            "--test-limit", "200", "--set", "compare=false", "--set", "energy_images=0"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "SCFLP on lenet-mnist" in text and "oracle (upper bound)" in text and "weight memory" in text
    assert "not reached" in text  # 10 iterations, no pruning step (every 20), and the line says so
