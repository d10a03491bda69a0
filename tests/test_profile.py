"""`bitsieve profile` against an independent, straightforward bit count, and every user error via the CLI."""
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from bitsieve.cli import main


def naive_profile(weights, fmt="fp32", group=64):
    """Plain NumPy, one significance at a time: what every profile figure should be."""
    tot = dict(values=0, zero=0, bits=0, ones=np.zeros(24), ess=0, essmax=0, planes=0, zplanes=0, groups=0,
               densest=0, densestmax=0, lost=0)
    for w in weights:
        rows = np.moveaxis(w, 1, -1).reshape(-1, w.shape[1]) if w.ndim >= 2 else w.reshape(1, -1)
        if fmt == "fp32":
            u = rows.astype(np.float32).view(np.uint32).astype(np.int64)
            e = (u >> 23) & 255
            sig = (u & 0x7FFFFF) | np.where(e > 0, 1 << 23, 0)
            e = np.maximum(e, 1)
            nb = 24
        else:  # int8: symmetric per-output-channel scale, sign-magnitude
            oc = np.repeat(np.arange(w.shape[0]), rows.shape[0] // w.shape[0])
            amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
            scale = np.where(amax > 0, amax / 127, 1.0)
            sig = np.abs(np.rint(rows / scale[oc][:, None])).astype(np.int64)
            e = np.ones_like(sig)
            nb = 7
        pad = -rows.shape[1] % group
        valid = np.pad(np.ones_like(sig, bool), ((0, 0), (0, pad))).reshape(-1, group)
        sig = np.pad(sig, ((0, 0), (0, pad))).reshape(-1, group)
        e = np.pad(e, ((0, 0), (0, pad)), constant_values=1).reshape(-1, group)
        tot["zero"] += int(((sig == 0) & valid).sum())
        shift = e.max(axis=1, keepdims=True) - e
        aligned = np.where(shift >= 32, 0, sig >> np.minimum(shift, 62))
        lost = sig - (aligned << np.minimum(shift, 62))
        tot["lost"] += int(sum(((lost >> s) & 1).sum() for s in range(24)))
        per_plane = np.stack([((aligned >> s) & 1).sum(axis=1) for s in range(nb)], axis=1)
        ess = sum(((aligned >> s) & 1) for s in range(nb))
        tot["values"] += int(valid.sum())
        tot["bits"] += int(valid.sum()) * nb
        tot["ones"][:nb] += per_plane.sum(axis=0)
        tot["ess"] += int(ess.sum())
        tot["essmax"] = max(tot["essmax"], int(ess.max()))
        tot["planes"] += per_plane.size
        tot["zplanes"] += int((per_plane == 0).sum())
        tot["groups"] += per_plane.shape[0]
        tot["densest"] += int(per_plane.max(axis=1).sum())
        tot["densestmax"] = max(tot["densestmax"], int(per_plane.max()))
    n = tot["values"]
    return {
        "values": n, "zero_value_frac": tot["zero"] / n, "zero_bit_frac": 1 - tot["ones"].sum() / tot["bits"],
        "mean_essential_bits": tot["ess"] / n, "max_essential_bits": tot["essmax"],
        "plane_occupancy": list(tot["ones"][:nb] / n), "zero_plane_frac": tot["zplanes"] / tot["planes"],
        "mean_max_plane_ones": tot["densest"] / tot["groups"], "max_max_plane_ones": tot["densestmax"],
        "align_lost_bits": tot["lost"],
    }


def run_json(capsys, *args):
    assert main(["profile", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def check(got, want):
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-12), k


@pytest.mark.slow
@pytest.mark.parametrize("name,fmt,group", [("mtcnn-rnet", "fp32", 64), ("mtcnn-rnet", "int8", 16),
                                            ("efficientnet-lite0", "fp32", 64)])
def test_profile_matches_naive_count(capsys, name, fmt, group):
    from bitsieve.model import load

    weights = [layer.weight for layer in load(name).layers]
    got = run_json(capsys, name, "--format", fmt, "--group", str(group))
    assert got["model"] == name and got["format"] == fmt and got["group"] == group
    check(got["total"], naive_profile(weights, fmt, group))
    for layer, w in zip(got["layers"][:3], weights[:3]):
        check(layer, naive_profile([w], fmt, group))


@pytest.mark.slow
def test_profile_activations_and_csv(capsys, tmp_path):
    out = tmp_path / "p.csv"
    got = run_json(capsys, "mtcnn-rnet", "--activations", "2", "--csv", str(out))
    acts = [r for r in got["layers"] if r["tensor"] == "activation"]
    assert len(acts) == len([r for r in got["layers"] if r["tensor"] == "weight"]) > 0
    assert all(0 <= r["zero_value_frac"] <= 1 for r in acts)
    assert out.read_text().splitlines()[0].startswith("name,tensor,kind")
    assert main(["profile", "mtcnn-rnet", "--csv", str(out)]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    assert main(["profile", "mtcnn-rnet", "--csv", str(out), "--force"]) == 0


def error_line(capsys, *args):
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("bitsieve: error:") and "Traceback" not in err
    return err


def test_user_errors(capsys, tmp_path):
    assert "missing.safetensors" in error_line(capsys, "profile", str(tmp_path / "missing.safetensors"))
    error_line(capsys, "profile", str(tmp_path))  # a folder, not a model file
    assert "unknown" in error_line(capsys, "profile", "no-such-model").lower()
    assert "format" in error_line(capsys, "profile", "mtcnn-rnet", "--format", "fp64")
    assert "1..64" in error_line(capsys, "profile", "mtcnn-rnet", "--group", "65")
    assert "1..64" in error_line(capsys, "profile", "mtcnn-rnet", "--group", "0")
    error_line(capsys, "profile", "mtcnn-rnet", "--align", "sideways")
    error_line(capsys, "profile", "mtcnn-rnet", "--no-such-option")
    error_line(capsys, "frobnicate")
    bad = tmp_path / "bad.safetensors"
    save_file({"w": np.ones((4, 4), np.float32)}, str(bad))
    bad.write_bytes(bad.read_bytes()[:-7])
    error_line(capsys, "profile", str(bad))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07not an onnx model at all" * 3)
    error_line(capsys, "profile", str(junk))


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_malicious_pickle_is_refused_and_does_not_run(capsys, tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.pt"
    with open(f, "wb") as fh:
        torch.save({"w": torch.ones(3, 3), "x": Payload(marker)}, fh, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    error_line(capsys, "profile", str(f))
    assert not marker.exists()


def test_nonfinite_weights(capsys, tmp_path):
    f = tmp_path / "nan.safetensors"
    w = np.ones((8, 8), np.float32)
    w[1, 2], w[3, 3] = np.nan, np.inf
    save_file({"fc.weight": w, "ok.weight": np.ones((2, 2), np.float32)}, str(f))
    assert "layer fc " in error_line(capsys, "profile", str(f))
    got = run_json(capsys, str(f), "--allow-nonfinite")
    assert got["total"]["nonfinite"] == 2
    assert got["total"]["values"] == 68 and got["total"]["zero_value_frac"] == pytest.approx(2 / 68)


def test_console_script_runs():
    exe = Path(sys.executable).with_name("bitsieve")
    r = subprocess.run([str(exe), "profile", "nope.onnx"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
