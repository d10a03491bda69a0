"""Accuracy on real data: metric helpers, errors, and every method on real models against fp32."""
import numpy as np
import pytest

from bitsieve import evaluate as ev
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
