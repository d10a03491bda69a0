"""BitX (Li, Lu et al., "BitX: Empower Versatile Inference with Hardware Runtime Pruning", ICPP'21).

Source: the ICPP'21 abstract and the group's patent (WO2023019899A1 / US20250315675A1, claims 3-4), as
summarised in methods.md section 3; no datapath description is public. Confidence: reconstructed
(patent/abstract).

BitX prunes at run time inside the accelerator: every group of ``group`` weights (floats aligned to the
group's largest weight exponent, patent claim 3; integers in sign-magnitude) keeps its ``keep``
highest-scoring bit planes. The selection itself is the methods module's (``bitsieve.methods.bitx.bitx``,
methods.md decision 4); this model applies it to the planes it is given (already pruned by a
``--method`` or not) and costs what is left. Two cycle models (methods.md decision 7):

- ``planeserial`` (default): one kept non-empty plane per cycle per group through an adder tree over the
  group's activations; the ``rows`` groups of a tile (filters sharing an activation broadcast) run in
  lock-step, so a tile costs the largest number of kept non-empty planes among its rows.
- ``bitlet-engine``: a Bitlet PE whose ``prune`` mask is the runtime selection: per group, N = max over the
  kept non-empty planes of the check-window cycles (``bitlet_pe.checkwindow_cycles``), pipelined.

The score logic (popcount + compare of the planes) is assumed to be a pipeline stage that adds no cycles.

Energy (``data/bitx.toml``): the abstract gives whole-chip power only (36.41 mW 16-bit, 68.62 mW fp32, 28 nm,
no breakdown), so the energy per unit-cycle is that power / 1 GHz ([U] clock, Bitlet's) / the units of one
64-lane engine: 35.6 fJ (16-bit), 44.7 fJ (fp32). It includes the chip's buffers, alignment, score logic,
control and clock, so it is an upper bound and 4.9x (16-bit) / 2.4x (fp32) the PE-only figure charged to
``dense`` (Stripes PE); SRAM accesses are also charged separately. That is why BitX's compute energy can
exceed dense's: it only falls below when BitX runs more than ~4.9x (16-bit) / ~2.4x (fp32) faster than the
same-dataflow dense reference (``bitsieve.accel.energy``: compute = cycles / dense_cycles x MACs x B^2 x
energy per unit-cycle). SRAM: one output pixel per tile step (``columns`` = 1) shares an activation read
among only ``rows`` = 16 filters (dense: 256), and the 64-lane groups are mostly padding on short
reductions (3x3 depthwise: 9 of 64 lanes), so on efficientnet-lite0 BitX reads ~2x dense's SRAM bits
(~27x on the depthwise layers); on LeNet, whose dense run pads 1 input channel to 16 lanes, it reads fewer.
Only the rows that hold a filter read weights (``wserial.real_row_weight_bits``).
"""
from __future__ import annotations

import numpy as np

from .. import formats
from ..errors import UserError
from .bitlet_pe import checkwindow_cycles
from .wserial import WeightSerial, nonzero_mask, result, row_share
from . import tiling


def runtime_select(planes, cfg):
    """BitX's runtime plane selection: ``bitsieve.methods.bitx.bitx`` on the accelerator's groups."""
    from ..methods.bitx import bitx

    return bitx(planes, keep=cfg["keep"], score=cfg["score"])


class BitX(WeightSerial):
    """BitX (ICPP'21): hardware runtime pruning keeps the N best bit planes (2^s * sqrt(popcount)) of every
    weight group; planeserial (one kept plane per cycle, lock-step rows) or bitlet-engine (check-window
    over the kept planes) cycle models. Source: ICPP'21 abstract + patent WO2023019899A1 (methods.md 3).
    Confidence: reconstructed (patent/abstract). Formats: fp32, bf16, fp16, fixed point."""

    name = "bitx"
    formats = ("fp32", "bf16", "fp16", "int")

    def pack_format(self, fmt, cfg):
        return formats.get(fmt.name[:-2]) if (not fmt.is_float and fmt.twos) else fmt

    def units(self, cfg, fmt):
        per_pe = cfg["group"] if cfg["model"] == "planeserial" else cfg["channels"]
        return per_pe * self.n_pe(cfg) * self.width(fmt)

    def validate(self, cfg):
        super().validate(cfg)
        if cfg["model"] == "bitlet-engine" and cfg["group"] > 64:
            raise UserError("bitx: the bitlet-engine model takes groups of at most 64")

    def group_cost(self, words: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
        """Per-group cycles and, per group, the plane that set them (-1 if none)."""
        nz = words != 0
        if cfg["model"] == "planeserial":
            cnt = nz.sum(axis=1)
            top = np.where(nz.any(axis=1), nz.shape[1] - 1 - np.argmax(nz[:, ::-1], axis=1), -1)
            return cnt.astype(np.int64), top
        cw = np.where(nz, checkwindow_cycles(words, cfg["window"], 63), 0)
        return cw.max(axis=1, initial=0), np.where(nz.any(axis=1), cw.argmax(axis=1), -1)

    def simulate(self, layer, wplanes, aplanes, cfg):
        wl = layer
        fmt = formats.get(cfg["format"])
        p = runtime_select(wplanes, cfg)
        cost, top = self.group_cost(p.words, cfg)
        cost2 = cost.reshape(wl.out_ch, -1)
        cycles, t, rep = self.tiles(cost2, wl, cfg)
        per_row = tiling.row_blocks(cost2, wl, cfg["rows"])
        eff = float(np.bitwise_count(p.words).sum()) * wl.batch * wl.windows * self.width(fmt)
        kept = float(np.bitwise_count(nonzero_mask(p.words)).mean()) if p.n_groups else 0.0
        ev = self.events(wl, cfg, fmt, cycles, t.size, rep, {
            "kept_planes_mean": kept,
            "pruned_bit_frac": 1.0 - float(np.bitwise_count(p.words).sum()) / max(float(np.bitwise_count(wplanes.words).sum()), 1.0)})
        if cfg["model"] == "planeserial":
            label = "lock-step rows: the row with the most kept planes sets each tile"
            share = row_share(t, per_row)
        else:
            h = np.bincount(top[top >= 0], minlength=p.nbits) if (top >= 0).any() else np.zeros(1, int)
            label, share = f"densest kept plane: plane s={int(h.argmax())} sets N most often", float(h.max() / max(h.sum(), 1))
        return result(cycles, self.units(cfg, fmt), eff, ev, label, share, self.dense_equiv(t.size, rep, cfg, fmt),
                      kept_planes=kept)
