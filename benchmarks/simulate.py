"""Accelerator-model speed: every accelerator on efficientnet-lite0 and on a ResNet-18-sized workload.

The ResNet-18-sized workload has ResNet-18's 21 conv/linear layer shapes at the input size whose MAC
count is closest to 463M; its weights are the real weights of efficientnet-lite0 (all conv/linear
weights, concatenated) tiled into each shape and scaled to He-init spread (std = sqrt(2 / fan_in)); its
activations come from running that network on a real photo (the zoo's ImageNet sampler), each conv
output standardised per channel (a batch-norm stand-in), ReLU after each conv and after each residual
add, so the activation sparsity and spatial correlation are those of a real image through a ReLU CNN.

Prints, per accelerator and workload: wall and CPU seconds (packing included; numba compiled beforehand),
MACs simulated per second, and the model speed-up. Run: ``python benchmarks/simulate.py [--formats
int16,fp32] [--accel all]``. Single-threaded: OMP_NUM_THREADS=1, torch.set_num_threads(1).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from bitsieve import formats, model  # noqa: E402
from bitsieve.accel import ACCELERATORS, tiling  # noqa: E402
from bitsieve.simulate import Run, Simulator, _timed_layer  # noqa: E402

RESNET18 = [  # (name, in_ch, out_ch, k, stride, input size divisor)
    ("conv1", 3, 64, 7, 2, 1),
    *[(f"layer1.{b}.conv{c}", 64, 64, 3, 1, 4) for b in range(2) for c in (1, 2)],
    ("layer2.0.conv1", 64, 128, 3, 2, 4), ("layer2.0.conv2", 128, 128, 3, 1, 8), ("layer2.0.down", 64, 128, 1, 2, 4),
    ("layer2.1.conv1", 128, 128, 3, 1, 8), ("layer2.1.conv2", 128, 128, 3, 1, 8),
    ("layer3.0.conv1", 128, 256, 3, 2, 8), ("layer3.0.conv2", 256, 256, 3, 1, 16), ("layer3.0.down", 128, 256, 1, 2, 8),
    ("layer3.1.conv1", 256, 256, 3, 1, 16), ("layer3.1.conv2", 256, 256, 3, 1, 16),
    ("layer4.0.conv1", 256, 512, 3, 2, 16), ("layer4.0.conv2", 512, 512, 3, 1, 32), ("layer4.0.down", 256, 512, 1, 2, 16),
    ("layer4.1.conv1", 512, 512, 3, 1, 32), ("layer4.1.conv2", 512, 512, 3, 1, 32),
]


def _sizes(size: int) -> dict:
    """Input size of every stage: conv1 (7x7/2, pad 3), max-pool 3/2 pad 1, stages 2-4 stride 2."""
    h1 = (size + 6 - 7) // 2 + 1
    h = {1: (h1 + 2 - 3) // 2 + 1}
    for st in (2, 3, 4):
        h[st] = (h[st - 1] + 2 - 3) // 2 + 1
    return {"conv1": size, "pool": h1, **{f"s{k}": v for k, v in h.items()}}


def resnet18_macs(size: int) -> int:
    sz = _sizes(size)
    total = 64 * 3 * 49 * ((size + 6 - 7) // 2 + 1) ** 2
    for name, ci, co, k, s, _ in RESNET18[1:]:
        stage = int(name[5])
        hout = sz[f"s{stage}"]
        total += co * ci * k * k * hout * hout
    return total + 512 * 1000


def resnet18_workloads(target_macs: int = 463_000_000) -> tuple[list[tiling.Workload], int]:
    size = min(range(64, 200), key=lambda s: abs(resnet18_macs(s) - target_macs))
    src = model.load("efficientnet-lite0", activations=0)
    pool = np.concatenate([layer.weight.reshape(-1) for layer in src.layers if layer.kind in ("conv", "linear")])
    pool = pool / pool.std()
    from bitsieve.zoo import BUILTINS

    x = BUILTINS["efficientnet-lite0"].sample_input(1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    off = 0
    ws = {}
    for name, ci, co, k, s, _ in [*RESNET18, ("fc", 512, 1000, 1, 1, 0)]:
        n = co * ci * k * k
        idx = (off + np.arange(n)) % pool.size
        off = (off + n) % pool.size
        ws[name] = (pool[idx] * np.sqrt(2.0 / (ci * k * k))).astype(np.float32).reshape(co, ci, k, k)

    def conv(name, a, s, k):
        w = torch.from_numpy(ws[name])
        out = torch.nn.functional.conv2d(a, w, stride=s, padding=k // 2)
        return (out - out.mean(dim=(0, 2, 3), keepdim=True)) / (out.std(dim=(0, 2, 3), keepdim=True) + 1e-6)

    acts = {}
    with torch.no_grad():
        acts["conv1"] = x
        a = torch.relu(conv("conv1", x, 2, 7))
        a = torch.nn.functional.max_pool2d(a, 3, 2, 1)
        for stage, ch in ((1, 64), (2, 128), (3, 256), (4, 512)):
            for b in range(2):
                p = f"layer{stage}.{b}"
                s = 2 if (b == 0 and stage > 1) else 1
                acts[f"{p}.conv1"] = a
                h = torch.relu(conv(f"{p}.conv1", a, s, 3))
                acts[f"{p}.conv2"] = h
                h = conv(f"{p}.conv2", h, 1, 3)
                if b == 0 and stage > 1:
                    acts[f"{p}.down"] = a
                    a = conv(f"{p}.down", a, 2, 1)
                a = torch.relu(h + a)
        feat = a.mean(dim=(2, 3))
    wls = []
    for name, ci, co, k, s, _ in RESNET18:
        wls.append(tiling.Workload.conv(ws[name], acts[name].numpy(), stride=s, padding=k // 2, name=name))
    wls.append(tiling.Workload.linear(ws["fc"][:, :, 0, 0], feat.numpy(), name="fc"))
    return wls, size


def bench(wls, accels, fmt, label):
    macs = sum(w.macs for w in wls)
    f = formats.get(fmt)
    print(f"\n{label}: {len(wls)} layers, {macs / 1e6:.1f}M MACs, format {fmt}")
    print(f"{'accel':10s} {'wall s':>8s} {'cpu s':>8s} {'MMAC/s':>9s} {'speedup':>8s}")
    for n in accels:
        a = ACCELERATORS[n]
        kind = "int" if not f.is_float else f.name
        if kind not in a.formats:
            continue
        sim = Simulator(Run(accels=[n], fmt=fmt))
        warm = {k: 0.0 for k in sim.accels}
        _timed_layer(sim, wls[1], None, warm)  # compile numba kernels outside the timing
        sec = {k: 0.0 for k in sim.accels}
        t0, c0 = time.perf_counter(), time.process_time()
        res = [_timed_layer(sim, wl, None, sec)[n] for wl in wls]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        wall -= sec.get("dense", 0.0) if n != "dense" else 0.0
        dense = sum(r.dense_cycles for r in res)
        cyc = sum(r.cycles for r in res)
        print(f"{n:10s} {wall:8.2f} {cpu:8.2f} {macs / max(wall, 1e-9) / 1e6:9.0f} {dense / cyc:8.2f}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--formats", default="int16,fp32")
    ap.add_argument("--accel", default="all")
    ap.add_argument("--workloads", default="efficientnet-lite0,resnet18")
    args = ap.parse_args(argv)
    accels = list(ACCELERATORS) if args.accel == "all" else args.accel.split(",")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.2f} on {os.cpu_count()} cores (timings are wall/CPU seconds on one thread)")
    work = {}
    for w in args.workloads.split(","):
        if w == "resnet18":
            wls, size = resnet18_workloads()
            work[f"ResNet-18-sized ({size}x{size} input, lite0 weights tiled)"] = wls
        else:
            m = model.load(w, activations=1)
            work[w] = [tiling.from_layer(layer) for layer in m.layers if layer.kind in ("conv", "linear")]
    for fmt in args.formats.split(","):
        for label, wls in work.items():
            bench(wls, accels, fmt, label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
