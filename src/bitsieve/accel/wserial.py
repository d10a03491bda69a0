"""What the weight-serial designs (Bitlet, BitX, BitXpro, BitWave, BitVert) share: BitSim's tiling
(``sim/sim/stripes.py`` ``_calc_tile_*``): an array of ``rows`` PE rows (filters) x ``columns`` PE columns
(output pixels), each PE a ``group``-lane dot product whose weights are processed bit-serially (one plane,
or one selected bit per plane, per cycle) against bit-parallel activations. A tile is R filters x one
chunk of ``group`` lanes x C output pixels; its cost is set by the weights alone (max over its rows, the PEs
that share an activation broadcast) and repeats for every column block."""
from __future__ import annotations

import numpy as np

from .. import formats
from . import tiling
from .base import Accelerator, LayerResult, PackSpec
from .energy import filter_passes, sram_operand_bits


class WeightSerial(Accelerator):
    """Base of the weight-serial models (not registered itself)."""

    align_floats = "weight"

    def pack_format(self, fmt: formats.Format, cfg) -> formats.Format:
        return fmt

    def weight_spec(self, cfg, fmt, wl):
        pf = self.pack_format(fmt, cfg)
        align = self.align_floats if pf.is_float else "none"
        return PackSpec(pf.name, cfg["group"], align, cfg["layout"],
                        round_to=fmt.name if fmt.name != pf.name else "")

    def n_pe(self, cfg):
        return cfg["rows"] * cfg["columns"]

    def units(self, cfg, fmt):
        """Each lane multiplies one weight bit by a B-bit activation per cycle."""
        return cfg["group"] * self.n_pe(cfg) * self.width(fmt)

    def tiles(self, cost_oj: np.ndarray, wl, cfg, order=None):
        """Per-(filter, chunk) costs -> (layer cycles, tile costs [groups, blocks, J], column repeats)."""
        t, rep = tiling.bitsim_tiles(cost_oj, wl, cfg["rows"], cfg["columns"], order)
        return float(t.sum()) * rep, t, rep

    def dense_equiv(self, ntiles: float, rep: int, cfg, fmt, slots: int | None = None) -> float:
        """Same-dataflow dense reference: every tile step (``slots`` MAC slots, default group x rows x
        columns) at the speed of a bit-parallel array with this design's units."""
        B = self.width(fmt)
        slots = slots or cfg["group"] * cfg["rows"] * cfg["columns"]
        return float(ntiles) * rep * slots * B * B / self.units(cfg, fmt)

    def events(self, wl, cfg, fmt, cycles, ntiles: float, rep: int, extra=None) -> dict:
        """PE-cycles, MACs and the SRAM bits of real operands (``energy.sram_operand_bits``): each of the
        ``rep`` column steps of a tile reads its rows' weights once and its C x ``group`` activations once
        (BitSim's one read per buffer per tile), every activation once per block of ``rows`` filters; rows
        past a layer's filters, padding lanes and columns past its edge hold nothing and are not counted."""
        ev = {"pe_cycles": cycles * self.n_pe(cfg), "macs": wl.macs, "tile_steps": ntiles * rep,
              **sram_operand_bits(wl, rep, filter_passes(wl, cfg["rows"]), self.width(fmt))}
        if extra:
            ev.update(extra)
        return ev


def row_share(tile_cost: np.ndarray, per_row: np.ndarray) -> float:
    """Share of PE-row cycles lost waiting for the slowest row of each tile."""
    tot = float(tile_cost.sum()) * per_row.shape[2]
    return max(0.0, 1.0 - float(per_row.sum()) / tot) if tot > 0 else 0.0


def result(cycles, units, eff, ev, label, share, dense=0.0, **detail) -> LayerResult:
    return LayerResult(float(cycles), float(units), float(eff), ev, label, float(share), detail, float(dense))


def nonzero_mask(words: np.ndarray) -> np.ndarray:
    """[n, nbits] plane words -> int64 [n] bit mask of the non-empty planes."""
    nz = (words != 0).astype(np.int64)
    return (nz << np.arange(words.shape[1], dtype=np.int64)).sum(axis=1)
