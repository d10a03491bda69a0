"""Accuracy on real data: metric helpers, errors, and every method on real models against fp32."""
import contextlib

import numpy as np
import pytest
import torch

from bitsieve import evaluate as ev
from bitsieve import methods, stats
from bitsieve.errors import UserError


def test_spearman_with_ties():
    x = [1, 2, 2, 3, 5, 4]
    y = [2, 1, 4, 4, 6, 5]
    stats = pytest.importorskip("scipy.stats")
    assert ev.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert ev.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(ev.spearman([1, 1, 1], [1, 2, 3]))


def test_split_variants():
    assert ev.split_variants(["bitx:keep=5", "bbs:k=2+bitx:keep=5,score=l1"]) == [
        ["bitx:keep=5"], ["bbs:k=2", "bitx:keep=5,score=l1"]]
    with pytest.raises(UserError):
        ev.split_variants(["bbs+"])


def test_errors(tmp_path):
    with pytest.raises(UserError):
        ev.evaluate("lenet-mnist", task="imagenet")
    with pytest.raises(UserError):
        ev.evaluate("lenet-mnist", task="cifar")
    with pytest.raises(UserError):
        ev.evaluate("lenet-mnist", limit=0)
    with pytest.raises(UserError):
        ev.evaluate("lenet-mnist", ["bitx:keep=0"], limit=10)
    with pytest.raises(UserError):
        ev.evaluate("no-such-model")
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"not a model")
    with pytest.raises(UserError):
        ev.evaluate(str(f))


def check(result, spec):
    return next(v for v in result["variants"] if v["method"] == spec)


@pytest.mark.slow
def test_lenet_mnist_every_method():
    variants = ["bitx:keep=8", "bitx:keep=1", "bitx:keep=6,format=int16", "bitxpro:keep=8", "truncate:keep=8",
                "bitwave", "bbs", "bbs:k=4,mode=zeropoint,beta=0.2", "quantize", "bbs:k=2+bitx:keep=5",
                "bitlet", "bitlet:keep=2"]
    r = ev.evaluate("lenet-mnist", variants, limit=2000)
    assert r["samples"] == 2000 and r["original"] > 97
    assert abs(check(r, "bitx:keep=8")["delta"]) <= 0.5
    assert check(r, "bitx:keep=1")["delta"] < -5  # the emulation bites
    assert abs(check(r, "bitx:keep=6,format=int16")["delta"]) <= 0.5
    for spec in variants:
        v = check(r, spec)
        assert np.isfinite(v["value"]) and v["seconds"] >= 0
    assert abs(check(r, "bitlet")["delta"]) <= 0.1  # the PE numerics without pruning are fp32-close
    assert check(r, "bitlet:keep=2")["delta"] < -1
    assert 0 < check(r, "bitx:keep=8")["bits_removed_frac"] < check(r, "bitx:keep=1")["bits_removed_frac"] < 1
    assert check(r, "bitlet")["bits_removed_frac"] is None
    assert check(r, "bbs")["changed_bits"] > 0
    rows = ev.tidy_rows(r)
    assert {x["metric"] for x in rows} >= {"accuracy", "accuracy_delta", "accuracy_top5", "bits_removed_frac"}


@pytest.mark.slow
def test_mtcnn_rnet_faces():
    r = ev.evaluate("mtcnn-rnet", ["bitx:keep=8", "bitx:keep=1", "bitxpro", "truncate:keep=6", "bitwave", "bbs",
                                   "bitlet:keep=10"])
    assert r["samples"] == 200 and r["original"] >= 95
    assert abs(check(r, "bitx:keep=8")["delta"]) <= 0.5
    assert check(r, "bitx:keep=1")["delta"] < -10
    assert abs(check(r, "bitlet:keep=10")["delta"]) <= 1.0
    for v in r["variants"]:
        assert 0 <= v["value"] <= 100


