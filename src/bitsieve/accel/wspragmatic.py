"""Weight-serial Bit-Pragmatic as the BBS authors re-implemented it in BitSim (``sim/sim/pragmatic.py``).

Source: BitSim (yc2367/BitSim) commit 6845fad, ``sim/sim/pragmatic.py`` (``_calc_cycle_conv2d``/``_dwconv``/
``_fc``: per tile, ``torch.max(torch.sum(tile, dim=0))`` over the bit planes of 8-bit sign-magnitude weights, so a
tile costs the ones of its heaviest weight, sign bit included) and ``sim/test_pragmatic.py``
(``Pragmatic(8, 8, 8, [32, 16])``: 8-lane PEs, 32 rows x 16 columns, the defaults here); methods.md 7.2 (BitSim
variant). Confidence: reference code. ``rows = 2`` is the array of the earlier scripts (14fda20, 236ba3c:
``[2, 16]``, same cycle code). tests/test_bitsim_parity.py checks the defaults against BitSim's own code, layer
by layer.

This is the reading of Pragmatic that BitPruner's abstract targets: weights are the serial operand, each lane
shifts a bit-parallel activation by one essential bit of its weight per cycle, and the lanes and PE rows of a
tile wait for the weight with the most ones. A tile (``rows`` filters x one ``group``-lane chunk x ``columns``
output pixels) costs max over its weights of popcount(magnitude) (+ 1 for a negative weight with
``count`` = ``bitsim``, as BitSim counts the sign plane; ``magnitude`` leaves it out); an all-zero tile costs 0
(BitSim's max of zeros). Per layer: the sum over tiles x ceil(ow / C) x oh, as every BitSim weight-serial
model (``tiling.bitsim_tiles``). BitSim's model is INT8; wider fixed point uses the same rule on its
magnitude planes.
"""
from __future__ import annotations

import numpy as np

from .. import formats
from .wserial import WeightSerial, result, row_share
from . import tiling


def lane_ones(wplanes, sign: bool) -> np.ndarray:
    """int64 [n_groups, G]: essential bits of every weight (+ its sign bit when ``sign`` and the weight is
    negative), from the plane words."""
    mags = wplanes.magnitudes().astype(np.int64)
    ones = np.bitwise_count(mags.astype(np.uint64)).astype(np.int64)
    if sign:
        lanes = np.arange(wplanes.group, dtype=np.uint64)
        neg = ((wplanes.signs[:, None] >> lanes) & np.uint64(1)).astype(np.int64)
        ones += neg * (mags != 0)
    return ones


class WSPragmatic(WeightSerial):
    """Weight-serial Pragmatic (BitSim's re-implementation): bit-parallel activations, weights processed one
    essential bit per cycle, the heaviest weight of a tile (all its PE rows and lanes) sets the tile's cycles.
    Source: BitSim sim/sim/pragmatic.py (BBS authors). Confidence: reference code. Formats: fixed point
    (sign-magnitude)."""

    name = "pragmatic-ws"
    formats = ("int",)

    def pack_format(self, fmt, cfg):
        return formats.get(fmt.name[:-2]) if fmt.twos else fmt

    def simulate(self, layer, wplanes, aplanes, cfg):
        wl = layer
        fmt = formats.get(cfg["format"])
        ones = lane_ones(wplanes, cfg["count"] == "bitsim")
        cost = ones.max(axis=1).reshape(wl.out_ch, -1)
        cycles, t, rep = self.tiles(cost, wl, cfg)
        B = self.width(fmt)
        eff = float(ones.sum()) * wl.batch * wl.windows * B
        ev = self.events(wl, cfg, fmt, cycles, t.size, rep, {"mean_lane_ones": float(ones.mean()) if ones.size else 0.0})
        return result(cycles, self.units(cfg, fmt), eff, ev,
                      "heaviest weight: the most essential bits in a tile set its cycles",
                      row_share(t, tiling.row_blocks(cost, wl, cfg["rows"])),
                      self.dense_equiv(t.size, rep, cfg, fmt))
