"""BitPruner: word-level bit operations against plain per-value code, and short real runs on lenet-mnist (MNIST subsets) that must show the real effects:
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
