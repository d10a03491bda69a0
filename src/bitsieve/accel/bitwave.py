"""BitWave (Shi et al., HPCA'24, "Exploiting Column-Based Bit-Level Sparsity for Deep Learning
Acceleration") as the BBS authors re-implemented it.

Source: BitSim ``sim/sim/bitwave.py`` at yc2367/BitSim 6845fad (``_count_zero_bit_column`` and
``_calc_cycle_*``), ``hardware/scheduler_bitwave.v`` (a priority encoder emits the next non-zero column),
methods.md 8.1. Confidence: reference code (the BBS authors' re-implementation; the original's group size and
index format are not public).

Cycles of a tile (``count`` = ``bitsim``, the default): per PE row, the number of non-zero bit columns of its
group's 8-bit sign-magnitude weights, the sign column included; the tile takes the slowest row, minus one
(BitSim returns ``max(columns) - 1``). ``count`` = ``magnitude`` is the reading of the paper that the sign
column is free: non-zero magnitude columns, no minus one. (The two agree on a tile whose slowest row
holds a negative weight; otherwise BitSim's is one cycle less, so a tile of non-negative weights with a
single non-zero column costs 0.) A tile of all-zero weights costs 0 (BitSim's rule would give -1 there; no
tested layer has one). Per layer: tile cost x ceil(ow / C) x oh, as
every BitSim weight-serial model.

Dataflow: BitSim's own evaluation (``sim/test_bitwave.py``: ``Bitwave(w_prec, 8, 8, [32, 16],
en_bitflip=True, en_config_dataflow=False)``) runs the fixed 8-lane x 32-row x 16-column array, our default
(``group`` x ``rows`` x ``columns``). ``reconfigurable`` = true is BitWave's dynamic dataflow as BitSim
implements it behind ``en_config_dataflow``: the fastest of ``dataflows`` (group, rows, columns) in
{(8,32,16), (16,32,8), (32,32,4), (128,8,1), (16,64,1), (32,32,1), (16,1,16)} per layer.

The bit-flip that creates zero columns is a method (``--method bitwave:k=4``; BitSim flips inside the
simulator with groups of 32, ``w_prec`` = 8 - k); this model costs whatever columns are non-zero in the
planes it is given.
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
    row sets each tile (BitSim: non-zero columns with the sign, minus one); fixed 8x32x16 dataflow as BitSim's
    evaluation, reconfigurable per layer as an option. Source: BitSim sim/sim/bitwave.py (BBS authors'
    re-implementation). Confidence: reference code. Formats: fixed point (sign-magnitude)."""

    name = "bitwave"
    formats = ("int",)

    def pack_format(self, fmt, cfg):
        return formats.get(fmt.name[:-2]) if fmt.twos else fmt

    def validate(self, cfg):
        super().validate(cfg)
        parse_dataflows(cfg["dataflows"])
        if cfg["group"] != 8:
            raise UserError("bitwave.group is the packing unit of the dataflows and must be 8")

    def flows(self, cfg) -> list[tuple[int, int, int]]:
        """The dataflows tried per layer: all of ``dataflows`` when reconfigurable, else the fixed array
        (BitSim's ``[8] + pe_array_dim``)."""
        if cfg["reconfigurable"]:
            return parse_dataflows(cfg["dataflows"])
        return [(cfg["group"], cfg["rows"], cfg["columns"])]

    def hw_lanes(self, cfg) -> int:
        return max(g * r * c for g, r, c in self.flows(cfg))

    def units(self, cfg, fmt):
        return self.hw_lanes(cfg) * self.width(fmt)

    def n_pe(self, cfg):
        return self.hw_lanes(cfg) // cfg["group"]

    def simulate(self, layer, wplanes, aplanes, cfg):
        wl = layer
        fmt = formats.get(cfg["format"])
        lay = tiling.layout(wl, 8, cfg["layout"])
        O = wl.out_ch
        m8 = nonzero_mask(wplanes.words)  # non-zero magnitude columns per 8-group
        bitsim = cfg["count"] == "bitsim"
        if bitsim:  # the sign column counts too
            nb = wplanes.words.shape[1]
            m8 = m8 | (((wplanes.signs & wplanes.valid) != 0).astype(np.int64) << nb)
        m8 = m8.reshape(O, -1)
        if lay.mode == "channel":
            m8 = m8.reshape(O, wl.taps, -1)
        elif lay.mode == "tap":
            m8 = m8.reshape(O, wl.cw, -1)
        else:
            m8 = m8.reshape(O, 1, -1)
        best = None
        for g, R, C in self.flows(cfg):
            k = g // 8
            n = m8.shape[2]
            nn = ceil_div(n, k) * k
            m = np.pad(m8, ((0, 0), (0, 0), (0, nn - n))).reshape(O, m8.shape[1], -1, k)
            mask = np.bitwise_or.reduce(m, axis=3).reshape(O, -1)
            cost = np.bitwise_count(mask.astype(np.uint64)).astype(np.int64)
            t, rep = tiling.bitsim_tiles(cost, wl, R, C)
            if bitsim:  # BitSim: max over the rows minus one (an all-zero tile: 0, not -1)
                t = np.maximum(t - 1, 0)
            cyc = float(t.sum()) * rep
            if best is None or cyc < best[0]:
                best = (cyc, (g, R, C), cost, t, rep)
        cycles, (g, R, C), cost, t, rep = best
        per_row = tiling.row_blocks(np.maximum(cost - 1, 0) if bitsim else cost, wl, R)
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
