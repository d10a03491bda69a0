"""The `bitsieve methods`, `prune` and `eval` commands."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.torch import save_file

from bitsieve import model as model_mod
from bitsieve.cli import main
from bitsieve.methods import REGISTRY, apply_model, parse_specs


def run(capsys, *args):
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_methods_lists_everything(capsys):
    rc, out, _ = run(capsys, "methods", "--json")
    assert rc == 0
    rows = json.loads(out)
    names = {r["name"] for r in rows if r["kind"] == "method"}
    assert names == set(REGISTRY)
    for r in rows:
        assert r["confidence"] and r["source"]
    rc, out, _ = run(capsys, "methods")
    assert rc == 0 and "bitx" in out and "reference code" in out


def test_prune_builtin_writes_weights_and_sidecar(tmp_path, capsys):
    o = tmp_path / "p.safetensors"
    rc, out, err = run(capsys, "prune", "lenet-mnist", "--method", "bbs:k=2", "--method", "bitx:keep=4",
                       "--format", "int8", "-o", str(o))
    assert rc == 2 and "compose the methods with '+'" in err and "\n" not in err.strip() and not o.exists()
    rc, out, err = run(capsys, "prune", "lenet-mnist", "--method", "bbs:k=2+bitx:keep=4", "--format", "int8",
                       "-o", str(o))
    assert rc == 0, err
    side = json.loads(o.with_suffix(".json").read_text())
    assert side["model"] == "lenet-mnist"
    assert side["methods"][0].startswith("bbs:k=2") and "format=int8" in side["methods"][1]
    assert [layer["name"] for layer in side["layers"]] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert all(layer["changed_bits"] > 0 for layer in side["layers"])
    t = load_file(str(o))
    m = model_mod.load("lenet-mnist")
    res = apply_model(m.layers, parse_specs(["bbs:k=2,format=int8", "bitx:keep=4,format=int8"]))
    for r in res:
        assert np.array_equal(t[f"{r.name}.weight"], r.weight)
    assert np.array_equal(t["conv1.bias"], m.module.conv1.bias.detach().numpy())  # untouched tensors kept
    rc, _, err = run(capsys, "prune", "lenet-mnist", "--method", "bitx", "-o", str(o))
    assert rc == 2 and "exists" in err
    rc, _, err = run(capsys, "prune", "lenet-mnist", "--method", "bitx", "-o", str(o), "--force")
    assert rc == 0
    # the pruned file evaluates like the in-memory variant
    rc, out, err = run(capsys, "eval", str(o), "--limit", "300", "--json")
    assert rc == 0, err
    from_file = json.loads(out)["variants"][0]["value"]
    rc, out, _ = run(capsys, "eval", "lenet-mnist", "--method", "bitx", "--limit", "300", "--json")
    assert json.loads(out)["variants"][1]["value"] == from_file


def test_prune_from_a_weights_file(tmp_path, capsys):
    m = model_mod.load("lenet-mnist")
    src = tmp_path / "lenet.safetensors"
    save_file({k: v.contiguous() for k, v in m.module.state_dict().items()}, str(src))
    o = tmp_path / "out.safetensors"
    rc, _, err = run(capsys, "prune", str(src), "--method", "truncate:keep=4", "-o", str(o))
    assert rc == 0, err
    a, b = load_file(str(src)), load_file(str(o))
    assert set(a) == set(b)
    assert np.array_equal(a["fc1.bias"], b["fc1.bias"])
    assert not np.array_equal(a["fc1.weight"], b["fc1.weight"])
    assert b["conv1.weight"].shape == a["conv1.weight"].shape


@pytest.mark.parametrize("args", [
    ["prune", "lenet-mnist", "--method", "bitlet", "-o", "X.safetensors"],
    ["prune", "lenet-mnist", "--method", "bitx:keep=99", "-o", "X.safetensors"],
    ["prune", "lenet-mnist", "--method", "nosuch", "-o", "X.safetensors"],
    ["prune", "lenet-mnist", "--method", "bitx", "-o", "X.npz"],
    ["prune", "lenet-mnist", "--method", "bitx", "--format", "fp64", "-o", "X.safetensors"],
    ["eval", "lenet-mnist", "--task", "stsb"],
    ["eval", "lenet-mnist", "--method", "bitlet+bitx", "--limit", "5"],
    ["eval", "lenet-mnist", "--limit", "-1"],
])
def test_user_errors_exit_2(args, tmp_path, capsys):
    args = [str(tmp_path / a) if a.startswith("X.") else a for a in args]
    rc, _, err = run(capsys, *args)
    assert rc == 2 and err.startswith("bitsieve: error:")


def test_eval_table_and_json(capsys):
    rc, out, _ = run(capsys, "eval", "lenet-mnist", "--method", "bitx:keep=1", "--method", "bitwave",
                     "--limit", "200")
    assert rc == 0 and "bitx:keep=1" in out and "bitwave" in out
    table = out
    rc, out, _ = run(capsys, "eval", "lenet-mnist", "--method", "bitx:keep=1", "--limit", "200", "--json")
    r = json.loads(out)
    o, v = r["variants"]  # the table prints each interval, n and the paired change's interval
    assert f"[{o['ci_low']:.2f}, {o['ci_high']:.2f}]" in table and f" {o['n']} " in table
    assert f"[{v['delta_ci_low']:+.2f}, {v['delta_ci_high']:+.2f}]" in table
    assert r["samples"] == 200 and r["variants"][0]["method"] == "" and r["variants"][1]["delta"] < 0
    assert any(row["metric"] == "accuracy_delta" for row in r["rows"])


@pytest.mark.parametrize("args", [["simulate", "lenet-mnist", "--accel", "bitx"],
                                  ["eval", "lenet-mnist", "--method", "bitx", "--limit", "200"]])
def test_progress_bar_only_on_a_terminal(args):
    """A long command draws its bar on stderr when stderr is a terminal, and stdout (a pipe here) gets only
    the table; without a terminal (every other test) stderr stays empty."""
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    p = subprocess.Popen([sys.executable, "-m", "bitsieve", *args], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    err = b""
    try:
        while chunk := os.read(master, 65536):  # drained as it comes: a full pty would block the child
            err += chunk
    except OSError:  # the pty reports EIO once the child's end is closed
        pass
    os.close(master)
    out = p.stdout.read()
    assert p.wait(timeout=300) == 0 and args[0].encode() in err and b"\x1b[" in err  # a live, redrawn bar
    assert b"\x1b[" not in out and b"lenet" in out
