"""Safetensors checkpoints (one file, a sharded folder with or without its index, the index itself): streamed
profiles equal in-memory ones, layer roles come from config.json, prune keeps dtypes, shards, index and config."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bitsieve import checkpoint, model as model_mod, profile as profile_mod
from bitsieve.cli import main
from bitsieve.errors import UserError

HIDDEN, INTER, VOCAB, LAYERS = 64, 96, 50, 2


def llama_tensors(dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(dtype)

    t = {"model.embed_tokens.weight": w(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = torch.ones(HIDDEN, dtype=dtype)
        for n in ("q", "k", "v", "o"):
            t[p + f"self_attn.{n}_proj.weight"] = w(HIDDEN, HIDDEN)
        t[p + "mlp.gate_proj.weight"] = w(INTER, HIDDEN)
        t[p + "mlp.up_proj.weight"] = w(INTER, HIDDEN)
        t[p + "mlp.down_proj.weight"] = w(HIDDEN, INTER)
        t[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN, dtype=dtype)
    t["model.norm.weight"] = torch.ones(HIDDEN, dtype=dtype)
    t["lm_head.weight"] = w(VOCAB, HIDDEN)
    return t


def write_folder(folder, tensors, shards=2, index=True, config=True):
    """A Hugging Face-style folder: config.json, shards split by key order, optionally the index."""
    folder.mkdir()
    if config:
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": HIDDEN,
                                                        "intermediate_size": INTER, "vocab_size": VOCAB,
                                                        "num_hidden_layers": LAYERS}))
    keys = list(tensors)
    wmap = {}
    for s in range(shards):
        part = keys[s * len(keys) // shards:(s + 1) * len(keys) // shards]
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k] for k in part}, str(folder / name), metadata={"format": "pt"})
        wmap.update({k: name for k in part})
    if index:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1},
                                                                        "weight_map": wmap}))
    return folder


@pytest.fixture
def llama(tmp_path):
    return llama_tensors(), write_folder(tmp_path / "llama", llama_tensors())


def test_roles_from_names_and_config(llama):
    _, folder = llama
    ck = checkpoint.Checkpoint(folder)
    roles = {e.key: (e.kind, e.role) for e in ck.entries}
    assert roles["model.embed_tokens.weight"] == ("other", "embedding")
    assert roles["model.norm.weight"] == ("other", "norm")
    assert roles["model.layers.0.self_attn.q_proj.weight"] == ("linear", "attention")
    assert roles["model.layers.1.mlp.down_proj.weight"] == ("linear", "mlp")
    assert roles["lm_head.weight"] == ("linear", "lm_head")
    assert ck.dtype() == "bf16" and ck.model_type == "llama" and len(ck.files) == 2
    assert "model_type llama" in ck.describe()


def test_every_spelling_of_a_checkpoint_profiles_the_same(llama, tmp_path):
    tensors, folder = llama
    no_index = write_folder(tmp_path / "noindex", tensors, shards=3, index=False)
    single = tmp_path / "single.safetensors"
    save_file(tensors, str(single))
    results = [profile_mod.profile(p) for p in (folder, folder / "model.safetensors.index.json", no_index, single)]
    for r in results:
        assert r["format"] == "bf16"  # the stored format, not fp32
        assert r["total"] == results[0]["total"]
        assert {row["role"] for row in r["layers"]} == {"attention", "mlp", "lm_head"}
    # the same weights widened to float32 in memory, profiled in bf16: the same figures
    loaded = model_mod.load(str(folder))
    assert loaded.dtype() == "bf16" and all(layer.kind == "linear" for layer in loaded.layers)
    assert profile_mod.profile(loaded)["total"] == results[0]["total"]
    fp32 = profile_mod.profile(folder, "fp32")["total"]
    assert fp32["zero_bit_frac"] > results[0]["total"]["zero_bit_frac"]  # 16 empty low bits in fp32


@pytest.mark.parametrize("fmt", ["bf16", "fp32", "int8"])
def test_chunked_counts_equal_whole_tensor_counts(llama, monkeypatch, fmt):
    _, folder = llama
    whole = profile_mod.profile(folder, fmt)
    monkeypatch.setattr(checkpoint, "CHUNK_VALUES", 100)  # a few rows per chunk
    seen = []
    chunked = profile_mod.profile(folder, fmt, progress=lambda done, total, name: seen.append((done, total)))
    assert chunked["total"] == whole["total"] and chunked["layers"] == whole["layers"]
    assert len(seen) > 20 and seen[-1][0] == seen[-1][1]


def test_conv1d_and_transposed_gpt2_weights(tmp_path):
    conv = torch.randn(8, 4, 3)
    torch.save({"conv.weight": conv, "emb.embed_tokens.weight": torch.randn(10, 4)}, tmp_path / "c.pt")
    m = model_mod.load(str(tmp_path / "c.pt"))
    assert [(layer.name, layer.kind, layer.weight.shape) for layer in m.layers] == [("conv", "conv", (8, 4, 1, 3))]
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    w = torch.randn(16, 48)  # transformers Conv1D: [in, out]
    save_file({"h.0.attn.c_attn.weight": w, "wte.weight": torch.randn(20, 16)}, str(folder / "model.safetensors"))
    ck = checkpoint.Checkpoint(folder)
    e, tied = [e for e in ck.entries if e.kind == "linear"]
    assert e.transposed and e.weight_shape == (48, 16) and torch.equal(ck.read(e, 5, 9), w.t()[5:9])
    assert tied.tied and tied.role == "lm_head" and "tied embeddings" in ck.describe()  # GPT-2 ties wte
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "tie_word_embeddings": False}))
    got = profile_mod.profile(folder)
    ref = profile_mod.profile(model_mod.Model("ref", [model_mod.Layer("x", "linear", w.t().numpy().copy())]))
    assert got["total"] == ref["total"]


def test_tokens_give_gemm_shapes_and_notes_say_what_was_assumed(llama):
    _, folder = llama
    m = model_mod.load(str(folder), tokens=16)
    q = next(layer for layer in m.layers if layer.name.endswith("q_proj"))
    assert q.in_shape == (16, HIDDEN) and q.out_shape == (16, HIDDEN) and q.macs == 16 * HIDDEN * HIDDEN
    assert any("16 tokens" in n for n in m.notes)
    assert any("one token" in n for n in model_mod.load(str(folder)).notes)


def test_prune_folder_keeps_dtype_layout_index_and_config(llama, tmp_path, capsys):
    tensors, folder = llama
    out = tmp_path / "pruned"
    assert main(["prune", str(folder), "--method", "truncate:keep=3", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in folder.iterdir()] + ["bitsieve-prune.json"])
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert "truncate" in index["metadata"]["bitsieve.methods"]
    new = {}
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            assert "truncate:keep=3" in f.metadata()["bitsieve.methods"] and f.metadata()["format"] == "pt"
        new.update(load_file(str(shard)))
    assert set(new) == set(tensors) and all(v.dtype == torch.bfloat16 for v in new.values())
    assert torch.equal(new["model.embed_tokens.weight"], tensors["model.embed_tokens.weight"])
    assert torch.equal(new["model.norm.weight"], tensors["model.norm.weight"])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(new[q], tensors[q])
    side = json.loads((out / "bitsieve-prune.json").read_text())
    assert side["total"]["rounded"] == 0  # pruned in bf16 planes: every result is a bf16 value
    assert {r["dtype"] for r in side["layers"]} == {"bf16"}
    # never over an existing output without --force, and no temporary folder left behind
    assert main(["prune", str(folder), "--method", "truncate:keep=2", "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".pruned.{int(dead.stdout)}.k2j_x9.tmp"  # a killed prune's half-written folder
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"half")
    assert main(["prune", str(folder), "--method", "truncate:keep=2", "-o", str(out), "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["methods"][0].startswith("truncate:keep=2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama", "pruned"]
    assert main(["prune", str(folder), "--method", "truncate", "-o", str(folder / "x")]) == 2


@pytest.mark.parametrize("spec", ["bitx:keep=3", "bitxpro:keep=3", "truncate:keep=4", "quantize:bits=4",
                                  "bitwave", "bbs", "truncate:keep=5+bbs:beta=0.3"])
def test_streamed_pruning_equals_pruning_the_model_in_memory(llama, tmp_path, monkeypatch, spec):
    """Row chunks of each tensor, one tensor at a time (BBS's beta ranking channels over the whole model in a
    first pass) give exactly what bitsieve.methods.apply_model gives on the whole model."""
    from bitsieve.methods import apply_model, parse_specs

    _, folder = llama
    steps = parse_specs(spec.split("+"), {"format": None, "group": None})
    layers = model_mod.load(str(folder)).layers
    want = {f"{layer.name}.weight": torch.from_numpy(r.weight).to(torch.bfloat16)
            for layer, r in zip(layers, apply_model(layers, steps))}
    monkeypatch.setattr(checkpoint, "CHUNK_VALUES", 100)
    ck = checkpoint.Checkpoint(folder)
    side = checkpoint.prune(ck, steps, tmp_path, single=False)
    got = {}
    for shard in ck.files:
        got.update(load_file(str(tmp_path / shard.name)))
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert len(side["layers"]) == len(want) and side["layers"][0]["steps"][-1]["method"] == steps[-1].name


def test_prune_single_file_keeps_fp16(tmp_path, capsys):
    t = {"fc.weight": torch.randn(32, 64).half(), "fc.bias": torch.randn(32).half()}
    src = tmp_path / "m.safetensors"
    save_file(t, str(src))
    out = tmp_path / "o.safetensors"
    assert main(["prune", str(src), "--method", "truncate:keep=4", "-o", str(out)]) == 0
    new = load_file(str(out))
    assert new["fc.weight"].dtype == torch.float16 and torch.equal(new["fc.bias"], t["fc.bias"])
    assert not torch.equal(new["fc.weight"], t["fc.weight"])
    assert json.loads((tmp_path / "o.json").read_text())["layers"][0]["dtype"] == "fp16"


def test_bad_checkpoints_fail_in_one_line(llama, tmp_path):
    _, folder = llama
    with pytest.raises(UserError, match="directory with no .safetensors"):
        checkpoint.Checkpoint(tmp_path)
    index = folder / "model.safetensors.index.json"
    wmap = json.loads(index.read_text())
    wmap["weight_map"]["extra.weight"] = "../elsewhere.safetensors"
    index.write_text(json.dumps(wmap))
    with pytest.raises(UserError, match="not a file in its folder"):
        checkpoint.Checkpoint(folder)
    wmap["weight_map"]["extra.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(wmap))
    with pytest.raises(UserError, match="extra.weight of the index is not in its shard"):
        checkpoint.Checkpoint(folder)
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        checkpoint.Checkpoint(shard)


def test_models_lists_the_builtins_without_importing_torch():
    from bitsieve.cli_methods import MODELS
    from bitsieve.zoo import BUILTINS

    assert [(b.name, b.task, b.params, b.description) for b in BUILTINS.values()] == list(MODELS)
    code = ("import sys; from bitsieve.cli import main; rc = main(['models', '--json']); "
            "sys.stderr.write(str('torch' in sys.modules)); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "False" and len(json.loads(r.stdout)) == len(MODELS)
