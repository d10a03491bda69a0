"""Bit-sparsity statistics of a model, layer by layer, read off the packed planes.

Every figure is a sum or a max over groups, so layers add up to the whole-model total exactly.
Fractions are 0..1. Zero bits are counted over the significand (float, hidden bit included) or
magnitude (int) bits of real values, after alignment; padding is never counted.
"""
from __future__ import annotations

import numpy as np

from .planes import Planes

FIELDS = ("values", "zero_value_frac", "zero_bit_frac", "mean_essential_bits", "max_essential_bits",
          "plane_occupancy", "zero_plane_frac", "mean_max_plane_ones", "max_max_plane_ones",
          "align_lost_bits", "align_lost_frac")


def counts(p: Planes) -> dict:
    """Additive counts of one tensor's planes (the raw material of every statistic)."""
    ones = p.ones()
    ess = np.bitwise_count(p.magnitudes())
    return {
        "values": p.count,
        "zero_values": p.count - int(np.bitwise_count(p.nonzero & p.valid).sum()),
        "bits": p.count * p.nbits,
        "plane_ones": ones.sum(axis=0),
        "essential_sum": int(ess.sum()),
        "essential_max": int(ess.max(initial=0)),
        "planes": ones.size,
        "zero_planes": int((ones == 0).sum()),
        "groups": p.n_groups,
        "max_plane_ones_sum": int(ones.max(axis=1, initial=0).sum()),
        "max_plane_ones_max": int(ones.max(initial=0)),
        "lost": int(p.lost.sum()),
    }


def merge(cs: list[dict]) -> dict:
    """Counts of several tensors as if they were one."""
    out = {}
    for k in cs[0]:
        vals = [c[k] for c in cs]
        if k.endswith("_max"):
            out[k] = max(vals)
        elif k == "plane_ones":  # planes of different widths: pad at the top
            n = max(len(v) for v in vals)
            out[k] = sum(np.pad(v, (0, n - len(v))) for v in vals)
        else:
            out[k] = sum(vals)
    return out


def stats(c: dict) -> dict:
    """Counts -> the reported statistics."""
    n = max(c["values"], 1)
    ones = int(np.sum(c["plane_ones"]))
    return {
        "values": c["values"],
        "zero_value_frac": c["zero_values"] / n,
        "zero_bit_frac": 1.0 - ones / max(c["bits"], 1),
        "mean_essential_bits": c["essential_sum"] / n,
        "max_essential_bits": c["essential_max"],
        "plane_occupancy": [float(x) / n for x in c["plane_ones"]],
        "zero_plane_frac": c["zero_planes"] / max(c["planes"], 1),
        "mean_max_plane_ones": c["max_plane_ones_sum"] / max(c["groups"], 1),
        "max_max_plane_ones": c["max_plane_ones_max"],
        "align_lost_bits": c["lost"],
        "align_lost_frac": c["lost"] / max(ones + c["lost"], 1),
    }
