"""Packing speed: weights per second for format decomposition + grouping + alignment + packing.

Run with ``OMP_NUM_THREADS=1 python benchmarks/planes.py`` (one core). Each case is timed end to end as the
library is called (``planes.pack_raw(fmt.encode(x), fmt, G, align)``, output allocation included) and set
against ``numpy.copyto`` of the same input array (50M fp32 = 200 MB in, 200 MB out), measured in the same run.
Both are the best of ``--repeat`` rounds; every round times the copy and all cases once, so that a busy
machine slows them alike. The bf16 rows pack the same values already encoded to bf16 (the encoding is the
formats module's NumPy code and is shown on its own line). ``unpack`` is ``Planes.magnitudes()``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bitsieve import formats, planes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--cols", type=int, default=1_000)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = args.rows * args.cols
    G = args.group

    x = np.random.default_rng(0).standard_normal((args.rows, args.cols), dtype=np.float32)
    fp32, bf16 = formats.get("fp32"), formats.get("bf16")
    raw_bf16 = bf16.encode(x)
    for f, r in ((fp32, fp32.encode(x[:4, :100])), (bf16, raw_bf16[:4, :100])):  # compile / load the cache
        for a in planes.ALIGNS:
            planes.pack_raw(r, f, G, a).magnitudes()
    p32 = planes.pack_raw(fp32.encode(x), fp32, G, "weight")
    dst = np.empty_like(x)
    cases = {
        "numpy.copyto": lambda: np.copyto(dst, x),
        "fp32 align=weight": lambda: planes.pack_raw(fp32.encode(x), fp32, G, "weight"),
        "fp32 align=none": lambda: planes.pack_raw(fp32.encode(x), fp32, G, "none"),
        "bf16 align=weight": lambda: planes.pack_raw(raw_bf16, bf16, G, "weight"),
        "bf16 align=none": lambda: planes.pack_raw(raw_bf16, bf16, G, "none"),
        "fp32 unpack (magnitudes)": p32.magnitudes,
        "bf16 encode (formats, for reference)": lambda: bf16.encode(x),
    }
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.repeat):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            out = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            del out
    t_copy = best["numpy.copyto"]
    print(f"{n / 1e6:.0f}M fp32 N(0,1) weights {x.shape}, G={G}, best of {args.repeat}, one thread")
    for name, t in best.items():
        print(f"{name:38s} {t:8.4f} s {n / t / 1e9:7.3f} G weights/s  {t_copy / t:6.1%} of copy")


if __name__ == "__main__":
    main()
