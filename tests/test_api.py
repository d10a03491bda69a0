"""The Python API on a live nn.Module: load (with the inputs each layer saw), profile, prune_ in place, simulate,
pack; the package imports nothing heavy and its profile/simulate submodules stay importable."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import bitsieve
from bitsieve import model as model_mod
from bitsieve.errors import UserError


@pytest.fixture
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(),
                         nn.Linear(8 * 16, 10)).eval()


def test_load_wraps_a_module_and_captures_its_inputs(net):
    x = torch.randn(2, 4, 16)
    fwd = nn.Sequential(*net[:2], nn.Unflatten(2, (1, 16)), *net[2:])  # Conv1d output seen by a Conv2d
    m = bitsieve.load(fwd, example_inputs=x)
    assert [(layer.name, layer.kind) for layer in m.layers] == [("0", "conv"), ("3", "conv"), ("5", "linear")]
    conv1d = m.layers[0]
    assert conv1d.weight.shape == (8, 4, 1, 3) and conv1d.padding == (0, 1)
    assert conv1d.activation.shape == (2, 4, 1, 16) and np.array_equal(conv1d.activation[:, :, 0], x.numpy())
    assert m.layers[2].in_shape == (128,) and m.layers[2].macs == 1280
    assert np.shares_memory(m.layers[2].weight, fwd[5].weight.detach().numpy())  # views, not copies
    with pytest.raises(UserError, match="no Conv1d, Conv2d or Linear"):
        bitsieve.load(nn.ReLU())
    with pytest.raises(UserError, match="live torch.nn.Module"):
        bitsieve.load("mtcnn-rnet", example_inputs=x)


def test_profile_prune_and_pack_on_a_module(net):
    table = bitsieve.profile(net)
    assert table["format"] == "fp32" and [r["name"] for r in table["layers"]] == ["0", "2", "4"]
    assert '"format": "fp32"' in table.to_json()
    half = bitsieve.profile(net.to(torch.bfloat16))
    assert half["format"] == "bf16" and half["total"]["values"] == table["total"]["values"]
    before = net[4].weight.detach().clone()
    counts = bitsieve.prune_(net, "truncate:keep=2")
    assert net[4].weight.dtype == torch.bfloat16 and not torch.equal(before, net[4].weight)
    assert counts[2]["steps"][0]["format"] == "bf16" and counts[2]["changed_bits"] > 0
    p = bitsieve.pack(net[4].weight, "bf16", group=32)
    assert p.words.shape == (10 * 4, 8)


def test_simulate_a_module_on_its_inputs(net):
    x = torch.randn(3, 4, 16)
    fwd = nn.Sequential(*net[:2], nn.Unflatten(2, (1, 16)), *net[2:])
    rows = bitsieve.simulate(fwd, accel=["bitx", "stripes"], example_inputs=x)
    whole = {(r["accel"], r["metric"]): r["value"] for r in rows if r["layer"] == "*"}
    assert whole[("dense", "speedup")] == 1.0 and whole[("stripes", "cycles")] > 0
    from bitsieve.simulate import Run  # the submodule is still a module

    assert Run.__name__ == "Run" and callable(bitsieve.simulate)


def test_importing_bitsieve_loads_no_torch():
    r = subprocess.run([sys.executable, "-c", "import bitsieve, sys; print('torch' in sys.modules, "
                        "sorted(bitsieve.__all__))"], capture_output=True, text=True)
    assert r.stdout.split()[0] == "False", r.stderr
    assert "'evaluate'," in r.stdout and "'prune_'," in r.stdout
    from bitsieve.evaluate import evaluate_module, split_variants  # the submodule stays a module

    assert callable(bitsieve.evaluate) and callable(split_variants) and evaluate_module.__doc__
    assert isinstance(model_mod.load, type(bitsieve.load)) and bitsieve.load is model_mod.load
