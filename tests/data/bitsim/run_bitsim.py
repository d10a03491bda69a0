"""Make the BitSim / BBS-MICRO reference tables of tests/test_bitsim_parity.py (run by hand, not by the tests).

    python tests/data/bitsim/run_bitsim.py --bitsim PATH/BitSim --bbs PATH/BBS-MICRO

PATH/BitSim and PATH/BBS-MICRO are checkouts of the public repositories yc2367/BitSim and yc2367/BBS-MICRO at the
commits written into the tables. The script needs torch (the only dependency of the code it runs) and bitsieve;
it does not install anything. It imports the two repositories' own Python code and calls it unchanged:

- BitSim: the accelerator classes' cycle code (``_calc_compute_cycle``) with the constructor arguments of
  BitSim's own test scripts. Only the inputs are replaced: the layer shapes and int8 weights come from bitsieve
  (``LayerDim`` and ``_get_quantized_model`` read files of the authors' machine), the memory set-up (CACTI runs,
  irrelevant to compute cycles) is skipped, and BitVert's sensitive-channel list (a JSON file of the authors'
  machine) is the one bitsieve's BBS method picks. A layer BitSim cannot run is recorded with its error.
- BBS-MICRO: ``bitFlip_*``, ``roundAvg_*`` and ``zeroPointShifting_*`` on the same int8 weights; their outputs
  are stored exactly (the change from the input, int16, zlib + base64; larger layers as the output's sha256).
  Conv weights are handed over in channels-last memory (same values): the code ``.view()``s the permuted
  [K, H, W, C] weight, which torch refuses for a contiguous [K, C, H, W] tensor.

The int8 integers are bitsieve's symmetric per-output-channel quantisation (methods.md decision 2); each layer's
sha256 is stored so a test can tell a changed input from a changed rule.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

MODELS = ("lenet-mnist", "mtcnn-rnet")
HERE = Path(__file__).resolve().parent


def int8_layers(model_name: str) -> list[dict]:
    """The conv/linear layers of a built-in model with bitsieve's int8 integers and BitSim's dimension lists."""
    from bitsieve import formats, model
    from bitsieve.accel import tiling

    m = model.load(model_name)
    out = []
    for layer in m.layers:
        if layer.kind not in ("conv", "linear"):
            continue
        wl = tiling.from_layer(layer)
        q, _ = formats.get("int8").quantize(np.asarray(layer.weight, np.float64), axis=0)
        q = q.reshape(layer.weight.shape)
        d = {"name": layer.name, "kind": layer.kind, "q": q, "sha256": sha(q)}
        if layer.kind == "conv":
            O, cw, kh, kw = q.shape
            assert kh == kw, "BitSim takes square kernels"
            oh, ow = wl.out_hw
            d["weight_dim"] = [kh, kh, cw, O]
            d["input_dim"] = [1, wl.in_hw[1], wl.in_hw[0], wl.in_ch]
            d["output_dim"] = [1, oh, ow, O]
        else:
            O, cin = q.shape
            d["weight_dim"] = [cin, O]
            d["input_dim"] = [1, wl.in_hw[1], cin]
            d["output_dim"] = [1, wl.in_hw[1], O]
        out.append(d)
    return out


def sha(q: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(q, dtype=np.int64).tobytes()).hexdigest()


def encode(q: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(q, dtype="<i2").tobytes(), 9)).decode()


def git_head(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return (path / "COMMIT").read_text().strip()


# ---- BitSim -------------------------------------------------------------------------------------------------
def bitsim_configs():
    """(name, class name, positional args, keyword args) as in BitSim's own sim/test_*.py scripts."""
    return [
        ("stripes", "Stripes", (8, 8, 16, [1, 16]), {}),
        ("bitwave_w8", "Bitwave", (8, 8, 8, [32, 16]), {"en_bitflip": True, "en_config_dataflow": False}),
        ("bitwave_w8_reconfig", "Bitwave", (8, 8, 8, [32, 16]), {"en_bitflip": True, "en_config_dataflow": True}),
        ("bitwave_w6", "Bitwave", (6, 8, 8, [32, 16]), {"en_bitflip": True, "en_config_dataflow": False}),
        ("bitwave_w5", "Bitwave", (5, 8, 8, [32, 16]), {"en_bitflip": True, "en_config_dataflow": False}),
        ("bitvert_zeros", "BitVert", (8, 8, 16, [32, 16]), {}),
        ("bitvert_bbs", "BitVert", (8, 8, 16, [32, 16]),
         {"en_bbs": True, "en_lsb_pruning": False, "en_ol_channel": True, "en_eager_compression": True}),
        ("bitlet_g32", "Bitlet", (8, 8, 32, [2, 16]), {}),
        ("bitlet_g64", "Bitlet", (8, 8, 64, [1, 1]), {}),
        ("pragmatic", "Pragmatic", (8, 8, 8, [32, 16]), {}),
    ]


