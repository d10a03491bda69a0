"""The import layer: built-ins with real shapes/activations, every file format, every user error."""

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from bitsieve import data, zoo
from bitsieve import model as M
from bitsieve.errors import UserError

torch.set_num_threads(1)
LAYER_COUNTS = {  # (convs, linears) in forward order
    "efficientnet-lite0": (49, 1),
    "efficientnet-lite1": (64, 1),
    "efficientnet-lite2": (64, 1),
    "mobilenet-v2": (52, 1),
    "mtcnn-pnet": (5, 0),
    "mtcnn-rnet": (3, 3),
    "mtcnn-onet": (4, 4),
    "lenet-mnist": (2, 3),
    "minilm-l6": (0, 37),
}


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(bits(a), bits(b))


@pytest.fixture(scope="module")
def rnet_state():
    return zoo.get("mtcnn-rnet").load().state_dict()


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "minilm-l6" else n for n in LAYER_COUNTS]
)
def test_builtin_layers_have_real_shapes(name):
    m = M.load(name)
    kinds = [layer.kind for layer in m.layers]
    assert (kinds.count("conv"), kinds.count("linear")) == LAYER_COUNTS[name] and "other" not in kinds
    for layer in m.layers:
        assert layer.weight.dtype == np.float32 and layer.in_shape and layer.out_shape and layer.macs > 0
        assert layer.activation is None
        assert np.shares_memory(layer.weight, m.module.get_submodule(layer.name).weight.detach().numpy())


def test_efficientnet_lite0_geometry():
    m = M.load("efficientnet-lite0")
    stem, first_dw, fc = m.layers[0], m.layers[1], m.layers[-1]
    assert (stem.name, stem.stride, stem.weight.shape) == ("_conv_stem", (2, 2), (32, 3, 3, 3))
    assert stem.in_shape == (3, 225, 225) and stem.out_shape == (32, 112, 112)  # SAME padding (0, 1) included
    assert first_dw.groups == 32 and first_dw.weight.shape == (32, 1, 3, 3)
    assert (fc.name, fc.kind, fc.in_shape, fc.out_shape) == ("_fc", "linear", (1280,), (1000,))
    assert sum(layer.macs for layer in m.layers) == 385_187_552


def test_mobilenet_macs_match_the_paper():
    assert sum(layer.macs for layer in M.load("mobilenet-v2").layers) == 300_774_272  # paper: 300M


@pytest.mark.parametrize("name", ["efficientnet-lite0", "mtcnn-rnet"])
def test_activations_reproduce_layer_outputs(name):
    m = M.load(name, activations=2)
    outputs = {}
    hooks = [
        m.module.get_submodule(layer.name).register_forward_hook(
            lambda mod, args, out, name=layer.name: outputs.setdefault(name, out.detach().clone())
        )
        for layer in m.layers
    ]
    with torch.no_grad():
        m.module(m.builtin.sample_input(2))
    for hook in hooks:
        hook.remove()
    for layer in m.layers:
        assert layer.activation.shape == (2, *layer.in_shape)
        bias = m.module.get_submodule(layer.name).bias
        x, w = torch.from_numpy(layer.activation), torch.from_numpy(layer.weight)
        if layer.kind == "conv":
            y = F.conv2d(x, w, bias, layer.stride, layer.padding, groups=layer.groups)
        else:
            y = F.linear(x, w, bias)
        assert y.shape[1:] == layer.out_shape
        torch.testing.assert_close(y, outputs[layer.name], rtol=1e-4, atol=1e-4)


def test_capture_activations_later_and_include_other():
    m = M.load("mtcnn-rnet", include_other=True)
    assert [layer.name for layer in m.layers][:6] == ["conv1", "conv2", "conv3", "dense4", "dense5_1", "dense5_2"]
    assert {"conv1.bias", "prelu1", "dense4.bias"} <= {layer.name for layer in m.layers if layer.kind == "other"}
    M.capture_activations(m, 3)
    assert m.layers[0].activation.shape == (3, 3, 24, 24)
    assert m.layers[3].activation.shape == (3, 576)


def _assert_same_layers(loaded: M.Model, state: dict, names=None):
    reference = {k.removesuffix(".weight"): v.numpy() for k, v in state.items() if v.ndim in (2, 4)}
    got = {layer.name: layer for layer in loaded.layers}
    assert set(got) == set(names or reference)
    for name, layer in got.items():
        assert layer.kind == ("conv" if reference[name].ndim == 4 else "linear")
        assert same_bits(layer.weight, reference[name])


def test_state_dict_round_trip(tmp_path, rnet_state):
    torch.save(rnet_state, tmp_path / "rnet.pt")
    torch.save({"state_dict": rnet_state, "epoch": 3}, tmp_path / "wrapped.pth")
    for file in ("rnet.pt", "wrapped.pth"):
        loaded = M.load(str(tmp_path / file))
        _assert_same_layers(loaded, rnet_state)
        assert loaded.module is None and loaded.layers[0].macs is None


def test_safetensors_round_trip_and_half_precision(tmp_path, rnet_state):
    safetensors.torch.save_file(dict(rnet_state), tmp_path / "rnet.safetensors")
    _assert_same_layers(M.load(str(tmp_path / "rnet.safetensors")), rnet_state)
    for dtype in (torch.float16, torch.bfloat16):
        half = {k: v.to(dtype) for k, v in rnet_state.items()}
        half["steps"] = torch.arange(3)  # integer tensors are skipped
        safetensors.torch.save_file(half, tmp_path / "half.safetensors")
        loaded = M.load(str(tmp_path / "half.safetensors"), include_other=True)
        assert "steps" not in {layer.name for layer in loaded.layers}
        by_name = {k.removesuffix(".weight"): v for k, v in half.items()}
        for layer in loaded.layers:
            assert same_bits(layer.weight, by_name[layer.name].float().numpy())  # widening is exact