def test_exact_score_captures_activations():
    r = ev.evaluate("lenet-mnist", ["bitx:keep=3,score=exact"], limit=200)
    v = check(r, "bitx:keep=3,score=exact")
    assert np.isfinite(v["value"]) and v["changed_bits"] > 0


# ---- paired statistics, numerics variants, fixed-point contexts --------------------------------------------
NEW_KEYS = ("n", "ci_low", "ci_high", "delta_ci_low", "delta_ci_high", "agreement", "mcnemar_p", "saturated")


def design(weights, acts):
    """A Numerics as a design layer would build one: fixed-point weights and/or activations."""
    @contextlib.contextmanager
    def enter(m):
        with contextlib.ExitStack() as stack:
            if weights:
                stack.enter_context(ev.fixed_weights(m, weights))
            if acts:
                stack.enter_context(ev.fixed_activations(m, acts))
            yield
    return ev.Numerics(f"w={weights},a={acts}", enter)


@pytest.fixture(scope="module")
def lenet2000():
    return ev.evaluate("lenet-mnist", ["bitx:keep=2", "quantize:bits=8", design("int16", "int16"),
                                       design(None, "int4")], limit=2000)


def test_paired_keys(lenet2000):
    r = lenet2000
    assert not r["saturated"] and r["samples"] == 2000
    for v in r["variants"]:
        assert all(k in v for k in NEW_KEYS) and v["n"] == 2000
        assert v["ci_low"] <= v["value"] <= v["ci_high"]
        assert v["delta_ci_low"] <= v["delta"] <= v["delta_ci_high"]
        lo, hi = stats.wilson(round(v["value"] * 20), 2000)  # 2000 samples: percent * 20 = correct count
        assert (v["ci_low"], v["ci_high"]) == pytest.approx((100 * lo, 100 * hi))
    orig = check(r, "")
    assert (orig["delta_ci_low"], orig["delta_ci_high"]) == (0.0, 0.0)
    assert orig["agreement"] == 1.0 and orig["mcnemar_p"] == 1.0
    pruned = check(r, "bitx:keep=2")
    assert pruned["delta_ci_high"] < 0 and pruned["mcnemar_p"] < 1e-6 and pruned["agreement"] < 0.99
    rows = ev.tidy_rows(r)
    assert {x["metric"] for x in rows} >= {"accuracy_ci_low", "accuracy_ci_high", "n_samples",
                                           "accuracy_delta_ci_low", "accuracy_delta_ci_high", "agreement"}
    assert isinstance(r["_records"], ev.Records) and len(str(r["_records"])) < 80  # JSON dumps stay small


def test_numerics_variants(lenet2000):
    r = lenet2000
    int16 = check(r, "w=int16,a=int16")
    assert abs(int16["delta"]) <= 0.3 and int16["bits_removed_frac"] is None
    int4 = check(r, "w=None,a=int4")
    assert int4["delta"] < -0.3 and int4["delta_ci_high"] < 0  # a visible, significant loss


def test_original_cache(lenet2000):
    r = ev.evaluate("lenet-mnist", ["bitx:keep=2"], limit=2000, original=lenet2000["_records"])
    assert r["variants"][0]["seconds"] == 0.0
    for key in ("value", "delta", "ci_low", "ci_high", "delta_ci_low", "delta_ci_high", "agreement", "mcnemar_p"):
        assert r["variants"][1][key] == check(lenet2000, "bitx:keep=2")[key]
    with pytest.raises(UserError):
        ev.evaluate("lenet-mnist", limit=1000, original=lenet2000["_records"])
    with pytest.raises(UserError):
        ev.evaluate("mtcnn-rnet", original=lenet2000["_records"])


def test_saturated():
    r = ev.evaluate("mtcnn-rnet", ["bitx:keep=8"])
    assert r["original"] == 100.0 and r["saturated"] and all(v["saturated"] for v in r["variants"])
    assert not ev.evaluate("lenet-mnist", limit=2000)["saturated"]


