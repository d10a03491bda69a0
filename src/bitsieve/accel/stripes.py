"""Stripes (Judd et al., MICRO'16) as DNNsim models it: activations bit-serial, weights bit-parallel.

Source: DNNsim ``core/src/Stripes.cpp`` (cycles per step = the layer's activation precision p, or 16 with
p > 16 taking ``ceil(p/16)`` columns per window) and ``core/src/ShapeShifter.cpp`` for the per-group
dynamic-precision variant (Dynamic Stripes / ShapeShifter, ``process_mmul``: per group of columns, cycles =
highest set bit + 1, optional trimming of low zero bits; in a signed layer, one whose activations include a
negative value, DNNsim one's-complements every negative value (-m -> m - 1) and adds a sign bit to every
value, zeros included: ``precision_values``). With ``column_registers`` > 0 the groups run ahead by DNNsim's
start rule (``kernels.column_sync``). ``depthwise``, ``linear``, ``first_layer``: see ``accel.dnnsim``.
Confidence: reference code.

Precision (``precision``): DNNsim reads profiled per-layer precisions (``precision.txt``) that come from an
accuracy search we do not have, so bitsieve offers ``data`` (default: the bits that hold every captured
activation of the layer exactly: highest set magnitude bit + 1, + a sign bit when any value is negative),
``format`` (the format's full width) and ``dynamic`` (runtime per-group precision, the ShapeShifter rule).
With symmetric max-scaled quantisation the largest activation uses the top bit, so ``data`` is usually
the full magnitude width: Stripes' published 1.9x came from precisions profiled for accuracy.
"""
from __future__ import annotations

import numpy as np

from .. import formats
from ..errors import UserError
from .base import ceil_div
from .dnnsim import (DnnsimModel, data_precision, dense_streams, linear_calls, linear_dnnsim, result,
                     stream_costs, sync_label, sync_streams)


def precision_values(mags, signs) -> tuple[np.ndarray, bool]:
    """What DNNsim's dynamic-precision rule looks at (``ShapeShifter::process_pe``): in a signed layer (any
    activation of the layer negative) a negative value's two's complement is one's-complemented, i.e. -m
    becomes m - 1, and every value, zero included, carries a sign bit. Returns the values and the flag."""
    neg = signs & (mags != 0)
    return np.where(neg, mags - 1, mags).astype(np.int64), bool(neg.any())


def brick_precision(vals, signed: bool):
    """Per brick of ``precision_values``: highest set bit over the lanes + 1 if the layer is signed (a zero
    counts 0, as DNNsim's minMax(0) = (16, 0)) and lowest set bit over the non-zero lanes (64 if none)."""
    m = vals.astype(np.uint64)
    hi = np.where(m > 0, np.floor(np.log2(np.maximum(m, 1).astype(np.float64))).astype(np.int64), 0)
    low = m & (~m + np.uint64(1))
    lo = np.where(m > 0, np.floor(np.log2(np.maximum(low, 1).astype(np.float64))).astype(np.int64), 64)
    return hi.max(axis=-1) + int(signed), lo.min(axis=-1)


def dynamic_cycles(model, wl, cfg, mags, signs, st):
    """ShapeShifter rule per group of ``group_size`` columns, with ``column_registers`` run-ahead; a group
    whose values are all zero costs 1 (+ 1 in a signed layer with ``minor_bit``)."""
    vals, signed = precision_values(mags, signs)
    hi, lo = brick_precision(vals, signed)
    ph, act = stream_costs(hi, st, idle=-1)
    pl, _ = stream_costs(lo, st, idle=64)
    Q, S, C = ph.shape
    gs = cfg["group_size"]
    ng = ceil_div(C, gs)
    pad = ng * gs - C
    if pad:
        ph = np.concatenate([ph, np.full((Q, S, pad), -1)], axis=2)
        pl = np.concatenate([pl, np.full((Q, S, pad), 64)], axis=2)
        act = np.concatenate([act, np.zeros((Q, S, pad), bool)], axis=2)
    gh = ph.reshape(Q, S, ng, gs).max(axis=3)
    gl = pl.reshape(Q, S, ng, gs).min(axis=3)
    gact = act.reshape(Q, S, ng, gs).any(axis=3)
    if cfg["minor_bit"]:
        cost = np.where(gl <= gh, gh - gl + 1, 1 + int(signed))
    else:
        cost = np.maximum(gh, 0) + 1
    cyc, busy = sync_streams(cost, gact, cfg["column_registers"])
    bits = float((np.where(gact, cost, 0) * np.minimum(gs, C)).sum())  # bit-columns processed per lane
    return cyc, busy, bits, ng


