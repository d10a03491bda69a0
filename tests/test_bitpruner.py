"""BitPruner: word-level bit operations against plain per-value code, hand-worked cases of the budget, balance,
start and magnitude-matching rules, and short seeded runs on lenet-mnist (MNIST subsets) whose figures are pinned
tightly enough that a one-line change to the scheduler, the baselines' training or the sparsity matching fails;
a killed run resumes without repeating finished stages and gives the numbers of an uninterrupted run."""
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


# ---- hand-worked rules ------------------------------------------------------------------------------------
def test_budget_then_weight_cap_by_hand():
    """Group of 4 lanes, magnitudes 91 = 1011011b, 7 = 111b, 16 = 10000b, 0. Budget k = 2 keeps the two top
    bits: 80 (1010000b), 6 (110b), 16, 0 -> L1 102. The weight cap then picks the tightest cap whose removed
    value is at most drop x 102: cap 1 removes 16 (80 -> 64) + 2 (6 -> 4) = 18 = 17.6 %, cap 0 removes all.
    drop 0.2 -> cap 1 -> 64, 4, 16, 0; drop 0.1 -> cap 2 -> nothing more removed."""
    p = pack_ints(np.array([[91, 7, -16, 0]]), 4)
    k2 = B.keep_top_k(p.words, 2)
    assert p.with_words(k2).magnitudes()[0].tolist() == [80, 6, 16, 0]
    assert B.auto_weight_cap(k2, 0.2).tolist() == [1] and B.auto_weight_cap(k2, 0.1).tolist() == [2]
    assert p.with_words(B.balance(k2, "weight", 0.2)).magnitudes()[0].tolist() == [64, 4, 16, 0]
    assert p.with_words(B.balance(k2, "weight", 0.1)).magnitudes()[0].tolist() == [80, 6, 16, 0]
    proj = bp.Projection(fmt=FMT8, level=2, drop=0.2)  # the same through the projection a round uses
    assert proj.planes(p).magnitudes()[0].tolist() == [64, 4, 16, 0]
    assert bp.Projection(fmt=FMT8, level=2, balance=False, drop=0.2).planes(p).magnitudes()[0].tolist() == \
        [80, 6, 16, 0]


def test_start_budget_by_hand():
    """Essential bits 1, 2, 3, 3, 5 (values 1, 3, -7, 11, 31; 14 bits): budget 4 removes 1 bit (7.1 %), 3 removes
    2 (14.3 %), 2 removes 5 (35.7 %). The first budget removes at least start_drop."""
    ints = {"a": np.array([1, 3, -7]), "b": np.array([[11, 31]])}
    assert bp.start_budget(ints, 7, 0.05) == 4
    assert bp.start_budget(ints, 7, 0.10) == 3
    assert bp.start_budget(ints, 7, 0.20) == 2
    assert bp.start_budget(ints, 7, 0.90) == 1  # no budget removes 90 %: the last one


def test_magnitude_mask_counts_weights_that_round_to_zero():
    """One channel, max 1.0 -> int8 step 1/127: 0.001 and -0.002 round to 0 anyway. Asking for 3 zeros masks
    the 3 smallest (0.001, -0.002, 0.01); asking for 2 (or 0) masks nothing: rounding already gives 2."""
    lin = torch.nn.Linear(6, 1, bias=False)
    with torch.no_grad():
        lin.weight[:] = torch.tensor([[1.0, 0.001, -0.5, -0.002, 0.01, 0.3]])
    m = torch.nn.Sequential(lin)
    for want, mask in ((3, [1, 0, 1, 0, 0, 1]), (2, [1, 1, 1, 1, 1, 1]), (0, [1, 1, 1, 1, 1, 1]),
                       (4, [1, 0, 1, 0, 0, 0])):
        got = bp.matched_masks(m, FMT8, {"0": want})["0"]
        assert got.flatten().tolist() == mask, want
        q, _ = FMT8.quantize(lin.weight.detach().numpy().astype(np.float64) * got.numpy(), axis=0)
        assert int((q == 0).sum()) == max(want, 2)