def test_fixed_weights_keep_on_grid_weights_bit_for_bit():
    m = ev.load_model("lenet-mnist")
    layers = [layer for layer in m.layers if layer.kind != "other"]
    original = [layer.weight.copy() for layer in layers]
    with ev.applied(m, methods.parse_specs(["bitx:keep=2,format=int8"]), {}):
        pruned = [layer.weight.copy() for layer in layers]
        with ev.fixed_weights(m, "int8", reference=original):
            for layer, w in zip(layers, pruned):
                assert np.array_equal(layer.weight.view(np.uint32), w.view(np.uint32))
        with ev.fixed_weights(m, "int8"):  # scales re-derived from the pruned weights move them
            assert any(not np.array_equal(layer.weight, w) for layer, w in zip(layers, pruned))
        for layer, w in zip(layers, pruned):  # restored on exit
            assert np.array_equal(layer.weight.view(np.uint32), w.view(np.uint32))
    with ev.fixed_weights(m, "int4"):
        for layer in layers:
            per_channel = np.abs(layer.weight.reshape(len(layer.weight), -1))
            steps = per_channel / per_channel.max(axis=1, keepdims=True) * 7
            assert np.allclose(steps, np.rint(steps), atol=1e-4)  # every weight on its channel's int4 grid
    with pytest.raises(UserError):
        with ev.fixed_weights(m, "fp16"):
            pass
    with pytest.raises(UserError):
        with ev.fixed_weights(m, "int8", reference=original[:1]):
            pass


def test_fixed_activations_hooks():
    m = ev.load_model("lenet-mnist")
    calib = ev.calibration_inputs(m)
    x = calib[0][:200]
    with torch.no_grad():
        plain = m.module(x)
    modules = dict(m.module.named_modules())
    seen = {}
    with ev.fixed_activations(m, "int4", calib):
        hooks = [modules[layer.name].register_forward_pre_hook(
                 lambda mod, args, name=layer.name: seen.__setitem__(name, args[0].detach().clone()))
                 for layer in m.layers]
        with torch.no_grad():
            quantised = m.module(x)
        for h in hooks:
            h.remove()
    assert set(seen) == {layer.name for layer in m.layers}
    for a in seen.values():
        mags = np.unique(np.abs(a.numpy()))
        assert len(mags[mags > 0]) <= 7  # int4: qmax = 7 magnitudes per layer
    assert not torch.equal(quantised, plain)
    assert all(not mod._forward_pre_hooks for mod in modules.values())  # hooks gone on exit
    with torch.no_grad():
        assert torch.equal(m.module(x), plain)
    # evaluation batches, plain inputs and the default calibrate alike
    batches = list(ev._batches("mnist", m.builtin, None, 1000))
    outs = []
    for calib_form in (batches, calib, None):
        with ev.fixed_activations(m, "int4", calib_form), torch.no_grad():
            outs.append(m.module(x))
    assert torch.equal(outs[0], quantised) and torch.equal(outs[1], quantised) and torch.equal(outs[2], quantised)
    with pytest.raises(UserError):
        with ev.fixed_activations(m, "bf16", calib):
            pass


@pytest.mark.slow
def test_minilm_stsb_paired(shared):
    r = ev.evaluate("minilm-l6", ["bitx:keep=6", design(None, "int8")], data_dir=shared / "data" / "stsb",
                    limit=128)
    orig = check(r, "")
    assert orig["agreement"] == 1.0 and (orig["delta_ci_low"], orig["delta_ci_high"]) == (0.0, 0.0)
    for v in r["variants"]:
        assert all(k in v for k in NEW_KEYS) and v["mcnemar_p"] is None and v["n"] == 128
        assert v["ci_low"] <= v["value"] <= v["ci_high"]
        assert v["delta_ci_low"] <= v["delta"] <= v["delta_ci_high"]
    assert 0.9 < check(r, "w=None,a=int8")["agreement"] <= 1.0