def run_bitsim(root: Path, per_model: dict, sensitive: dict) -> dict:
    import torch

    sys.path[:0] = [str(root / "sim"), str(root / "sim" / "hw" / "mem")]
    from hw import accelerator as hw_acc  # noqa: E402  (BitSim)
    from sim import bitlet, bitvert, bitwave, pragmatic, stripes  # noqa: E402  (BitSim)

    state = {}

    def profiler(self, model_name):  # replaces LayerDim (files of the authors' machine)
        ls = state["layers"]
        self.layer_name_list = [d["name"] for d in ls]
        self.weight_dim = {d["name"]: d["weight_dim"] for d in ls}
        self.input_dim = {d["name"]: d["input_dim"] for d in ls}
        self.output_dim = {d["name"]: d["output_dim"] for d in ls}

    def quantized_model(self):  # replaces the .pt files: [O, C, k, k] conv and [O, I] linear integers
        return {d["name"]: torch.tensor(d["q"], dtype=torch.float32) for d in state["layers"]}

    class Profiler:  # replaces BitVertProfiler's JSON file
        def __init__(self, model_name, en_eager_comp=True):
            self.nonzero_channels = state["sensitive"]

    hw_acc.Accelerator._init_model_profiler = profiler
    hw_acc.Accelerator._get_quantized_model = quantized_model
    hw_acc.Accelerator.DEVICE = "cpu"
    bitvert.BitVertProfiler = Profiler
    classes = {"Stripes": stripes.Stripes, "Bitwave": bitwave.Bitwave, "BitVert": bitvert.BitVert,
               "Bitlet": bitlet.Bitlet, "Pragmatic": pragmatic.Pragmatic}
    for cls in classes.values():  # memory set-up (CACTI) does not enter compute cycles
        for fn in ("_init_mem", "_check_layer_mem_size", "_calc_num_mem_refetch"):
            setattr(cls, fn, lambda self: None)

    out = {}
    for cname, cls_name, args, kwargs in bitsim_configs():
        call = f"{cls_name}({', '.join(map(repr, args))}, MODEL" + "".join(
            f", {k}={v!r}" for k, v in kwargs.items()) + ")"
        res = {"call": call, "cycles": {}}
        for model_name, layers in per_model.items():
            state["layers"] = layers
            state["sensitive"] = sensitive[model_name]
            cyc = {}
            for d in layers:  # one layer at a time, so a layer BitSim cannot run is recorded alone
                state["layers"] = [d]
                try:
                    acc = classes[cls_name](*args[:4], model_name, **kwargs)
                    acc._calc_compute_cycle()
                    v = acc._layer_cycle_compute[d["name"]]
                    cyc[d["name"]] = float(v) if isinstance(v, float) and not float(v).is_integer() else int(v)
                except Exception as e:  # noqa: BLE001 (recorded in the table)
                    cyc[d["name"]] = {"error": f"{type(e).__name__}: {e}"}
            res["cycles"][model_name] = cyc
        out[cname] = res
    return out


# ---- BBS-MICRO -----------------------------------------------------------------------------------------------
# layers stored value by value (as the change from the input) and layers stored as an output sha256 only
TRANSFORM_LAYERS = {"lenet-mnist": ("conv2",), "mtcnn-rnet": ("conv2", "conv3")}
HASH_LAYERS = {"lenet-mnist": ("fc1",), "mtcnn-rnet": ("dense4",)}


