"""ONNX files: layer names from the consuming node (made-up initializer names), shapes from ONNX shape inference,
checked against the torch module the file was exported from."""
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from bitsieve import model as M
from bitsieve.cli import main


class Net(nn.Module):
    """Convs with stride, padding and groups, a Conv1d behind a reshape, and linear layers on tokens, whose
    weights the TorchScript exporter stores transposed under made-up names (onnx::MatMul_N)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 5, groups=2)
        self.conv3 = nn.Conv1d(8, 6, 3, stride=2, padding=2)
        self.blocks = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Sequential(nn.Linear(10, 4)))

    def forward(self, x):
        y = self.conv3(self.conv2(torch.relu(self.conv1(x))).flatten(2))
        return self.blocks(y.transpose(1, 2))


def test_torchscript_export_names_and_shapes_match_the_module(tmp_path, capsys):
    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(2, 3, 19, 21)
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    assert any(t.name.startswith("onnx::MatMul") for t in onnx.load(str(path)).graph.initializer)
    got = M.load(str(path))
    want = M.load(net, example_inputs=x)  # the torch hooks' names and shapes
    assert [layer.name for layer in got.layers if layer.kind != "other"] == [
        "conv1", "conv2", "conv3", "blocks.0", "blocks.2.0"]
    by_name = {layer.name: layer for layer in got.layers}
    for w in want.layers:
        g = by_name[w.name]
        assert (g.kind, g.stride, g.padding, g.groups) == (w.kind, w.stride, w.padding, w.groups), w.name
        assert (g.in_shape, g.out_shape, g.macs) == (w.in_shape, w.out_shape, w.macs), w.name
        assert np.array_equal(g.weight, w.weight)
    assert by_name["conv1"].out_shape == (8, 10, 11) and by_name["blocks.0"].in_shape == (22, 6)
    assert not any("no input shapes" in n for n in got.notes)  # nothing assumed
    assert main(["profile", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert [r["name"] for r in rows][:5] == ["conv1", "conv2", "conv3", "blocks.0", "blocks.2.0"]


def _node(op, inputs, output, name, scopes=None, **attrs):
    node = helper.make_node(op, inputs, [output], name=name, **attrs)
    if scopes is not None:  # what torch.onnx.export(dynamo=True) records on every node
        node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(scopes))
    return node


def dynamo_style(tmp_path, spatial=(15, 15)):
    """A graph as the dynamo exporter writes it: initializers named val_N, nodes named node_*, module paths in
    metadata. Built with onnx.helper (the dynamo exporter needs onnxscript)."""
    rng = np.random.default_rng(0)
    w = {"val_37": rng.standard_normal((8, 3, 3, 3)), "val_38": rng.standard_normal((8 * 8 * 8, 16)),
         "val_40": rng.standard_normal((16, 5)), "head.weight": rng.standard_normal((4, 5)),
         "val_41": rng.standard_normal((4, 4))}
    nodes = [
        _node("Conv", ["x", "val_37"], "c", "node_conv2d", ["", "stem", "conv2d"], strides=[2, 2],
              pads=[1, 1, 1, 1]),
        _node("Flatten", ["c"], "f", "node_flatten"),
        _node("MatMul", ["f", "val_38"], "h", "node_linear", ["", "encoder", "encoder.fc1", "linear"]),
        _node("MatMul", ["h", "val_40"], "g", "node_MatMul_7"),  # no metadata: the node's name
        _node("Gemm", ["g", "head.weight"], "y0", "node_linear_2", ["", "head", "linear_2"], transB=1),
        _node("MatMul", ["y0", "val_41"], "y", "node_linear_3", ["", "head", "linear_3"]),  # 'head' again
    ]
    graph = helper.make_graph(
        nodes, "dynamo_style", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, *spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in w.items()])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, w


def test_dynamo_names_from_module_scopes_and_shapes_from_inference(tmp_path):
    path, w = dynamo_style(tmp_path)
    layers = [layer for layer in M.load(str(path)).layers if layer.kind != "other"]
    assert [(l.name, l.kind) for l in layers] == [
        ("stem", "conv"), ("encoder.fc1", "linear"), ("node_MatMul_7", "linear"), ("head", "linear"),
        ("head/node_linear_3", "linear")]
    conv = torch.nn.functional.conv2d(torch.zeros(1, 3, 15, 15), torch.from_numpy(w["val_37"]).float(),
                                      stride=2, padding=1)
    assert layers[0].out_shape == tuple(conv.shape[1:]) == (8, 8, 8) and layers[0].in_shape == (3, 15, 15)
    assert (layers[0].stride, layers[0].padding) == ((2, 2), (1, 1))
    assert layers[0].macs == 8 * 8 * w["val_37"].size
    assert [(l.in_shape, l.out_shape) for l in layers[1:]] == [((512,), (16,)), ((16,), (5,)), ((5,), (4,)),
                                                               ((4,), (4,))]
    assert np.array_equal(layers[1].weight, w["val_38"].T.astype(np.float32))  # MatMul B is [I, O]


def test_symbolic_spatial_size_is_left_to_input_shape(tmp_path):
    path, _ = dynamo_style(tmp_path, spatial=("h", "w"))
    m = M.load(str(path))
    conv = next(layer for layer in m.layers if layer.kind == "conv")
    assert conv.in_shape is None and any("one output pixel" in n for n in m.notes)
    conv = next(layer for layer in M.load(str(path), input_shape="1x3x15x15").layers if layer.kind == "conv")
    assert conv.out_shape == (8, 8, 8)


def test_unreadable_shapes_do_not_stop_loading(tmp_path):
    """A graph shape inference cannot follow (a conv fed a 2-D tensor) still loads, without shapes."""
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "val_1"], ["y"], name="node_bad")], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "val_1")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "bad.onnx"))
    (layer,) = M.load(str(tmp_path / "bad.onnx")).layers
    assert (layer.name, layer.in_shape) == ("node_bad", None)


@pytest.mark.parametrize("name", ["onnx::MatMul_12", "val_3", "const_fold_opt__7", ""])
def test_made_up_names(name):
    node = helper.make_node("MatMul", ["a", name], ["b"], name="/enc/enc.1/fc/MatMul")
    assert M._onnx_name(name, node, set()) == "enc.1.fc"
    assert M._onnx_name("fc.weight", node, set()) == "fc"
    assert M._onnx_name(name, node, {"enc.1.fc"}) == "enc.1.fc/enc/enc.1/fc/MatMul"
