"""`bitsieve compare` on a small real model: one table, one report, numbers that agree with the other commands."""
import json
import math

import pytest

from bitsieve import compare, results
from bitsieve.cli import main

MODEL = "mtcnn-rnet"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """compare on mtcnn-rnet: two methods, three accelerators, accuracy on the 200 real LFW crops, one process."""
    d = tmp_path_factory.mktemp("cmp")
    report, csv = d / "r.html", d / "rows.csv"
    args = ["compare", MODEL, "--method", "bitx", "--method", "bitwave:k=3", "--accel", "stripes,bitx,bitwave",
            "--limit", "200", "-o", str(report), "--csv", str(csv), "--workers", "1", "--json"]
    return args, report, csv


def test_compare_json_table_and_report(small, capsys):
    args, report, csv = small
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == MODEL and out["report"] == str(report) and out["limit"] == 200
    assert out["accelerators"] == {"dense": "fp32", "stripes": "int16", "bitx": "fp32", "bitwave": "int8"}
    res = out["results"]
    assert list(res) == ["", "bitx", "bitwave:k=3"]
    for m, rec in res.items():
        assert 0 <= rec["accuracy"] <= 100
        assert rec["accuracy_delta"] == pytest.approx(rec["accuracy"] - res[""]["accuracy"])
        for key, c in rec["accels"].items():
            assert c["speedup"] > 0 and c["energy_pj"] > 0
            if c["accel"] == "dense":
                assert c["speedup"] == 1.0
    # dense baselines, one per format the accelerators use
    assert {k for k in res[""]["accels"] if k.startswith("dense")} == {"dense@int16", "dense@fp32", "dense@int8"}
    # BitWave's bit-flip makes zero columns that the BitWave accelerator skips
    assert res["bitwave:k=3"]["accels"]["bitwave"]["speedup"] > res[""]["accels"]["bitwave"]["speedup"]
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 10 and "Pareto" in html
    rows = results.load(csv)
    assert {(r["format"], r["group"]) for r in rows} == {("int16", 64), ("fp32", 64), ("int8", 64)}
    keys = [results.key(r) for r in rows]
    assert len(keys) == len(set(keys))
    # a second run never overwrites the report without --force
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err


def test_compare_agrees_with_simulate_and_eval(small):
    """The same numbers as `bitsieve simulate` and `bitsieve eval` compute on their own."""
    from bitsieve import evaluate
    from bitsieve import simulate as sim

    _, _, csv = small
    rows = results.load(csv)
    sp = results.pivot(rows, "speedup")
    one = sim.simulate_model(MODEL, sim.Run(accels=["bitx"], fmt="fp32"), activations=2)
    want = {r["method"]: r["value"] for r in one["rows"]
            if r["layer"] == "*" and r["accel"] == "bitx" and r["metric"] == "speedup"}
    assert sp[(MODEL, "", "bitx", "fp32", 64)] == pytest.approx(want[""], rel=1e-12)
    # the table's energy is per inference: Stripes simulated on a batch of 2 real inputs, halved
    two = sim.simulate_model(MODEL, sim.Run(accels=["stripes"], fmt="int16"), activations=2)
    energy = {r["method"]: r["value"] for r in two["rows"]
              if r["layer"] == "*" and r["accel"] == "stripes" and r["metric"] == "energy_pj"}
    pl = compare.plan(MODEL, methods=["bitx", "bitwave:k=3"], accels=["stripes", "bitx", "bitwave"], limit=200)
    assert pl.activations == 2
    table = compare.table_data(rows, pl)
    assert table[""]["accels"]["stripes"]["energy_pj"] == pytest.approx(energy[""] / 2, rel=1e-12)
    ev = evaluate.evaluate(MODEL, ["bitwave:k=3"], limit=200)
    acc = results.pivot(rows, "accuracy")
    assert acc[(MODEL, "", "", "fp32", 64)] == pytest.approx(ev["original"])
    assert acc[(MODEL, "bitwave:k=3", "", "fp32", 64)] == pytest.approx(ev["variants"][1]["value"])


def test_compare_plan_covers_everything():
    from bitsieve import methods
    from bitsieve.accel import ACCELERATORS

    p = compare.plan("efficientnet-lite0")
    assert p.methods == list(methods.REGISTRY) and set(p.accels) == set(ACCELERATORS)
    assert p.limit == 50
    kinds = [u.kind for u in p.units]
    assert kinds[:2] == ["accuracy", "accuracy"]  # first: the slow emulated forward pass (Bitlet), on its own
    assert p.units[0].methods == ("bitlet",) and "bitlet" not in p.units[1].methods
    assert kinds.count("profile") == len({f for f in p.accels.values()})
    assert {a for u in p.units if u.kind == "sim" for a in u.setting.accels} == set(ACCELERATORS) - {"dense"}
    assert compare.native_format("bitlet") == "fp32" and compare.native_format("bitvert") == "int8"


def test_compare_user_errors(tmp_path, capsys):
    assert main(["compare", "resnet-9000", "-o", str(tmp_path / "x.html")]) == 2
    assert "unknown built-in model" in capsys.readouterr().err
    assert main(["compare", MODEL, "--accel", "warp-drive", "-o", str(tmp_path / "x.html")]) == 2
    assert "unknown accelerator" in capsys.readouterr().err
    assert main(["compare", MODEL, "--method", "bitx:keep=99", "-o", str(tmp_path / "x.html")]) == 2
    assert "bitx" in capsys.readouterr().err
    assert main(["compare", MODEL, "--format", "fp32", "--accel", "stripes", "-o", str(tmp_path / "x.html")]) == 2
    assert "stripes does not take fp32" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


@pytest.mark.slow
def test_compare_everything_on_a_small_model(tmp_path, capsys):
    """Every method at its defaults x every accelerator, two workers (the default path of the main job)."""
    out = tmp_path / "all.html"
    assert main(["compare", MODEL, "--limit", "200", "-o", str(out), "--json", "--workers", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    from bitsieve import methods
    from bitsieve.accel import ACCELERATORS

    assert list(res["results"]) == ["", *methods.REGISTRY]
    for m, rec in res["results"].items():
        assert rec["accuracy"] is not None
        got = {c["accel"] for c in rec["accels"].values()}
        if methods.REGISTRY.get(m.split(":")[0]) is not None and methods.REGISTRY[m.split(":")[0]].kind == "forward":
            assert not got  # an emulated forward pass (Bitlet numerics): accuracy only
        else:
            assert got == set(ACCELERATORS)
            assert all(c["speedup"] is not None and math.isfinite(c["speedup"]) for c in rec["accels"].values())
    assert out.stat().st_size > 100_000