@pytest.mark.parametrize("count, want", [("bitsim", 24.0), ("magnitude", 22.0)])
def test_weight_serial_pragmatic_design_by_hand(count, want):
    """The registered pragmatic-ws design (BitSim's rule) on 2 PE rows (the 14fda20 script's array; the default
    is 6845fad's 32): 3 filters x 10 inputs, 8-lane chunks,
    16 columns, 20 tokens -> 2 column steps. Chunk costs (ones of the heaviest weight, + its sign):
    filter 0 [7 | 1] -> 3, 1; filter 1 [-3 | -1] -> 3, 2 (magnitude: 2, 1); filter 2 [127 | 0] -> 7, 0.
    Rows {0, 1}: max(3, 3) + max(1, 2) = 5 (magnitude 3 + 1 = 4); row {2}: 7 + 0. (5 + 7) x 2 = 24; 22."""
    from bitsieve.accel import ACCELERATORS, tiling
    from bitsieve.train import accel_bridge

    ints = np.zeros((3, 10), np.int64)
    ints[0, 0], ints[0, 8], ints[1, 0], ints[1, 9], ints[2, 0] = 7, 1, -3, -1, 127
    wl = tiling.Workload.linear(ints.astype(np.float32), tokens=20)
    acc = ACCELERATORS["pragmatic-ws"]
    cfg = acc.configure({"count": count, "rows": 2})
    cfg["format"] = "int8"
    lay = tiling.layout(wl, cfg["group"], cfg["layout"])
    wp = tiling.pack_lanes(accel_bridge.gather(ints, lay, 1), FMT8)
    assert acc.simulate(wl, wp, None, cfg).cycles == want


