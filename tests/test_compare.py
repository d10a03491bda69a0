"""`bitsieve compare`: designs with their own numerics, accuracy as they compute, paired intervals, numbers that
agree with the other commands."""
import json

import numpy as np
import pytest

from bitsieve import compare, designs, evaluate, results
from bitsieve.cli import main

MODEL = "lenet-mnist"
LIMIT = 1000


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """compare on lenet-mnist: BitX at keep 1 (a real accuracy loss), BitWave with its bit-flip method."""
    d = tmp_path_factory.mktemp("cmp")
    report, csv = d / "r.html", d / "rows.csv"
    args = ["compare", MODEL, "--accel", "bitx,bitwave", "--set", "bitx.keep=1", "--method", "bitwave:k=3",
            "--curves", "none", "--limit", str(LIMIT), "-o", str(report), "--csv", str(csv), "--workers", "1", "--json"]
    return args, report, csv


def _by(out):
    return {(r["design"], r["method"]): r for r in out["designs"]}


def test_compare_reports_designs_as_they_compute(small, capsys):
    args, report, csv = small
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    by = _by(out)
    assert set(by) == {("dense@fp32", ""), ("dense@int8", ""), ("bitx[keep=1]", ""), ("bitwave", ""),
                       ("bitwave", "bitwave:k=3")}
    orig = out["original"]
    assert orig["n_samples"] == LIMIT and orig["accuracy_ci_low"] < orig["accuracy"] < orig["accuracy_ci_high"]
    bx = by[("bitx[keep=1]", "")]
    # the BitX design at keep=1 runs the keep-1 model: the accuracy of that model, not the original's
    ev = evaluate.evaluate(MODEL, ["bitx:keep=1"], limit=LIMIT)
    assert bx["accuracy"] == pytest.approx(ev["variants"][1]["value"])
    assert bx["accuracy"] < orig["accuracy"] - 1.0 and bx["accuracy_delta_ci_high"] < 0
    assert bx["n_samples"] == LIMIT and 0 < bx["agreement"] < 1
    assert bx["accuracy_delta_ci_low"] <= bx["accuracy_delta"] <= bx["accuracy_delta_ci_high"]
    # dense at fp32 computes exactly as the original model
    d = by[("dense@fp32", "")]
    assert d["accuracy"] == orig["accuracy"] and d["agreement"] == 1.0 and d["speedup"] == 1.0
    # the bit-flip makes zero columns that the BitWave design skips, and costs accuracy on the int8 model
    bw, bwk = by[("bitwave", "")], by[("bitwave", "bitwave:k=3")]
    assert bwk["speedup"] > bw["speedup"] > 1.0
    for r in out["designs"]:
        assert r["energy_pj"] > 0 and r["latency_cycles"] * 2 >= r["cycles"] and r["tops_per_w"] > 0
    html = report.read_text()
    assert "data:image/png;base64," in html
    rows = results.load(csv)
    keys = [results.key(r) for r in rows]
    assert len(keys) == len(set(keys))
    assert main(args) == 2  # never overwrites the report without --force
    assert "exists" in capsys.readouterr().err


def test_compare_agrees_with_simulate(small):
    """Cycles and per-inference energy are `bitsieve simulate`'s on the same batch of 2 captured inputs
    (Bitlet reads activations, so simulate captures them for the run)."""
    from bitsieve import simulate as sim

    _, _, csv = small
    rows = results.load(csv)
    got = {(r["accel"], r["metric"]): r["value"] for r in rows if r["layer"] == "*" and r["method"] == ""}
    one = sim.simulate_model(MODEL, sim.Run(accels=["bitx", "bitlet"], fmt="fp32", sets={"bitx": {"keep": "1"}}),
                             activations=2)
    want = {r["metric"]: r["value"] for r in one["rows"]
            if r["layer"] == "*" and r["accel"] == "bitx" and r["method"] == ""}
    assert got[("bitx[keep=1]", "cycles")] == want["cycles"]
    assert got[("bitx[keep=1]", "energy_pj")] == pytest.approx(want["energy_pj"], rel=1e-12)
    assert got[("bitx[keep=1]", "latency_cycles")] >= want["cycles"] / 2  # per inference, DRAM included


def test_plan_shows_methods_only_where_they_can_change_something():
    p = compare.plan("efficientnet-lite0", workers=2)
    names = {(e.design.name, e.method) for e in p.entries}
    assert ("stripes", "") in names and not any(d == "stripes" and m for d, m in names)  # activations only
    assert ("bitwave", "bitwave") in names and ("bitvert", "bbs") in names
    assert not any(d == "bitx" and m == "bitwave" for d, m in names)  # an int method on an fp32 design
    # one accuracy run per distinct numerics: the DNNsim family shares int16, BitWave/BitVert share int8
    keys = [x[0] for u in p.units if u.kind == "accuracy" for x in u.numerics]
    assert len(keys) == len(set(keys))
    fixed16 = [x for u in p.units if u.kind == "accuracy" for x in u.numerics if x[1].fmt == "int16" and not x[3]]
    assert len(fixed16) == 1
    costs = [u.cost for u in p.units]
    assert costs == sorted(costs, reverse=True) and p.units[0].kind == "accuracy"  # longest first
    assert all(len(u.numerics) == 1 for u in p.units if u.kind == "accuracy" and u.numerics[0][1].forward)
    assert p.limit == compare.quick_limit("imagenet")
    assert {e.design.name for e in p.entries} >= {"bitx[keep=2]", "bitxpro[keep=8]"}  # knob curves
    assert not any(e.design.name.startswith("bitlet[") for e in p.entries)  # Bitlet curve only with all