def linear_dynamic(mags, signs, wl, cfg) -> np.ndarray:
    """Per (token, call) costs of the ShapeShifter rule in the 'dnnsim' linear mode: one brick per call (a
    call landing on another column reads zeros)."""
    vals, signed = precision_values(mags, signs)
    hi, lo = brick_precision(vals, signed)
    _, j, reads = linear_calls(wl, cfg)
    J = j.max() + 1
    hi, lo = np.where(reads, hi.reshape(-1, J)[:, j], int(signed)), np.where(reads, lo.reshape(-1, J)[:, j], 64)
    if cfg["minor_bit"]:
        return np.where(lo <= hi, hi - lo + 1, 1 + int(signed))
    return hi + 1


class Stripes(DnnsimModel):
    """Stripes (MICRO'16): bit-serial activations x bit-parallel 16-bit weights, time proportional to the activation
    precision. Source: DNNsim core/src/Stripes.cpp and core/src/ShapeShifter.cpp (dynamic precision).
    Confidence: reference code. Formats: fixed point only (int<b>). Mapping defaults are bitsieve's where it
    deliberately differs from DNNsim (depthwise, linear, 3-channel strided first layers);
    ``depthwise``/``linear``/``first_layer`` = 'dnnsim' reproduce DNNsim (checked per layer in
    tests/test_dnnsim_parity.py)."""

    name = "stripes"

    def check_format(self, fmt, cfg):
        fmt = formats.get(fmt) if isinstance(fmt, str) else fmt
        super().check_format(fmt, cfg)
        if fmt.width > cfg["pe_width"]:
            raise UserError(f"stripes: {fmt.name} is wider than the {cfg['pe_width']}-bit PEs "
                            "(--set stripes.pe_width=N for wider hardware)")

    def simulate(self, layer, wplanes, aplanes, cfg):
        fmt = aplanes.fmt
        B = self.width(fmt)
        wl, mags, signs, _ = self.operands(layer, wplanes, aplanes, cfg)
        mode = cfg["precision"]
        units = self.units(cfg, fmt)
        if mode == "dynamic":
            st = self.streams(wl, cfg)
            cyc, busy, bits, ng = dynamic_cycles(self, wl, cfg, mags, signs, st)
            cycles = st.combine(cyc)
            if wl.kind == "linear" and cfg["linear"] == "dnnsim":
                cycles = linear_dnnsim(linear_dynamic(mags, signs, wl, cfg), wl, cfg)
            eff = bits / (1 if st.depthwise == "tiles" else st.passes) * cfg["lanes"] * wl.og * B
            label, share = sync_label(float(cyc.sum()), busy, ng, 1, "column group")
            ev = self.events(layer, cfg, fmt, cycles, st)
            return result(cycles, units, eff, ev, f"dynamic precision; {label}", share, dense_streams(st, B))
        p = fmt.width if mode == "format" else data_precision(mags, signs)
        st = self.streams(wl, cfg)
        cycles = dense_streams(st, p)
        if wl.kind == "linear" and cfg["linear"] == "dnnsim":
            p_, _, _ = linear_calls(wl, cfg)
            cycles = linear_dnnsim(np.full((wl.in_hw[1] * wl.batch, p_.size), min(p, cfg["pe_width"])), wl, cfg)
        eff = float(layer.macs) * p * B
        ev = self.events(layer, cfg, fmt, cycles, st, {"precision_bits": p})
        return result(cycles, units, eff, ev, "activation precision: every activation takes the layer's p bits", p / B,
                      dense_streams(st, B), precision=p)
