"""PNPU / Kim'20 (Kim et al., "A 146.52 TOPS/W Deep-Neural-Network Learning Processor with Stochastic
Coarse-Fine Pruning and Adaptive Input/Output/Weight Skipping", VLSI'20; journal letter "PNPU", IEEE SSC-L
2021): value-level zero skipping, not bit-level.

Source: the two abstracts and a third-party summary (methods.md section 6): adaptive input/output/weight
zero skipping (AIOWS) chooses per layer which operand's zeros to skip; a weight-sparsity balancer keeps the
lanes of a core balanced; FP8. Confidence: reconstructed (patent/abstract); every array parameter is [U].

Model (inference, so output skipping does not apply): an output-stationary array of ``columns`` windows x
``rows`` filters of ``lanes``-wide bit-parallel MAC units (the DNNsim tiling). Each lane owns a slice of the
dot product (channel c -> lane c mod lanes) and consumes only the pairs whose chosen operand is non-zero:
- ``input`` skipping: per window set the slowest (column, lane) stream of non-zero activations sets the
  time (activations are shared by all rows; no balancer for dynamic data);
- ``weight`` skipping: per filter block the slowest row; with the ``balancer`` a row's non-zero weights are
  spread evenly over its lanes (ceil(nnz / lanes)), without it the slowest lane counts;
- ``adaptive`` (default): the faster of the two per layer; ``none``: dense.
Any number format works (zeros are zeros); the chip itself computes in FP8.
"""
from __future__ import annotations

import numpy as np

from .. import formats
from . import tiling
from .base import Accelerator, LayerResult, PackSpec, ceil_div
from .energy import filter_passes, sram_operand_bits


class PNPU(Accelerator):
    """PNPU / Kim'20 (VLSI'20, SSC-L'21): adaptive input/weight zero skipping (value level) with a weight
    sparsity balancer. Source: abstracts + third-party summary (methods.md 6). Confidence: reconstructed
    (patent/abstract). Formats: all (the chip is FP8)."""

    name = "pnpu"
    needs_activations = True

    def weight_spec(self, cfg, fmt, wl):
        return PackSpec(fmt.name, cfg["lanes"], "none", "channel")

    def act_spec(self, cfg, fmt, wl):
        return PackSpec(fmt.name, cfg["lanes"], "none", "act", True)

    def n_pe(self, cfg):
        return cfg["rows"] * cfg["columns"]

    def units(self, cfg, fmt):
        B = self.width(fmt)
        return cfg["lanes"] * self.n_pe(cfg) * B * B

    def simulate(self, layer, wplanes, aplanes, cfg):
        wl = layer
        fmt = formats.get(cfg["format"])
        L, R, C = cfg["lanes"], cfg["rows"], cfg["columns"]
        st = tiling.dnnsim_streams(wl, L, C, R, 1)
        Q, S, _ = st.idx.shape
        steps = st.steps
        lane = np.arange(L, dtype=np.uint64)
        anz = ((aplanes.nonzero[:, None] >> lane) & np.uint64(1)).astype(np.int64)  # [n_bricks, L]
        A = np.where((st.idx >= 0)[..., None], anz[np.maximum(st.idx, 0)], 0)  # [Q, S, C, L]
        A = A.reshape(Q, -1, steps, C, L).sum(axis=2)  # [Q, sets, C, L]
        t_in = np.maximum(A.max(axis=(2, 3)), 1).sum(axis=1).astype(np.float64)  # per stream
        dense = np.full(Q, A.shape[1] * steps, np.float64)
        # weight skipping
        O = wl.out_ch
        wnz = ((wplanes.nonzero[:, None] >> lane) & np.uint64(1)).astype(np.int64).reshape(O, -1, L)
        sets = A.shape[1] // (wl.groups if not st.depthwise else 1)  # window sets per conv group / per block
        if st.depthwise:
            per_f = wnz.sum(axis=(1, 2))  # each filter's taps sit in one lane
            fpad = np.zeros(Q * L, np.int64)
            fpad[:O] = per_f
            blocks = fpad.reshape(Q, L).max(axis=1)
            t_w = np.maximum(blocks, 1).astype(np.float64) * A.shape[1]
            c_in, c_w, c_d = st.combine(t_in), st.combine(t_w), st.combine(dense)
        else:
            per_f = ceil_div(wnz.sum(axis=(1, 2)), L) if cfg["balancer"] else wnz.sum(axis=1).max(axis=1)
            blk = tiling.row_blocks(per_f[:, None], wl, R)[..., 0]  # [G, nb, R]
            t_w = float(np.maximum(blk.max(axis=2), 1).sum()) * sets
            c_in = float(t_in.sum()) * ceil_div(wl.og, R)
            c_d = float(dense.sum()) * ceil_div(wl.og, R)
            c_w = t_w
        choice = cfg["skip"]
        opts = {"input": c_in, "weight": c_w, "none": c_d}
        if choice == "adaptive":
            choice = min(("input", "weight"), key=lambda k: opts[k])
        cycles = opts[choice]
        B = self.width(fmt)
        nz_a = float(A.sum()) * wl.og
        nz_w = float(wnz.sum()) * wl.batch * wl.windows
        eff = {"input": nz_a, "weight": nz_w, "none": float(wl.macs)}[choice] * B * B
        ev = {"pe_cycles": cycles * self.n_pe(cfg), "macs": wl.macs, "tile_steps": c_d,
              **sram_operand_bits(wl, wl.batch * ceil_div(wl.windows, C), filter_passes(wl, R), B),
              "zero_act_frac": 1.0 - float(A.sum()) / max(float(Q * A.shape[1] * C * steps * L), 1.0),
              "zero_weight_frac": 1.0 - float(wnz.sum()) / max(wl.out_ch * wl.cw * wl.taps, 1)}
        util = eff / max(cycles * self.units(cfg, fmt), 1.0)
        return LayerResult(cycles, self.units(cfg, fmt), eff, ev,
                           f"{choice} zero skipping: slowest {'lane stream' if choice == 'input' else 'row'} per step",
                           1.0 - util, {"skip": choice}, dense_cycles=c_d)