def test_paired_interval_and_agreement_from_records():
    """The change interval is paired: identical predictions give (0, 0) and agreement 1."""
    t = np.arange(200) % 10
    base = evaluate.Records("m", "mnist", t.copy(), t)
    worse = evaluate.Records("m", "mnist", np.where(np.arange(200) < 20, (t + 1) % 10, t), t)
    c = evaluate._compare(base, base)
    assert (c["delta_ci_low"], c["delta_ci_high"], c["agreement"]) == (0.0, 0.0, 1.0)
    c = evaluate._compare(base, worse)
    assert c["delta_ci_high"] < 0 and c["agreement"] == pytest.approx(0.9)


def test_compare_user_errors(tmp_path, capsys):
    assert main(["compare", "resnet-9000", "-o", str(tmp_path / "x.html")]) == 2
    assert "unknown built-in model" in capsys.readouterr().err
    assert main(["compare", MODEL, "--accel", "warp-drive", "-o", str(tmp_path / "x.html")]) == 2
    assert "unknown accelerator" in capsys.readouterr().err
    assert main(["compare", MODEL, "--method", "bitx:keep=99", "-o", str(tmp_path / "x.html")]) == 2
    assert "bitx" in capsys.readouterr().err
    assert main(["compare", MODEL, "--set", "bitx.keep=0", "-o", str(tmp_path / "x.html")]) == 2
    assert "keep" in capsys.readouterr().err
    assert main(["compare", MODEL, "--format", "fp32", "--accel", "stripes", "-o", str(tmp_path / "x.html")]) == 2
    assert "stripes does not apply to fp32" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
    assert designs.native_format("bitlet") == "fp32" and designs.native_format("bitvert") == "int8"


def test_compare_on_a_weights_file(tmp_path, capsys):
    """A weights file has no architecture to run: the weight-only designs are compared, the others are named as
    left out, and nothing reads activations."""
    w = tmp_path / "lenet.safetensors"
    assert main(["prune", MODEL, "--method", "quantize", "-o", str(w)]) == 0
    capsys.readouterr()
    assert main(["compare", str(w), "-o", str(tmp_path / "w.html"), "--workers", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"stripes", "pragmatic", "laconic", "tactical", "pnpu"} <= set(out["left_out"])
    names = {r["design"] for r in out["designs"]}
    assert {"bitx", "bitxpro", "bitwave", "bitvert", "dense@fp32"} <= names
    assert all(r["accuracy"] is None and r["speedup"] > 0 for r in out["designs"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    assert main(["compare", str(bad), "-o", str(tmp_path / "b.html")]) == 2
    assert "bad.safetensors" in capsys.readouterr().err and not (tmp_path / "b.html").exists()


def test_terminal_table_names_the_configured_design(tmp_path, capsys):
    assert main(["compare", MODEL, "--accel", "bitx", "--set", "bitx.keep=1", "--curves", "none", "--sensitivity", "0",
                 "--limit", "200", "-o", str(tmp_path / "t.html"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "bitx[keep=1]" in out and "24/1 = 24.00 by construction" in out.replace("\n", " ")


def test_compare_decoding_gemv_is_memory_bound(tmp_path, capsys):
    """compare on a weights file with --tokens 1: every design's latency is the weights' DRAM time, so the
    latency speed-up over dense is ~1 whatever the compute speed-up; the notes say what was assumed."""
    import torch

    torch.manual_seed(0)
    torch.save({"fc.weight": torch.randn(512, 512)}, tmp_path / "w.pt")
    args = ["compare", str(tmp_path / "w.pt"), "--tokens", "1", "--accel", "bitvert,bitwave", "--workers", "1",
            "--curves", "none", "--method", "bbs:k=2", "-o", str(tmp_path / "r.html"), "--json"]
    assert main(args) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert any("GEMMs of 1 tokens" in n for n in out["notes"])
    dram = (512 * 512 + 512 + 512) * 8 / 128  # int8 weights, input, output over 128 bits per cycle
    for d in out["designs"]:
        if d["format"] == "int8":
            assert d["latency_cycles"] == dram and d["speedup_latency"] == pytest.approx(1.0)
    assert max(d["speedup"] for d in out["designs"]) >= 2.0