# ---- the Python API: bitsieve.evaluate on a live module and a real DataLoader ----------------------------------
@pytest.fixture
def classifier():
    """A small MLP near a known linear rule, and 300 labelled samples in a DataLoader (shuffled: the API reads
    the batches once, so every variant still sees the same samples in the same order)."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    truth = torch.randn(6, 16, generator=g)
    x = torch.randn(300, 16, generator=g)
    y = (x @ truth.T).argmax(1)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 6)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.cat([truth, -truth, torch.randn(20, 16, generator=g) * 0.1]) * 0.5)
        net[0].bias.zero_()
        net[2].weight.copy_(torch.cat([torch.eye(6), -torch.eye(6), torch.zeros(6, 20)], 1)
                            + 0.3 * torch.randn(6, 32, generator=g))
        net[2].bias.zero_()
    return net, DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=g), x, y


def _wilson(k, n, z=1.96):
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return c - h, c + h


def test_api_evaluate_module(classifier):
    import copy

    import bitsieve

    net, loader, x, y = classifier
    before = [p.detach().clone() for p in net.parameters()]
    t = bitsieve.evaluate(net, loader, methods=["truncate:keep=2", "bbs:k=2+truncate:keep=2"])
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # weights restored
    assert [r["method"] for r in t["variants"]] == ["", "truncate:keep=2", "bbs:k=2+truncate:keep=2"]
    with torch.no_grad():
        k0 = int((net(x).argmax(1) == y).sum())
        pruned = copy.deepcopy(net)
        bitsieve.prune_(pruned, "truncate:keep=2")
        k1 = int((pruned(x).argmax(1) == y).sum())
    orig, var = t["variants"][0], t["variants"][1]
    assert orig["n"] == 300 and orig["value"] == pytest.approx(100 * k0 / 300) and k0 > 150  # chance: 50
    assert (orig["ci_low"], orig["ci_high"]) == pytest.approx(tuple(100 * v for v in _wilson(k0, 300)))
    assert var["value"] == pytest.approx(100 * k1 / 300) and var["delta"] == pytest.approx(100 * (k1 - k0) / 300)
    assert var["delta_ci_low"] <= var["delta"] <= var["delta_ci_high"] and var["changed_bits"] > 0
    assert 0 < var["bits_removed_frac"] < 1 and 0 < var["agreement"] <= 1
    assert orig["delta"] == 0 and (orig["delta_ci_low"], orig["delta_ci_high"]) == (0.0, 0.0)
    assert '"metric": "top1"' in t.to_json()
    import importlib.util

    if importlib.util.find_spec("pandas"):
        assert len(t.to_pandas()) == 3
    else:
        with pytest.raises(UserError, match="needs pandas"):
            t.to_pandas()


def test_api_evaluate_callable_metric_and_bf16(classifier):
    import bitsieve

    net, loader, x, y = classifier
    nll = lambda out, target: -torch.nn.functional.cross_entropy(out.float(), target, reduction="none")  # noqa: E731
    t = bitsieve.evaluate(net, loader, metric=nll)
    with torch.no_grad():
        assert t["variants"][0]["value"] == pytest.approx(float(nll(net(x), y).mean()), rel=1e-5)
    lo, hi = t["variants"][0]["ci_low"], t["variants"][0]["ci_high"]
    assert lo < t["original"] < hi and t["variants"][0]["mcnemar_p"] is None  # bootstrap, not Wilson
    half = net.to(torch.bfloat16)
    w = half[0].weight.detach().clone()
    t = bitsieve.evaluate(half, [(x.bfloat16(), y)], methods="truncate:keep=2")  # a plain list of batches too
    assert torch.equal(w, half[0].weight) and t["variants"][1]["changed_bits"] > 0
    assert t["variants"][1]["value"] != t["variants"][0]["value"] or t["variants"][1]["agreement"] < 1
    with pytest.raises(UserError, match="top1"):
        bitsieve.evaluate(net, loader, metric="top5")
    with pytest.raises(UserError, match="one model"):
        bitsieve.prune_(net, ["truncate:keep=2", "bbs:k=2"])
