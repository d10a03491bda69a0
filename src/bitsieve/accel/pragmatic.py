"""Bit-Pragmatic (Albericio et al., MICRO'17) as DNNsim models it.

Source: DNNsim ``core/src/BitPragmatic.cpp`` (``process_pe``, ``process_convolution``), ``core/src/Utils.cpp``
(Booth-like recoding) and ``examples/BitPragmatic`` (defaults: 16 lanes x 16 columns x 16 rows x 16 tiles,
``bits_first_stage`` = 2, ``column_registers`` = 1, Booth on). Confidence: reference code.

Per brick (the ``lanes`` activations a PE column multiplies in one step), the lanes process the
activations' essential bits ("oneffsets", after the optional Booth-like recoding) through a two-stage
shifter: each cycle the lowest remaining offset o over the brick is found and every activation may
retire its lowest term only if it lies in [o, o + 2^b - 1] (b = ``bits_first_stage``); an all-zero brick
costs one cycle. Columns (windows) share the weights and are synchronised: with ``column_registers`` = 0
every step waits for the slowest column; with r registers a column starts step s once it is free and the
slowest column has finished step s - 1 - r (DNNsim's start rule, ``process_mmul``), the column state running
through the whole layer per sample in DNNsim's issue order (window set, filter pass, step). ``linear`` and
``depthwise``: see ``accel.dnnsim``.

Hand-worked case (methods.md 7.2): activations {5, 12, 1}: b = 2 -> 2 cycles, b = 0 -> 3 cycles.
"""
from __future__ import annotations

import numpy as np

from . import tiling
from .dnnsim import (DnnsimModel, dense_streams, linear_calls, linear_dnnsim, result, stream_costs,
                     sync_label, sync_streams)
from .kernels import booth, pragmatic_cycles


def brick_terms(mags, use_booth: bool, bits: int):
    """Term masks (Booth-like or plain) of every activation magnitude."""
    return booth(mags, bits) if use_booth else mags


def brick_cost(mags, cfg, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-stage-shifter cycles of every brick and its term masks."""
    masks = brick_terms(mags, cfg["booth"], bits)
    return pragmatic_cycles(masks, cfg["bits_first_stage"]), masks


class Pragmatic(DnnsimModel):
    """Bit-Pragmatic (MICRO'17): only the essential bits of each activation are processed bit-serially against 16-bit
    weights, through a two-stage shifter (bits_first_stage), optionally Booth-like recoded, with column run-
    ahead registers. Source: DNNsim core/src/BitPragmatic.cpp. Confidence: reference code. Formats: fixed point
    only (int<b>; DNNsim's design is 16-bit). Mapping defaults are bitsieve's where it deliberately differs from
    DNNsim (depthwise, linear, 3-channel strided first layers); ``depthwise``/``linear``/``first_layer`` =
    'dnnsim' reproduce DNNsim (checked per layer in tests/test_dnnsim_parity.py)."""

    name = "pragmatic"

    def validate(self, cfg):
        super().validate(cfg)
        from ..errors import UserError

        if not 0 <= cfg["bits_first_stage"] <= 5:
            raise UserError(f"pragmatic.bits_first_stage must be 0..5, got {cfg['bits_first_stage']}")
        if cfg["column_registers"] < 0:
            raise UserError("pragmatic.column_registers must be >= 0")

    def simulate(self, layer, wplanes, aplanes, cfg):
        fmt = aplanes.fmt
        B = self.width(fmt)
        wl, mags, _, _ = self.operands(layer, wplanes, aplanes, cfg)
        gcost, masks = brick_cost(mags, cfg, fmt.nbits)
        st = self.streams(wl, cfg)
        cost, active = stream_costs(gcost, st)
        cyc, busy = sync_streams(cost, active, cfg["column_registers"])
        cycles = st.combine(cyc)
        if wl.kind == "linear" and cfg["linear"] == "dnnsim":
            _, j, reads = linear_calls(wl, cfg)
            cycles = linear_dnnsim(np.where(reads, gcost.reshape(-1, j.max() + 1)[:, j], 1), wl, cfg)
        lane_terms = np.bitwise_count(masks.astype(np.uint64)).astype(np.int64)
        nterms = lane_terms.sum(axis=1)
        terms_total = float(tiling.tap_sums(wl, lane_terms, cfg["lanes"]).sum())
        eff = terms_total * wl.og * B  # every term meets the B-bit weights of og filters
        # bottleneck: column sync vs the densest lane of each brick
        label, sync_share = sync_label(float(cyc.sum()), busy, cfg["columns"], 1)
        mean_lane = terms_total / cfg["lanes"]
        lane_share = max(0.0, 1.0 - mean_lane / max(busy, 1))
        if lane_share >= sync_share:
            label, share = "densest lane: the activation with the most terms sets each brick", lane_share
        else:
            share = sync_share
        ev = self.events(layer, cfg, fmt, cycles, st, {"stall_column_cycles": float(cyc.sum() * cfg["columns"] - busy)})
        return result(cycles, units=self.units(cfg, fmt), effectual=eff, events=ev, bottleneck=label,
                      share=share, dense=dense_streams(st, B), mean_terms=float(nterms.sum() / max(mags.size, 1)))
