"""The bit-parallel baseline, DaDianNao-like, as DNNsim models it.

Source: DNNsim ``core/src/DaDianNao.cpp`` (one cycle per step: every step all tiles' rows multiply one
activation brick of ``lanes`` values by their weights) with the output-stationary schedule of
``core/src/OutputStationary.cpp``; ``examples/DaDianNao`` (16 lanes x 16 rows x 16 tiles). The baseline of
Stripes (``Stripes.cpp`` ``base_cycles``: out_x * out_y * ceil(C/16) * Kx * Ky * filter sets). One window
per step. Depthwise convs: ``depthwise`` = 'tiles' (bitsieve's choice: channel bricks dealt to the tiles) or
'dnnsim' (DNNsim's mapping: one tile runs every brick in turn); ``first_layer`` = 'dnnsim' applies DNNsim's
rewrite of a 3-channel strided first conv (``accel.dnnsim.first_layer_rewrite``), 'keep' (default) does not.
Confidence: reference code.

It needs no data: cycles follow from the shape. ``units`` = lanes x rows x tiles MAC units of B x B bits
(B = 16 for int16, 24 for fp32's significand, 8 for bf16), the reference every speed-up is taken against
(``base`` module docstring). Works for every format.
"""
from __future__ import annotations

from . import tiling
from .base import Accelerator, LayerResult, ceil_div
from .energy import filter_passes, sram_operand_bits


class Dense(Accelerator):
    """Dense bit-parallel baseline (DaDianNao-like): one window per step, lanes x rows x tiles MACs per cycle, no
    sparsity exploited. Source: DNNsim core/src/DaDianNao.cpp. Confidence: reference code. Formats: all (fp32,
    bf16, fp16, fixed point). Mapping defaults are bitsieve's where it deliberately differs from DNNsim
    (depthwise, 3-channel strided first layers); ``depthwise``/``first_layer`` = 'dnnsim' reproduce DNNsim
    (checked per layer in tests/test_dnnsim_parity.py)."""

    name = "dense"

    def weight_spec(self, cfg, fmt, wl):
        return None

    def n_pe(self, cfg):
        return cfg["rows"] * cfg["tiles"]

    def units(self, cfg, fmt):
        B = self.width(fmt)
        return cfg["lanes"] * self.n_pe(cfg) * B * B

    def cycles(self, wl, cfg) -> float:
        from .dnnsim import rewritten, rewritten_shape

        if cfg["first_layer"] == "dnnsim" and rewritten(wl):
            wl = rewritten_shape(wl)
        L, R, T = cfg["lanes"], cfg["rows"], cfg["tiles"]
        nwin = wl.windows
        if wl.depthwise:
            cb = ceil_div(wl.in_ch, L)
            per_block = wl.batch * nwin * wl.taps
            if cfg["depthwise"] == "dnnsim":  # DNNsim: every brick in turn on one tile
                return float(per_block * cb * wl.og)
            return tiling.round_robin([per_block] * cb, T) * wl.og
        cb = ceil_div(wl.cw, L)
        return float(wl.batch * wl.groups * nwin * wl.taps * cb * ceil_div(wl.og, R * T))

    def simulate(self, layer, wplanes, aplanes, cfg):
        from .. import formats

        fmt = formats.get(cfg["format"])
        B = self.width(fmt)
        cycles = self.cycles(layer, cfg)
        units = self.units(cfg, fmt)
        steps = cycles
        ev = {"pe_cycles": cycles * self.n_pe(cfg), "macs": layer.macs, "tile_steps": steps,
              **sram_operand_bits(layer, layer.batch * layer.windows,
                                  filter_passes(layer, cfg["rows"] * cfg["tiles"]), B)}  # one window per step
        util = layer.macs / max(cycles * cfg["lanes"] * self.n_pe(cfg), 1)
        return LayerResult(cycles, units, float(layer.macs) * B * B, ev,
                           "no sparsity exploited: only idle lanes/rows lose time", 1.0 - util,
                           dense_cycles=cycles)
