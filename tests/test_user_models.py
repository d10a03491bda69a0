"""User models run on the user's inputs (bitsieve.capture): a live nn.Module, an ONNX file (the reference
evaluator) and Hugging Face folders (tiny Llama and GPT-2 built from config classes, saved locally). The
captured activations are checked against torch forward hooks / torch.nn.functional computed in the test, and
the activation-reading designs then run on them through the real CLI."""
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import bitsieve
from bitsieve import model as model_mod
from bitsieve.cli import main

transformers = pytest.importorskip("transformers")


def hooked_inputs(module, call):
    """Inputs of every Linear/Conv (and GPT-2 Conv1D) module on its first call, by plain forward pre-hooks."""
    seen = {}

    def grab(name, mod, args):
        seen.setdefault(name, args[0].detach().float().clone())

    hs = [sub.register_forward_pre_hook(lambda mod, args, _n=name: grab(_n, mod, args))
          for name, sub in module.named_modules()
          if isinstance(sub, (nn.Linear, nn.Conv2d, nn.Conv1d)) or type(sub).__name__ == "Conv1D"]
    with torch.no_grad():
        call()
    for h in hs:
        h.remove()
    return seen


def run_json(capsys, *args):
    assert main(["simulate", *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def error_line(capsys, *args):
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitsieve: error:") and "\n" not in err
    return err


# ---- (a) a live module through the Python API --------------------------------------------------------------
def test_live_module_activations_and_pragmatic():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 3 * 3, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    m = bitsieve.load(net, example_inputs=x)
    want = hooked_inputs(net, lambda: net(x))
    for layer in m.layers:
        assert np.array_equal(layer.activation, want[layer.name].numpy()), layer.name
    with torch.no_grad():
        np.testing.assert_allclose(m.layers[1].activation, F.relu(F.conv2d(x, net[0].weight, net[0].bias, padding=1)),
                                   rtol=1e-6, atol=1e-6)
    rows = bitsieve.simulate(net, accel=["pragmatic", "stripes"], example_inputs=x, methods=["bitx:keep=3"])
    whole = {(r["accel"], r["method"], r["metric"]): r["value"] for r in rows if r["layer"] == "*"}
    assert 1.0 < whole[("pragmatic", "", "speedup")] < 16.0
    assert {m for _, m, _ in whole} == {"", next(m for _, m, _ in whole if m)}


# ---- (b) an ONNX file, run by onnx.reference --------------------------------------------------------------
@pytest.fixture
def onnx_file(tmp_path):
    """Conv(3->4, 3x3, pad 1, stride 2) -> Relu -> Flatten -> Gemm(transB) -> MatMul, built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((6, 4 * 4 * 4)).astype(np.float32)  # Gemm transB=1: [O, I]
    w3 = rng.standard_normal((6, 5)).astype(np.float32)  # MatMul B: [I, O]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["g"], transB=1), helper.make_node("MatMul", ["g", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))])
    path = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return path, x, (w1, w2, w3)


def test_onnx_activations_match_torch(onnx_file, tmp_path, capsys):
    path, x, (w1, w2, w3) = onnx_file
    m = model_mod.load(path, inputs=tmp_path / "x.npy")
    convs = [layer for layer in m.layers if layer.kind == "conv"]
    lins = [layer for layer in m.layers if layer.kind == "linear"]
    assert len(convs) == 1 and len(lins) == 2
    xt = torch.from_numpy(x)
    f = F.relu(F.conv2d(xt, torch.from_numpy(w1), stride=2, padding=1)).flatten(1)
    g = f @ torch.from_numpy(w2).T
    assert np.array_equal(convs[0].activation, x) and convs[0].out_shape == (4, 4, 4)
    np.testing.assert_allclose(lins[0].activation, f.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lins[1].activation, g.numpy(), rtol=1e-5, atol=1e-4)
    assert np.array_equal(lins[1].weight, w3.T)
    got = run_json(capsys, str(path), "--inputs", str(tmp_path / "x.npy"), "--accel", "stripes,laconic",
                   "--format", "int8")
    assert got["inferences"] == 2
    cyc = {r["accel"]: r["value"] for r in got["rows"] if r["layer"] == "*" and r["metric"] == "cycles"}
    assert cyc["stripes"] > 0 and cyc["laconic"] > 0
    err = error_line(capsys, "simulate", str(path), "--accel", "stripes")
    assert "--inputs" in err  # without inputs the activation designs say how to get them
    np.savez(tmp_path / "bad.npz", other=x)
    assert "'x'" in error_line(capsys, "simulate", str(path), "--inputs", str(tmp_path / "bad.npz"), "--accel", "stripes")


def test_state_dict_cannot_run(tmp_path, capsys):
    torch.save(nn.Linear(4, 3).state_dict(), tmp_path / "w.pt")
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    for cmd in ("simulate", "eval", "compare"):
        assert "no architecture" in error_line(capsys, cmd, str(tmp_path / "w.pt"), "--inputs", str(tmp_path / "x.npy"))
        assert "its own data" in error_line(capsys, cmd, "lenet-mnist", "--inputs", str(tmp_path / "x.npy"))
    assert "--inputs" in error_line(capsys, "simulate", str(tmp_path / "w.pt"), "--inputs", str(tmp_path / "x.csv"))


# ---- (c) Hugging Face folders -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    net = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    root = tmp_path_factory.mktemp("llama")
    net.save_pretrained(root)
    ids = np.random.default_rng(1).integers(0, 96, (2, 12))
    np.save(root.parent / "ids.npy", ids)
    return root, net.float(), ids


def test_hf_llama_activations_match_hooks(llama):
    root, net, ids = llama
    m = model_mod.load(root, inputs=root.parent / "ids.npy")
    want = hooked_inputs(net, lambda: net(input_ids=torch.from_numpy(ids)))
    assert [layer.name for layer in m.layers] == list(want)
    assert len(m.layers) == 2 * 7 + 1 and m.layers[-1].role == "lm_head"
    assert {layer.dtype for layer in m.layers} == {"bf16"} and m.layers[0].role == "attention"
    for layer in m.layers:
        np.testing.assert_allclose(layer.activation, want[layer.name].numpy(), rtol=1e-4, atol=1e-5)
        assert layer.activation.shape == (2, 12, layer.weight.shape[1])
        assert np.array_equal(layer.weight, net.get_submodule(layer.name).weight.detach().numpy())


def test_hf_llama_on_pragmatic_through_the_cli(llama, capsys):
    root, _, ids = llama
    got = run_json(capsys, str(root), "--inputs", str(root.parent / "ids.npy"), "--accel", "pragmatic,bitx",
                   "--method", "bitx:keep=4", "--method", "bbs:k=2")
    assert got["inferences"] == 2 and any("LlamaForCausalLM" in n for n in got["notes"])
    assert {r["method"] for r in got["rows"]} == {"", *{s["method"] for s in got["summary"] if s["method"]}}
    assert len({s["method"] for s in got["summary"]}) == 3  # repeated --method: separate variants
    info = {i["name"]: i for i in got["layers"]}
    assert info["model.layers.0.mlp.up_proj"]["macs"] == 2 * 12 * 64 * 32
    sp = {s["accel"]: s["speedup"] for s in got["summary"] if s["method"] == ""}
    assert sp["pragmatic"] > 1.0
    rows = bitsieve.simulate(str(root), accel=["pragmatic"], inputs=ids)  # the API, an array as inputs
    assert next(r["value"] for r in rows if r["layer"] == "*" and r["accel"] == "pragmatic"
                and r["metric"] == "cycles") == next(s["cycles"] for s in got["summary"]
                                                     if s["accel"] == "pragmatic" and s["method"] == "")
    assert main(["profile", str(root), "--inputs", str(root.parent / "ids.npy"), "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    acts = [r for r in prof["layers"] if r["tensor"] == "activation"]
    assert prof["format"] == "bf16" and len(acts) == 15
    assert prof["activation_total"]["values"] == sum(2 * 12 * r["shape"][-1] for r in acts)


def test_hf_gpt2_conv1d_and_text(tmp_path, capsys):
    """GPT-2's Conv1D layers (weights stored [in, out]) are linear layers; text goes through the folder's own
    tokenizer (a word-level one built here, offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    net = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=16, n_embd=32, n_layer=2, n_head=4,
                                                               n_positions=8, bos_token_id=0,
                                                               eos_token_id=0)).eval()
    net.save_pretrained(tmp_path)
    words = "the a cat dog sat on mat".split()
    tok = Tokenizer(models.WordLevel({"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(tmp_path)
    (tmp_path / "in.txt").write_text("the cat sat on the mat and the dog sat")  # 10 words: cut to 8 positions
    m = model_mod.load(tmp_path, inputs=tmp_path / "in.txt")
    ids = torch.tensor([[1, 3, 5, 6, 1, 7, 0, 1]])
    want = hooked_inputs(net, lambda: net(input_ids=ids))
    attn = m.layers[0]
    assert attn.name == "transformer.h.0.attn.c_attn" and attn.transposed and attn.weight.shape == (96, 32)
    assert np.array_equal(attn.weight, net.transformer.h[0].attn.c_attn.weight.detach().numpy().T)
    for layer in m.layers:
        np.testing.assert_allclose(layer.activation, want[layer.name].numpy(), rtol=1e-4, atol=1e-5)
    before = net.transformer.h[0].attn.c_attn.weight.detach().clone()
    counts = bitsieve.prune_(net, "truncate:keep=3")  # written back in the module's [in, out] layout
    assert counts[0]["changed_bits"] > 0
    after = model_mod.load(net).layers[0].weight
    assert not np.array_equal(after, before.numpy().T) and after.shape == (96, 32)
    (tmp_path / "tokenizer.json").unlink()
    assert "tokenizer" in error_line(capsys, "simulate", str(tmp_path), "--inputs", str(tmp_path / "in.txt"),
                                     "--accel", "pragmatic")


# ---- eval and compare on user models --------------------------------------------------------------------------
def test_eval_onnx_with_labels(onnx_file, tmp_path, capsys):
    """Top-1 of the ONNX graph run by the reference evaluator, for the original and a pruned variant, against
    the same network computed with torch.nn.functional from the (pruned) weights."""
    from bitsieve.methods import apply_model, parse_specs

    path, x, (w1, w2, w3) = onnx_file
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x40.npy", x)

    def logits(a, b, c):
        f = F.relu(F.conv2d(torch.from_numpy(x), torch.from_numpy(a), stride=2, padding=1)).flatten(1)
        return (f @ torch.from_numpy(b).T @ torch.from_numpy(c)).numpy()

    y = logits(w1, w2, w3).argmax(1)
    y[::3] = (y[::3] + 1) % 5  # a third wrong on purpose
    np.save(tmp_path / "y.npy", y)
    assert main(["eval", str(path), "--inputs", str(tmp_path / "x40.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--method", "truncate:keep=1", "--json"]) == 0, capsys.readouterr().err
    got = json.loads(capsys.readouterr().out)
    orig, var = got["variants"]
    assert orig["n"] == 40 and orig["value"] == pytest.approx(100 * np.mean(logits(w1, w2, w3).argmax(1) == y))
    layers = [layer for layer in model_mod.load(path).layers if layer.kind != "other"]
    pw = [r.weight for r in apply_model(layers, parse_specs(["truncate:keep=1,format=fp32"]))]
    want = np.mean(logits(pw[0].reshape(w1.shape), pw[1], pw[2].T).argmax(1) == y)
    assert var["value"] == pytest.approx(100 * want) and var["changed_bits"] > 0
    assert var["agreement"] < 1.0 or var["value"] != orig["value"]
    assert "--labels" in error_line(capsys, "eval", str(path), "--inputs", str(tmp_path / "x40.npy"))


def test_eval_hf_next_token(llama, capsys):
    """A causal LM on its own greedy continuation: next-token top-1 is 100 % on the generated part, and the
    figure equals the one computed from the model's logits here."""
    root, net, _ = llama
    ids = torch.from_numpy(np.random.default_rng(3).integers(0, 96, (1, 4)))
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, net(input_ids=ids).logits[:, -1:].argmax(-1)], 1)
        want = (net(input_ids=ids).logits[:, :-1].argmax(-1) == ids[:, 1:]).float().mean().item()
    np.save(root.parent / "greedy.npy", ids.numpy())
    assert main(["eval", str(root), "--inputs", str(root.parent / "greedy.npy"), "--method", "truncate:keep=1",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["metric"] == "next-token top1" and got["samples"] == 11
    assert got["variants"][0]["value"] == pytest.approx(100 * want) and want >= 8 / 11
    assert got["variants"][1]["bits_removed_frac"] > 0.5


def test_compare_onnx_user_model(onnx_file, tmp_path, capsys):
    """compare on a user model with --inputs keeps the designs that read activations (no labels: no accuracy)."""
    path, _, _ = onnx_file
    args = ["compare", str(path), "--inputs", str(tmp_path / "x.npy"), "--accel", "stripes,pragmatic,bitwave",
            "--workers", "1", "--curves", "none", "--sensitivity", "0", "-o", str(tmp_path / "r.html"), "--json"]
    assert main(args) == 0, capsys.readouterr().err
    got = json.loads(capsys.readouterr().out)
    designs = {d["design"]: d for d in got["designs"] if not d["method"]}
    assert {"stripes", "pragmatic", "bitwave"} <= set(designs) and got["left_out"] == []
    assert designs["pragmatic"]["speedup"] > 1.0 and designs["stripes"]["accuracy"] is None
    direct = run_json(capsys, str(path), "--inputs", str(tmp_path / "x.npy"), "--accel", "pragmatic")
    cyc = next(r["value"] for r in direct["rows"] if r["layer"] == "*" and r["accel"] == "pragmatic"
               and r["metric"] == "cycles")
    assert designs["pragmatic"]["cycles"] == cyc


def test_hf_vision_model_pixel_values(tmp_path, capsys):
    """A float array feeds the model's main input (a ViT's pixel_values): its patch conv and linear layers see
    what torch hooks see, and eval scores top-1 against --labels."""
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    net = transformers.ViTForImageClassification(cfg).eval()
    net.save_pretrained(tmp_path)
    x = np.random.default_rng(4).standard_normal((6, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    m = model_mod.load(tmp_path, inputs=tmp_path / "x.npy")
    want = hooked_inputs(net, lambda: net(pixel_values=torch.from_numpy(x)))
    patch = next(layer for layer in m.layers if layer.kind == "conv")
    assert np.array_equal(patch.activation, x) and patch.out_shape == (16, 2, 2)
    for layer in m.layers:
        np.testing.assert_allclose(layer.activation, want[layer.name].numpy(), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        pred = net(pixel_values=torch.from_numpy(x)).logits.argmax(1).numpy()
    np.save(tmp_path / "y.npy", np.where(np.arange(6) % 2 == 0, pred, (pred + 1) % 3))
    assert main(["eval", str(tmp_path), "--inputs", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["variants"][0]["value"] == pytest.approx(50.0) and got["variants"][0]["n"] == 6