def run_bbs(root: Path, per_model: dict) -> dict:
    import torch

    sys.path.insert(0, str(root))
    import binary_pruning  # noqa: E402  (BBS-MICRO)
    import bit_flip  # noqa: E402  (BBS-MICRO)

    transforms = [
        ("bitflip_k2_g32", "bitFlip", {"group_size": 32, "num_pruned_column": 2}),
        ("bitflip_k4_g16", "bitFlip", {"group_size": 16, "num_pruned_column": 4}),
        ("roundavg_k2_g32", "roundAvg", {"group_size": 32, "num_pruned_column": 2}),
        ("zeropoint_k4_g32", "zeroPointShifting", {"group_size": 32, "num_pruned_column": 4, "const_bitwidth": 5}),
    ]
    mods = {"bitFlip": bit_flip, "roundAvg": binary_pruning, "zeroPointShifting": binary_pruning}
    out = {}
    for tname, fn, kw in transforms:
        res = {"call": f"{fn}_conv/_fc(wq_int, w_bitwidth=8, " + ", ".join(f"{k}={v}" for k, v in kw.items()) + ")",
               "layers": {}}
        for model_name, layers in per_model.items():
            for d in layers:
                full = d["name"] in TRANSFORM_LAYERS[model_name]
                if not full and d["name"] not in HASH_LAYERS[model_name]:
                    continue
                f = getattr(mods[fn], f"{fn}_{'conv' if d['q'].ndim == 4 else 'fc'}")
                t = torch.tensor(d["q"], dtype=torch.float32)
                if t.ndim == 4:  # the code .view()s a permuted conv weight: valid in channels-last memory
                    t = t.contiguous(memory_format=torch.channels_last)
                new = f(t, w_bitwidth=8, device="cpu", **kw)
                q = np.rint(new.numpy()).astype(np.int64)
                entry = {"input_sha256": d["sha256"], "shape": list(q.shape), "output_sha256": sha(q)}
                if full:
                    entry["change_int16_zlib_b64"] = encode(q - d["q"])
                res["layers"][f"{model_name}/{d['name']}"] = entry
        out[tname] = res
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bitsim", type=Path, required=True)
    ap.add_argument("--bbs", type=Path, required=True)
    ap.add_argument("--beta", type=float, default=0.1)
    a = ap.parse_args()
    from bitsieve.methods import bbs

    per_model, sensitive = {}, {}
    for name in MODELS:
        layers = int8_layers(name)
        per_model[name] = layers
        from bitsieve import formats, model

        m = model.load(name)
        ws = {layer.name: layer.weight for layer in m.layers if layer.kind in ("conv", "linear")}
        sc = [formats.get("int8").quantize(np.asarray(ws[d["name"]], np.float64), axis=0)[1] for d in layers]
        thr = bbs.global_threshold(sc, a.beta)
        sensitive[name] = {d["name"]: np.nonzero(bbs.sensitive_channels(s, a.beta, thr, 1))[0].tolist()
                           for d, s in zip(layers, sc)}
    command = "python tests/data/bitsim/run_bitsim.py --bitsim BitSim --bbs BBS-MICRO" + (
        f" --beta {a.beta}" if a.beta != 0.1 else "")
    inputs = {n: {d["name"]: {"sha256": d["sha256"], "shape": list(d["q"].shape)} for d in ls}
              for n, ls in per_model.items()}
    import torch

    env = f"Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__} (CPU)"
    cyc = {"source": "yc2367/BitSim", "commit": git_head(a.bitsim), "command": command, "environment": env,
           "int8": "bitsieve symmetric per-output-channel int8 (formats.get('int8').quantize(weight, axis=0))",
           "inputs": inputs, "bitvert_sensitive": {"beta": a.beta, "channels": sensitive},
           "configs": run_bitsim(a.bitsim, per_model, sensitive)}
    (HERE / "bitsim_cycles.json").write_text(json.dumps(cyc, indent=1) + "\n")
    tr = {"source": "yc2367/BBS-MICRO", "commit": git_head(a.bbs), "command": command, "environment": env,
          "int8": cyc["int8"], "transforms": run_bbs(a.bbs, per_model)}
    (HERE / "bbs_micro_transforms.json").write_text(json.dumps(tr, indent=1) + "\n")


if __name__ == "__main__":
    main()
