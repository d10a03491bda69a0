"""BitWave (Shi et al., HPCA'24, "Exploiting Column-Based Bit-Level Sparsity for Deep Learning
Acceleration") as the BBS authors re-implemented it.

Source: BitSim ``sim/sim/bitwave.py`` (cycles per group = number of non-zero magnitude columns of the
sign-magnitude weights, the sign column free; per tile the maximum over the PE rows; the reconfigurable
dataflows (group, rows, columns) in {(8,32,16), (16,32,8), (32,32,4), (128,8,1), (16,64,1), (32,32,1),
(16,1,16)}, the fastest chosen per layer) and ``hardware/scheduler_bitwave.v`` (a priority encoder emits the
next non-zero column), methods.md 8.1. Confidence: reference code (the BBS authors' re-implementation; the
original's group size and index format are not public).

The bit-flip that creates zero columns is a method (``--method bitwave:k=4``); this model costs whatever
columns are non-zero in the planes it is given.
"""
from __future__ import annotations

import numpy as np

from .. import formats
from ..errors import UserError
from . import tiling
from .base import ceil_div
from .wserial import WeightSerial, nonzero_mask, result, row_share


def parse_dataflows(text: str) -> list[tuple[int, int, int]]:
    out = []
    for item in str(text).split(","):
        try:
            g, r, c = (int(x) for x in item.strip().lower().split("x"))
        except ValueError:
            raise UserError(f"bitwave.dataflows: {item!r} is not GxRxC") from None
        if g % 8 or g < 8 or r < 1 or c < 1:
            raise UserError(f"bitwave.dataflows: group must be a multiple of 8 and rows/columns >= 1 ({item})")
        out.append((g, r, c))
    if not out:
        raise UserError("bitwave.dataflows is empty")
    return out


class BitWave(WeightSerial):
    """BitWave (HPCA'24): bit-column-serial weights, all-zero columns of a group skipped, the slowest PE
    row sets each tile; reconfigurable dataflow chosen per layer. Source: BitSim sim/sim/bitwave.py (BBS
    authors' re-implementation). Confidence: reference code. Formats: fixed point (sign-magnitude)."""

    name = "bitwave"
    formats = ("int",)

    def pack_format(self, fmt, cfg):
        return formats.get(fmt.name[:-2]) if fmt.twos else fmt

    def validate(self, cfg):
        super().validate(cfg)
        parse_dataflows(cfg["dataflows"])
        if cfg["group"] != 8:
            raise UserError("bitwave.group is the packing unit of the dataflows and must be 8")

    def hw_lanes(self, cfg) -> int:
        return max(g * r * c for g, r, c in parse_dataflows(cfg["dataflows"]))

    def units(self, cfg, fmt):
        return self.hw_lanes(cfg) * self.width(fmt)

    def n_pe(self, cfg):
        return self.hw_lanes(cfg) // cfg["group"]

    def simulate(self, layer, wplanes, aplanes, cfg):
        wl = layer
        fmt = formats.get(cfg["format"])
        lay = tiling.layout(wl, 8, cfg["layout"])
        O = wl.out_ch
        m8 = nonzero_mask(wplanes.words).reshape(O, -1)  # non-zero magnitude columns per 8-group
        if lay.mode == "channel":
            m8 = m8.reshape(O, wl.taps, -1)
        elif lay.mode == "tap":
            m8 = m8.reshape(O, wl.cw, -1)
        else:
            m8 = m8.reshape(O, 1, -1)
        flows = parse_dataflows(cfg["dataflows"]) if cfg["reconfigurable"] else parse_dataflows(cfg["dataflows"])[:1]
        best = None
        for g, R, C in flows:
            k = g // 8
            n = m8.shape[2]
            nn = ceil_div(n, k) * k
            m = np.pad(m8, ((0, 0), (0, 0), (0, nn - n))).reshape(O, m8.shape[1], -1, k)
            mask = np.bitwise_or.reduce(m, axis=3).reshape(O, -1)
            cost = np.bitwise_count(mask.astype(np.uint64)).astype(np.int64)
            t, rep = tiling.bitsim_tiles(cost, wl, R, C)
            cyc = float(t.sum()) * rep
            if best is None or cyc < best[0]:
                best = (cyc, (g, R, C), cost, t, rep)
        cycles, (g, R, C), cost, t, rep = best
        per_row = tiling.row_blocks(cost, wl, R)
        B = self.width(fmt)
        eff = float(np.bitwise_count(wplanes.words).sum()) * wl.batch * wl.windows * B
        ev = self.events(wl, {**cfg, "rows": R, "columns": C, "group": g}, fmt, cycles, t.size, rep,
                         {"dataflow_group": g, "dataflow_rows": R, "dataflow_columns": C,
                          "nonzero_columns_mean": float(cost.mean()) if cost.size else 0.0})
        ev["pe_cycles"] = cycles * self.n_pe(cfg)
        return result(cycles, self.units(cfg, fmt), eff, ev,
                      "slowest PE row: the most non-zero columns in a tile",
                      row_share(t, per_row), self.dense_equiv(t.size, rep, cfg, fmt, slots=self.hw_lanes(cfg)),
                      dataflow=f"{g}x{R}x{C}")
