"""Speed of the Bitlet emulated forward pass (``bitsieve.methods.bitlet``) on a built-in model.

Runs the model on real inputs (the zoo's sampler) in fp32 and under the emulation, both on one core,
after a warm-up pass that compiles the kernels and caches the weight decompositions (as ``bitsieve eval``
does once per variant). Prints images/s, emulated GMAC/s, the slowdown against the fp32 forward pass
measured in the same run, and the time per kind of layer. Run:
``python benchmarks/bitlet_emulation.py [--model efficientnet-lite0] [--batch 16] [--set keep=8]``.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from bitsieve import zoo  # noqa: E402
from bitsieve.methods import bitlet_emulate as bitlet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--set", action="append", default=[], help="method parameter k=v (e.g. keep=8)")
    a = ap.parse_args()
    params = {k: int(v, 0) if v.lstrip("-").isdigit() or v.startswith("0x") else v
              for k, v in (s.split("=", 1) for s in a.set)}
    builtin = zoo.get(a.model)
    m, x = builtin.load().eval(), builtin.sample_input(a.batch)
    kinds: dict[str, list[float]] = {}
    conv, lin = bitlet.Emulator.conv2d, bitlet.Emulator.linear

    def timed(kind_of, fn):
        def run(self, *args, **kw):
            p0, t0 = self.pairs, time.perf_counter()
            out = fn(self, *args, **kw)
            k = kinds.setdefault(kind_of(args), [0.0, 0])
            k[0] += time.perf_counter() - t0
            k[1] += self.pairs - p0
            return out
        return run

    def conv_kind(args):
        w, groups = args[1], (args[6] if len(args) > 6 else 1)
        return "depthwise" if groups > 1 else ("pointwise" if w.shape[2] * w.shape[3] == 1 else "conv kxk")

    bitlet.Emulator.conv2d = timed(conv_kind, conv)
    bitlet.Emulator.linear = timed(lambda args: "linear", lin)
    with torch.no_grad():
        m(x)
        t0 = time.perf_counter()
        m(x)
        fp32 = time.perf_counter() - t0
        with bitlet.emulate(params) as emu:
            m(x)  # compile and cache
            kinds.clear()
            emu.pairs = 0
            t0 = time.perf_counter()
            m(x)
            dt = time.perf_counter() - t0
    print(f"{a.model}, batch {a.batch}, params {params or 'default'}: {a.batch / dt:.2f} images/s, "
          f"{emu.pairs / dt / 1e9:.2f} GMAC/s emulated ({emu.pairs / a.batch / 1e6:.0f}M MACs per image), "
          f"{dt / fp32:.0f}x the fp32 forward pass ({a.batch / fp32:.1f} images/s)")
    for k, (t, p) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        print(f"  {k:10s} {t:6.2f} s  {p / 1e6:8.1f}M MACs  {p / t / 1e9:5.2f} GMAC/s  {100 * t / dt:4.1f} %")


if __name__ == "__main__":
    main()
