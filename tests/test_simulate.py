"""`bitsieve simulate` and `bitsieve export-traces` on a real model, through the real CLI."""
import json

import numpy as np
import pytest
import torch

from bitsieve import results
from bitsieve.accel import ACCELERATORS
from bitsieve.cli import main


def run_json(capsys, *args):
    assert main(["simulate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def error_line(capsys, *args):
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitsieve: error:") and "\n" not in err
    return err


def whole(payload, metric, method=""):
    return {r["accel"]: r["value"] for r in payload["rows"]
            if r["layer"] == "*" and r["metric"] == metric and r["method"] == method}


@pytest.mark.slow
def test_simulate_rnet_all_accelerators(capsys, tmp_path):
    csv = tmp_path / "rows.csv"
    got = run_json(capsys, "mtcnn-rnet", "--format", "int8", "--baseline", "stripes", "--csv", str(csv))
    int_accels = {n for n, a in ACCELERATORS.items() if "int" in a.formats}
    sp = whole(got, "speedup")
    assert set(sp) == int_accels
    assert sp["dense"] == pytest.approx(1.0)
    assert whole(got, "speedup_vs_stripes")["stripes"] == pytest.approx(1.0)
    for n in int_accels:
        assert whole(got, "cycles")[n] > 0 and whole(got, "energy_pj")[n] > 0 and whole(got, "area_mm2")[n] > 0
    # the whole model is the sum of its layers
    layers = [r for r in got["rows"] if r["layer"] != "*" and r["metric"] == "cycles" and r["accel"] == "pragmatic"]
    assert len(layers) == len(got["layers"]) == 6  # conv1-3, dense4, dense5_1, dense5_2
    assert sum(r["value"] for r in layers) == pytest.approx(whole(got, "cycles")["pragmatic"])
    # the rows are the project's tidy table, and the CSV holds the same rows
    rows = results.from_json(json.dumps(got))
    assert len(rows) == len(results.from_csv(csv.read_text()))
    assert {s["accel"] for s in got["summary"]} == int_accels
    assert all(s.get("bottleneck") for s in got["summary"])


@pytest.mark.slow
def test_simulate_method_composes(capsys):
    got = run_json(capsys, "mtcnn-rnet", "--accel", "bitx,bitwave,pragmatic", "--format", "int8",
                   "--method", "bitx:keep=2")
    methods = {r["method"] for r in got["rows"]}
    spec = next(m for m in methods if m)
    assert methods == {"", spec} and spec.startswith("bitx:keep=2")
    base, pruned = whole(got, "cycles"), whole(got, "cycles", spec)
    assert pruned["bitwave"] < base["bitwave"]  # fewer non-zero columns after pruning to 2 planes
    assert pruned["bitx"] <= base["bitx"]
    assert pruned["pragmatic"] == base["pragmatic"]  # activation-serial: weights do not matter


def test_simulate_fp32_and_sets(capsys):
    got = run_json(capsys, "mtcnn-rnet", "--accel", "bitlet,bitx", "--format", "fp32",
                   "--set", "bitlet.variant=pipelined", "--set", "bitx.keep=3", "--set", "bitlet.samples=500")
    assert got["accels"]["bitlet"]["config"]["variant"] == "pipelined"
    assert whole(got, "speedup")["bitx"] == pytest.approx(24 / 3, rel=0.02)
    assert whole(got, "speedup")["bitlet"] > 1.0


def test_simulate_user_errors(capsys, tmp_path):
    assert "does not apply to fp32" in error_line(capsys, "simulate", "mtcnn-rnet", "--accel", "pragmatic",
                                                  "--format", "fp32")
    assert "no parameter" in error_line(capsys, "simulate", "mtcnn-rnet", "--accel", "bitx",
                                        "--set", "bitx.nope=1")
    assert "unknown accelerator" in error_line(capsys, "simulate", "mtcnn-rnet", "--accel", "tpu")
    assert "ACCEL.PARAM=VALUE" in error_line(capsys, "simulate", "mtcnn-rnet", "--set", "keep=3")


def test_simulate_weights_file(capsys, tmp_path):
    """A weights file has no architecture: weight-only designs cost one output pixel per conv; designs
    that read activations say so."""
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    rng = np.random.default_rng(0)
    save_file({"conv.weight": torch.tensor(rng.normal(size=(8, 4, 3, 3)), dtype=torch.float32),
               "fc.weight": torch.tensor(rng.normal(size=(5, 8)), dtype=torch.float32)}, str(path))
    got = run_json(capsys, str(path), "--accel", "bitx,bitwave,bitvert", "--format", "int8")
    assert whole(got, "cycles")["bitwave"] > 0
    assert "activations" in error_line(capsys, "simulate", str(path), "--accel", "pragmatic")


@pytest.mark.slow
def test_export_traces_layout(capsys, tmp_path):
    """A DNNsim work folder: model.csv, precision.txt, the integers bitsieve simulates in DNNsim's axis order
    (spatial axes swapped), a batch file with bitsieve's parameters; safe writes."""
    from bitsieve import formats, model
    from bitsieve.accel import tiling
    from bitsieve.accel.dnnsim import layer_integers

    d = tmp_path / "rnet"
    assert main(["export-traces", "mtcnn-rnet", str(d), "--activations", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["network"] == "mtcnn-rnet" and summary["dnnsim_commit"] == "4748a60"
    rows = [ln.split(",") for ln in (d / "models/mtcnn-rnet/model.csv").read_text().split()]
    assert [r[1] for r in rows] == ["conv", "conv", "conv", "fc", "fc", "fc"]
    prec = (d / "models/mtcnn-rnet/precision.txt").read_text().splitlines()
    assert len(prec) == 5 and len(prec[1].split(";")) == 6
    layers = model.load("mtcnn-rnet", activations=2).layers
    wls = [tiling.from_layer(la) for la in layers if la.kind in ("conv", "linear")]
    for (name, kind, stride, pad), wl in zip(rows, wls):
        w = np.load(d / f"net_traces/mtcnn-rnet/wgt-{name}.npy")
        a = np.load(d / f"net_traces/mtcnn-rnet/act-{name}-0.npy")
        assert w.dtype == np.float32 and a.dtype == np.float32 and (a == np.rint(a)).all()
        wi, ai = layer_integers(wl, formats.get("int16"))
        if kind == "conv":
            assert (w == wi.transpose(0, 1, 3, 2)).all() and (a == ai.transpose(0, 1, 3, 2)).all()
            assert (int(stride), int(pad)) == (wl.stride[0], wl.padding[0])
        else:
            assert w.ndim == 2 and a.ndim == 2 and a.shape[1] == w.shape[1]
    batch = (d / "mtcnn-rnet.batch").read_text()
    assert "quantised: true" in batch and batch.count("experiment {") == 5 and 'architecture: "Laconic"' in batch
    assert "Network.h" in (d / "README.txt").read_text()
    assert "--force" in error_line(capsys, "export-traces", "mtcnn-rnet", str(d))
    assert "once" in error_line(capsys, "export-traces", "mtcnn-rnet", str(d), "--dnnsim", str(d))
    assert "fixed point" in error_line(capsys, "export-traces", "mtcnn-rnet", str(d), "--format", "fp32")
    assert main(["export-traces", "mtcnn-rnet", "--dnnsim", str(d), "--force"]) == 0


def test_accelerators_command(capsys):
    assert main(["accelerators", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(ACCELERATORS)
    assert all(r["confidence"] and r["source"] and set(r["params"]) <= set(r["cite"]) for r in rows)


def test_gemv_latency_is_memory_bound(tmp_path, capsys):
    """Decoding (--tokens 1) streams every weight once per token: at the DRAM bandwidth of memory.toml that
    takes far longer than the compute, so skipping weight bits, which only cuts compute, leaves the latency
    where it was (speed-up with memory ~1) while the compute-only speed-up is large. A GEMM of many tokens is
    compute-bound: there the two speed-ups agree."""
    import tomllib
    from importlib import resources

    O, I = 1024, 1024
    torch.manual_seed(0)
    torch.save({"fc.weight": torch.randn(O, I)}, tmp_path / "w.pt")
    bandwidth = tomllib.loads(resources.files("bitsieve.accel").joinpath("data", "memory.toml").read_text())[
        "dram"]["bits_per_cycle"]
    dram = (O * I + I + O) * 8 / bandwidth  # int8 weights, input and output each moved once
    got = run_json(capsys, str(tmp_path / "w.pt"), "--tokens", "1", "--accel", "bitvert,bitwave", "--format",
                   "int8", "--method", "bbs:k=2")
    assert any("1 tokens" in n for n in got["notes"])
    for s in got["summary"]:
        assert s["dram_cycles"] == dram and s["cycles"] < dram
        assert s["latency_cycles"] == dram and s["speedup_memory"] == pytest.approx(1.0)
    compute = {(s["accel"], s["method"]): s["speedup"] for s in got["summary"]}
    assert max(compute.values()) >= 2.0  # what a compute-only figure would promise
    got = run_json(capsys, str(tmp_path / "w.pt"), "--tokens", "512", "--accel", "bitvert", "--format", "int8")
    s = next(s for s in got["summary"] if s["accel"] == "bitvert")
    assert s["cycles"] > s["dram_cycles"] and s["speedup_memory"] == pytest.approx(s["speedup"])
    assert s["latency_cycles"] == s["cycles"]
    assert main(["simulate", str(tmp_path / "w.pt"), "--tokens", "1", "--accel", "bitvert", "--format", "int8"]) == 0
    text = capsys.readouterr().out
    assert "speed-up with memory" in text and "GEMMs of 1 tokens" in text


def test_input_shape_for_state_dict_convs(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save({"c1.weight": torch.randn(8, 3, 3, 3), "c2.weight": torch.randn(16, 8, 1, 1),
                "fc.weight": torch.randn(10, 16)}, tmp_path / "w.pt")
    got = run_json(capsys, str(tmp_path / "w.pt"), "--input-shape", "1x3x32x32", "--accel", "bitwave",
                   "--format", "int8")
    macs = {i["name"]: i["macs"] for i in got["layers"]}
    assert macs == {"c1": 8 * 3 * 9 * 32 * 32, "c2": 16 * 8 * 32 * 32, "fc": 10 * 16}
    assert any("32x32 input" in n and "'same' padding" in n for n in got["notes"])
    assert any("one token" in n for n in got["notes"])  # --tokens not given: said, not hidden
    assert "--input-shape" in error_line(capsys, "simulate", str(tmp_path / "w.pt"), "--input-shape", "32")
    every = run_json(capsys, str(tmp_path / "w.pt"), "--format", "int8")  # --accel all: the weight-only designs
    accels = {s["accel"] for s in every["summary"]}
    assert "bitwave" in accels and not accels & {"stripes", "pragmatic", "laconic"}
    assert any(n.startswith("left out: ") and "stripes" in n for n in every["notes"])


def test_checkpoint_simulated_streamed_equals_in_memory(tmp_path):
    """A sharded bf16 checkpoint is simulated one tensor at a time; every row (methods included, BBS's beta
    ranked over the whole model) equals simulating the model loaded whole."""
    from safetensors.torch import save_file

    from bitsieve import model as model_mod
    from bitsieve import simulate as sim

    torch.manual_seed(0)
    shards = [{"model.layers.0.self_attn.q_proj.weight": torch.randn(64, 48), "model.embed_tokens.weight":
               torch.randn(100, 48), "model.layers.0.input_layernorm.weight": torch.ones(48)},
              {"model.layers.0.mlp.up_proj.weight": torch.randn(96, 48) * 3, "lm_head.weight": torch.randn(100, 48)}]
    index = {"metadata": {}, "weight_map": {}}
    for i, tensors in enumerate(shards):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, tmp_path / name)
        index["weight_map"].update({k: name for k in tensors})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 100}))
    run = lambda: sim.Run(accels=["bitvert", "bitwave"], fmt="int8", methods=["bbs:k=2,beta=0.3", "bitx:keep=3"])  # noqa: E731
    streamed = sim.simulate_model(str(tmp_path), run(), tokens=4)
    whole = sim.simulate_model(model_mod.load(tmp_path, tokens=4), run())
    key = lambda r: (r["layer"], r["method"], r["accel"], r["metric"])  # noqa: E731
    assert len(streamed["rows"]) == len(whole["rows"]) > 0
    assert sorted((key(r), r["value"]) for r in streamed["rows"]) == sorted((key(r), r["value"]) for r in whole["rows"])
    assert {i["name"] for i in streamed["layers"]} == {"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj",
                                                       "lm_head"}  # no embedding, no norm
    assert any("GEMMs of 4 tokens" in n for n in streamed["notes"])
