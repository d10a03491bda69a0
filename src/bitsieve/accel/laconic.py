"""Laconic (Sharify et al., ISCA'19) as DNNsim models it: both operands as (Booth-like) terms.

Source: DNNsim ``core/src/Laconic.cpp`` (``process_mmul``: per PE cycles = terms(a) x terms(w), a zero
product costs 1; each step costs the slowest lane, row and column of the slowest tile: the tiles run in
lock-step) and ``examples/Laconic`` (16 lanes x 16 columns x 16 rows x 16 tiles, Booth on). Confidence:
reference code.

Per step the time is max over (tile, column, row, lane) of terms(a) * terms(w), at least 1. Because terms
are non-negative this equals max over lanes of (max over columns of terms(a)) x (max over the R x T rows of
the filter pass of terms(w)), which is how it is vectorised.
Each lane multiplies one activation term by one weight term per cycle, so a lane counts as one 1-bit
product per cycle in the iso-units speed-up (``base`` module docstring).
"""
from __future__ import annotations

import numpy as np

from . import tiling
from .base import ceil_div
from .dnnsim import DnnsimModel, dense_streams, linear_calls, linear_dnnsim, result
from .kernels import terms


class Laconic(DnnsimModel):
    """Laconic (ISCA'19): activations and weights both decomposed into Booth-like terms, each lane processing term
    pairs serially; the slowest lane/row/column of a tile sets the step. Source: DNNsim core/src/Laconic.cpp.
    Confidence: reference code. Formats: fixed point only (int<b>). Mapping defaults are bitsieve's where it
    deliberately differs from DNNsim (depthwise, linear, 3-channel strided first layers);
    ``depthwise``/``linear``/``first_layer`` = 'dnnsim' reproduce DNNsim (checked per layer in
    tests/test_dnnsim_parity.py)."""

    name = "laconic"
    uses_weights = True

    def units(self, cfg, fmt):
        return cfg["lanes"] * self.n_pe(cfg)

    def simulate(self, layer, wplanes, aplanes, cfg):
        fmt = aplanes.fmt
        L, R, T = cfg["lanes"], cfg["rows"], cfg["tiles"]
        wl, mags, _, wm = self.operands(layer, wplanes, aplanes, cfg)
        ta = terms(mags, cfg["booth"], fmt.nbits).astype(np.uint8)  # [n_bricks, L]
        O = wl.out_ch
        tw = terms(wm, cfg["booth"], fmt.nbits).astype(np.int64)  # [O, J, L], J = steps (tap, brick)
        st = self.streams(wl, cfg)
        Q, S, C = st.idx.shape
        A = ta[np.maximum(st.idx, 0)]  # [Q, S, C, L]
        A = np.where((st.idx >= 0)[..., None], A, 0)
        Amax = A.max(axis=2).astype(np.int64)  # [Q, S, L]
        Asum = tiling.tap_sums(wl, ta, L)  # [Gi, taps, cb, L]
        steps = st.steps
        B2 = self.width(fmt) ** 2
        if wl.depthwise:
            cb = ceil_div(wl.in_ch, L)
            wpad = np.zeros((cb * L, steps), np.int64)
            wpad[:O] = tw[:, :, 0]
            Wd = wpad.reshape(cb, L, steps).transpose(0, 2, 1)  # [cb, taps, L]
            if st.depthwise == "tiles":  # stream q = brick q over every image
                cost = (Amax.reshape(cb, -1, steps, L) * Wd[:, None]).max(axis=3)
            else:  # stream q = sample q: bricks, window sets, passes, taps
                cost = (Amax.reshape(Q, cb, -1, steps, L) * Wd[None, :, None]).max(axis=4)
            cycles = st.combine(np.maximum(cost, 1).reshape(Q, -1).sum(axis=1).astype(np.float64))
            eff = float((Asum[0].transpose(1, 0, 2) * Wd).sum()) * wl.og
        else:
            G, nsets, passes, _ = st.shape
            Am = Amax.reshape(Q, G, nsets, passes, steps, L)[:, :, :, 0]  # the passes read the same bricks
            Wb = tiling.row_blocks(tw.reshape(O, steps * L), wl, R * T)  # one filter pass: R x T rows
            Wmax = Wb.max(axis=2).reshape(G, passes, steps, L)
            cost = np.zeros((Q, G, nsets, passes), np.int64)
            for p in range(passes):
                cost[..., p] = np.maximum((Am * Wmax[None, :, None, p]).max(axis=4), 1).sum(axis=3)
            cycles = float(cost.sum())
            As = Asum.reshape(G, steps, L)
            eff = float((As * tw.reshape(G, wl.og, steps, L).sum(axis=1)).sum())
        dense = dense_streams(st, B2)
        if wl.kind == "linear" and cfg["linear"] == "dnnsim":
            p, j, reads = linear_calls(wl, cfg)
            Wmax = tiling.row_blocks(tw.reshape(O, steps * L), wl, R * T).max(axis=2).reshape(-1, steps, L)
            A = ta.astype(np.int64).reshape(-1, steps, L)[:, j]  # [tokens, calls, L]
            cost = np.where(reads, np.maximum((A * Wmax[p, j][None]).max(axis=2), 1), 1)
            cycles = linear_dnnsim(cost, wl, cfg)
        units = self.units(cfg, fmt)
        busy = eff / max(cycles * units, 1.0)
        ev = self.events(layer, cfg, fmt, cycles, st)
        return result(cycles, units, eff, ev,
                      "slowest term pair: max over lanes x rows x columns of terms(a)*terms(w) sets each step",
                      1.0 - busy, dense, mean_act_terms=float(ta.mean()) if ta.size else 0.0)