@pytest.mark.parametrize("args, msg", [
    (["train", "lenet-mnist", "--method", "nope"], "--method"),
    (["train", "no-such-model", "--method", "bitpruner"], "unknown built-in"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--resume"], "--resume needs --output"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--sparsity", "0.5"], "scflp option"),
    (["train", "lenet-mnist", "--method", "scflp", "--target", "bitlet"], "bitpruner option"),
    (["train", "lenet-mnist", "--method", "scflp", "--formats", "int8"], "bitpruner option"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--target", "tpu"], "unknown target"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--set", "foo=1"], "unknown BitPrunerConfig"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--formats", "int8", "--start", "9"], "start must be"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--formats", "int4"], "formats must be"),
    (["train", "lenet-mnist", "--method", "bitpruner", "--set", "designs=nope"], "unknown design"),
])
def test_user_errors(args, msg, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


# ---- short seeded runs, figures pinned --------------------------------------------------------------------
LIMITS = dict(train_limit=3000, val_size=1000, test_limit=2000, progress=False)
#: int8, 30 steps a round, tolerance 0.15 points: k=4 and 3 are kept, k=2 is 0.2 points under the non-pruned
#: model trained as long, so the schedule stops there and every trained variant gets 3 x 30 steps
PIN8 = dict(formats=("int8",), steps=30, tolerance=0.15)


@pytest.fixture(scope="module")
def run8():
    return bp.run("lenet-mnist", bp.BitPrunerConfig(**PIN8), **LIMITS)


def _variants(f):
    return {v["name"]: v for v in f["variants"]}


def _strip(r):
    """A result without what may differ between an uninterrupted and a resumed run: timings, stage lists."""
    if isinstance(r, dict):
        return {k: _strip(v) for k, v in r.items() if k not in ("stages_run", "stages_loaded", "wall_s")}
    if isinstance(r, list):
        return [_strip(v) for v in r]
    return r


@pytest.mark.slow
def test_pinned_int8_schedule_baselines_and_cycles(run8):
    f = run8["formats"]["int8"]
    # the scheduler: start from the data, one bit per round, stop at the first round outside the tolerance
    assert f["start_budget"] == 4 and f["budget"] == 3
    assert [(x["budget"], x["kept"]) for x in f["rounds"]] == [(4, True), (3, True), (2, False)]
    assert [x["val"] for x in f["rounds"]] == pytest.approx([99.3, 99.2, 99.2], abs=0.01)
    assert [x["reference_val"] for x in f["rounds"]] == pytest.approx([99.4, 99.2, 99.4], abs=0.01)
    v = _variants(f)
    # the budget: kept and rejected rounds, the same for both trained baselines; ablations train nothing
    assert {n: x["steps"] for n, x in v.items()} == {"original": 0, "non-pruned FT": 90, "magnitude FT": 90,
                                                    "rounding only": 0, "rounding+balance": 0, "bitpruner": 90}
    acc = {n: x["accuracy"] for n, x in v.items()}
    assert acc == pytest.approx({"original": 97.70, "non-pruned FT": 98.30, "magnitude FT": 98.30,
                                 "rounding only": 97.40, "rounding+balance": 97.35, "bitpruner": 98.15}, abs=0.01)
    assert all(x["n"] == 2000 for x in v.values())
    assert v["bitpruner"]["ci"] == pytest.approx([97.46, 98.65], abs=0.01)  # Wilson, 1963 of 2000
    assert v["bitpruner"]["change"] == pytest.approx(-0.15, abs=0.01)
    assert v["bitpruner"]["change_ci"] == pytest.approx([-0.40, 0.10], abs=0.01)
    assert "change" not in v["non-pruned FT"]
    # bits: the budget and the balance cap, measured
    bs = {n: x["stats"]["total"]["bit_sparsity"] for n, x in v.items()}
    assert bs == pytest.approx({"original": 0.58884, "non-pruned FT": 0.58873, "magnitude FT": 0.58901,
                                "rounding only": 0.64628, "rounding+balance": 0.64745, "bitpruner": 0.64746},
                               abs=2e-5)
    assert v["bitpruner"]["stats"]["total"]["max_essential_bits"] == 3
    # the magnitude baseline: BitPruner's zero weights per layer, matched by the mask before training
    m = f["magnitude_match"]
    bp_zero = v["bitpruner"]["stats"]["total"]["weight_sparsity"] * v["bitpruner"]["stats"]["total"]["values"]
    assert sum(m["target_zeros"].values()) == round(bp_zero) == 572
    assert m["target_zeros"] == {"conv1": 1, "conv2": 19, "fc1": 493, "fc2": 53, "fc3": 6}
    # fc2: 55 of the original's weights round to 0 at int8 anyway; the mask cannot give fewer zeros than that
    assert m["mask_zeros"] == {"conv1": 1, "conv2": 19, "fc1": 493, "fc2": 55, "fc3": 6}
    assert v["magnitude FT"]["stats"]["total"]["weight_sparsity"] == pytest.approx(0.01074, abs=2e-5)
    # cycles: activation-serial designs cannot move; the weight-bit designs do
    sp = v["bitpruner"]["speedup_vs_nonpruned"]
    assert sp["stripes"] == 1.0 and sp["pragmatic"] == 1.0
    assert sp == pytest.approx({"stripes": 1.0, "pragmatic": 1.0, "laconic": 1.3218, "tactical": 1.0005,
                                "pragmatic-ws": 1.7743}, abs=2e-4)
    assert v["bitpruner"]["speedup_vs_magnitude"]["pragmatic-ws"] == pytest.approx(1.7743, abs=2e-4)
    assert v["rounding+balance"]["speedup_vs_nonpruned"]["pragmatic-ws"] == pytest.approx(1.7743, abs=2e-4)
    assert not f["paper"]["bit_sparsity_reproduced"] and f["paper"]["within_tolerance"]


@pytest.mark.slow
def test_printed_verdicts_say_what_the_settings_fix(run8, capsys):
    """The terminal verdicts: the budget's bound on bit sparsity, what training adds over rounding, and no
    claim about weight pruning when the matched magnitude model prunes no more weights than the non-pruned one."""
    from bitsieve.cli_train import _print_bitpruner

    _print_bitpruner(run8)
    text = " ".join(capsys.readouterr().out.split())
    assert "3 of 7 magnitude bits per weight puts it at >= 57.1% by construction" in text
    assert "what training adds (int8): +0.80 points over rounding to the same budget without training; speed-ups " \
           "laconic 1.32x vs 1.34x, tactical 1.00x vs 1.00x, pragmatic-ws 1.77x vs 1.77x" in text
    assert "not a test: matched to BitPruner's zero weights, the magnitude model has 1.07% zero weights" in text


PIN16_ROUNDS = [(4, True), (3, True), (2, True), (1, False)]
PIN16_ACC = {"original": 97.65, "non-pruned FT": 98.40, "magnitude FT": 98.40, "rounding only": 97.20,
             "rounding+balance": 97.20, "bitpruner": 98.20}
PIN16_BITS, PIN16_SPEEDUP = 0.86675, 4.6685


@pytest.mark.slow
def test_pinned_int16_goes_further_than_int8():
    """int16 from budget 4 (the automatic start, 9, is pinned on the weights; 9 rounds would cost a minute)."""
    from bitsieve.train import accel_bridge
    from bitsieve.train.loop import trainable_layers
    from bitsieve.zoo import BUILTINS

    m = BUILTINS["lenet-mnist"].load()
    int16 = formats.get("int16")
    ints = {n: int16.quantize(x.weight.detach().numpy().astype(np.float64), axis=0)[0]
            for n, x in trainable_layers(m)}
    assert bp.start_budget(ints, int16.nbits, 0.01) == 9 and bp.start_budget(
        {n: FMT8.quantize(x.weight.detach().numpy().astype(np.float64), axis=0)[0] for n, x in trainable_layers(m)},
        FMT8.nbits, 0.01) == 4
    assert accel_bridge.target("lenet-mnist", "pragmatic-ws", "int16").reads_weights
    r = bp.run("lenet-mnist", bp.BitPrunerConfig(formats=("int16",), start=4, steps=20, tolerance=0.15), **LIMITS)
    f = r["formats"]["int16"]
    v = _variants(f)
    assert f["start_budget"] == 4
    assert [(x["budget"], x["kept"]) for x in f["rounds"]] == PIN16_ROUNDS
    assert {n: x["steps"] for n, x in v.items() if x["steps"]} == {n: 20 * len(PIN16_ROUNDS) for n in
                                                                   ("non-pruned FT", "magnitude FT", "bitpruner")}
    assert {n: x["accuracy"] for n, x in v.items()} == pytest.approx(PIN16_ACC, abs=0.01)
    assert v["bitpruner"]["stats"]["total"]["bit_sparsity"] == pytest.approx(PIN16_BITS, abs=2e-5)
    assert v["bitpruner"]["speedup_vs_nonpruned"]["pragmatic-ws"] == pytest.approx(PIN16_SPEEDUP, abs=2e-4)


@pytest.mark.slow
def test_kill_and_resume_give_the_uninterrupted_numbers(run8, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        bp.run("lenet-mnist", bp.BitPrunerConfig(**PIN8), out_dir=tmp_path, stop_after=3, **LIMITS)
    first = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert list(first) == ["int8/nonpruned/c1", "int8/bitpruner/k4", "int8/nonpruned/c2"]
    again = bp.run("lenet-mnist", bp.BitPrunerConfig(**PIN8), out_dir=tmp_path, resume=True, **LIMITS)
    assert again["stages_loaded"] == list(first)
    assert again["stages_run"] == ["int8/bitpruner/k3", "int8/nonpruned/c3", "int8/bitpruner/k2",
                                   "int8/magnitude/c1", "int8/magnitude/c2", "int8/magnitude/c3"]
    assert _strip(again) == _strip(run8)  # same seed -> same numbers, with or without the kill


@pytest.mark.slow
@pytest.mark.parametrize("target", ["laconic", "bitlet", "bitwave"])
def test_bitpruner_lowers_cycles_on_every_target(target):
    cfg = bp.BitPrunerConfig(formats=("int8",), start=2, steps=5, target=target, designs=(target,), tolerance=5)
    f = bp.run("lenet-mnist", cfg, **LIMITS)["formats"]["int8"]
    v = _variants(f)
    assert f["budget"] <= 2 and v["bitpruner"]["speedup_vs_nonpruned"][target] > 1.05


@pytest.mark.slow
def test_cli_train_json(tmp_path, capsys):
    args = ["train", "lenet-mnist", "--method", "bitpruner", "--formats", "int8", "--start", "2", "--steps", "5",
            "--set", "designs=pragmatic-ws,stripes", "--train-limit", "1000", "--test-limit", "500", "--json",
            "-o", str(tmp_path / "run")]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in r["formats"]["int8"]["variants"]] == list(bp.VARIANTS)
    assert (tmp_path / "run" / "result.json").exists()
    assert main(args) == 2  # the folder holds a run: --resume or --force
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    r2 = json.loads(capsys.readouterr().out)
    assert r2["stages_run"] == [] and _strip(r2["formats"]) == _strip(r["formats"])
    table = [a if a != "-o" else "--output" for a in args if a != "--json"]  # the long spelling, a table
    assert main(table + ["--resume"]) == 0
    text = capsys.readouterr().out
    assert "rounding+balance" in text and "paper (abstract)" in text and "not reproduced" in text