def test_onnx_export_round_trip(tmp_path, rnet_state):
    module = zoo.get("mtcnn-rnet").load()
    path = tmp_path / "rnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, 24, 24),), str(path), dynamo=False)
    loaded = M.load(str(path))
    _assert_same_layers(loaded, rnet_state)
    assert [layer.name for layer in loaded.layers] == ["conv1", "conv2", "conv3", "dense4", "dense5_1", "dense5_2"]


def test_onnx_layouts_from_consuming_nodes(tmp_path):
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((8, 2, 3, 3)).astype(np.float16)
    gemm_b = rng.standard_normal((32, 5)).astype(np.float32)  # [I, O], transB = 0
    matmul_b = rng.standard_normal((5, 7)).astype(np.float32)  # [I, O]
    const = rng.standard_normal((7, 6)).astype(np.float32)  # Gemm transB = 1: already [O, I]
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(const, "k")),
        helper.make_node("Conv", ["x", "conv.weight"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1], group=2),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["g"]),
        helper.make_node("MatMul", ["g", "mm"], ["h"]),
        helper.make_node("Gemm", ["h", "k"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "layouts",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        [numpy_helper.from_array(a, n) for a, n in ((conv, "conv.weight"), (gemm_b, "fc"), (matmul_b, "mm"))]
        + [numpy_helper.from_array(np.arange(4, dtype=np.int64), "ints")],
    )
    onnx.save(helper.make_model(graph), tmp_path / "layouts.onnx")
    layers = M.load(str(tmp_path / "layouts.onnx")).layers
    assert [(l.name, l.kind) for l in layers] == [("conv", "conv"), ("fc", "linear"), ("mm", "linear"), ("k", "linear")]
    assert (layers[0].stride, layers[0].padding, layers[0].groups) == ((2, 2), (1, 1), 2)
    assert same_bits(layers[0].weight, conv.astype(np.float32))
    assert same_bits(layers[1].weight, gemm_b.T) and same_bits(layers[2].weight, matmul_b.T)
    assert same_bits(layers[3].weight, const)


def test_onnx_constant_node_weights():
    folder = Path(data.package_dir("rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4"))
    m = M.load(str(folder / "models" / "ch_PP-OCRv4_det_infer.onnx"))
    assert len(m.layers) == 62 and {layer.kind for layer in m.layers} == {"conv"}  # all from Constant nodes
    assert sum(layer.weight.size for layer in m.layers) == 1_161_920
    first = m.layers[0]
    assert (first.name, first.weight.shape) == ("conv2d_0.w_0", (16, 3, 3, 3))
    assert (first.stride, first.padding) == ((2, 2), (1, 1))
    assert any(layer.groups > 1 for layer in m.layers)


def test_truncated_and_garbage_files(tmp_path, rnet_state):
    safetensors.torch.save_file(dict(rnet_state), tmp_path / "full.safetensors")
    raw = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="corrupted or truncated safetensors"):
        M.load(str(tmp_path / "cut.safetensors"))
    torch.save(rnet_state, tmp_path / "full.pt")
    raw = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="cannot read .*cut.pt: corrupted"):
        M.load(str(tmp_path / "cut.pt"))
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError, match="junk.onnx"):
        M.load(str(tmp_path / "junk.onnx"))


class Payload:
    """Unpickling this would create a file: what a malicious checkpoint could do."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv.weight": torch.ones(2, 2, 3, 3), "x": Payload(marker)}, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(UserError, match="refusing to unpickle code from .*evil.pt"):
        M.load(str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_nonfinite_weights(tmp_path, rnet_state):
    state = {k: v.clone() for k, v in rnet_state.items()}
    state["conv2.weight"][0, 0, 0, :2] = torch.tensor([float("nan"), float("inf")])
    safetensors.torch.save_file(state, tmp_path / "nan.safetensors")
    with pytest.raises(UserError) as err:
        M.load(str(tmp_path / "nan.safetensors"))
    assert str(err.value) == "layer conv2 has 2 non-finite weights (use --allow-nonfinite to zero and count them)"
    layers = {layer.name: layer for layer in M.load(str(tmp_path / "nan.safetensors"), allow_nonfinite=True).layers}
    assert layers["conv2"].nonfinite == 2 and layers["conv1"].nonfinite == 0
    expected = state["conv2.weight"].nan_to_num(0.0, 0.0, 0.0).numpy()
    assert same_bits(layers["conv2"].weight, expected)


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        M.load(str(tmp_path / "absent.safetensors"))
    with pytest.raises(UserError, match="unknown built-in model 'nosuch'.*mobilenet-v2"):
        M.load("nosuch")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match="unknown model file type '.bin'"):
        M.load(str(tmp_path / "weights.bin"))
    with pytest.raises(UserError, match="is a directory"):
        M.load(str(tmp_path))
    torch.save({"steps": torch.arange(5), "bias": torch.zeros(3)}, tmp_path / "empty.pt")
    with pytest.raises(UserError, match="no weight tensors in"):
        M.load(str(tmp_path / "empty.pt"))
    assert [layer.name for layer in M.load(str(tmp_path / "empty.pt"), include_other=True).layers] == ["bias"]
    torch.save([torch.zeros(2, 2)], tmp_path / "list.pt")
    with pytest.raises(UserError, match="holds a list, not a state dict"):
        M.load(str(tmp_path / "list.pt"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "fc.pt")
    with pytest.raises(UserError, match="cannot capture activations"):
        M.load(str(tmp_path / "fc.pt"), activations=1)
    with pytest.raises(UserError, match="only built-in models can run"):
        M.capture_activations(M.load(str(tmp_path / "fc.pt")))
