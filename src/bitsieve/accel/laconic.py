"""Laconic (Sharify et al., ISCA'19) as DNNsim models it: both operands as (Booth-like) terms.

Source: DNNsim ``core/src/Laconic.cpp`` (``computeLaconicPE``: cycles = terms(a) x terms(w), a zero product
costs 1 with ZERO_COUNT; ``computeLaconicColumn``/``computeLaconicTile``: the slowest PE over the lanes, the
rows and the columns of a tile sets the step) and ``examples/Laconic`` (16 lanes x 16 columns x 16 rows x 16
tiles, Booth on). Confidence: reference code.

Per step the tile time is max over (column, row, lane) of terms(a) * terms(w), at least 1. Because terms
are non-negative this equals max over lanes of (max over columns of terms(a)) x (max over rows of terms(w)),
which is how it is vectorised. Filter blocks of R rows run on T tiles side by side (round-robin).
Each lane multiplies one activation term by one weight term per cycle, so a lane counts as one 1-bit
product per cycle in the iso-units speed-up (``base`` module docstring).
"""
from __future__ import annotations

import numpy as np

from . import tiling
from .dnnsim import DnnsimModel, brick_values, result
from .kernels import terms


class Laconic(DnnsimModel):
    """Laconic (ISCA'19): activations and weights both decomposed into Booth-like terms, each lane
    processing term pairs serially; the slowest lane/row/column of a tile sets the step. Source: DNNsim
    core/src/Laconic.cpp. Confidence: reference code. Formats: fixed point only (int<b>)."""

    name = "laconic"
    uses_weights = True

    def units(self, cfg, fmt):
        return cfg["lanes"] * self.n_pe(cfg)

    def simulate(self, layer, wplanes, aplanes, cfg):
        wl = layer
        fmt = aplanes.fmt
        L, R, T = cfg["lanes"], cfg["rows"], cfg["tiles"]
        mags, _ = brick_values(aplanes)
        ta = terms(mags, cfg["booth"], fmt.nbits).astype(np.uint8)  # [n_bricks, L]
        O = wl.out_ch
        tw = terms(wplanes.magnitudes(), cfg["booth"], fmt.nbits).astype(np.int64)
        tw = tw.reshape(O, -1, L)  # [O, J, L], J = steps (tap, brick)
        st = self.streams(wl, cfg)
        Q, S, C = st.idx.shape
        A = ta[np.maximum(st.idx, 0)]  # [Q, S, C, L]
        A = np.where((st.idx >= 0)[..., None], A, 0)
        Amax = A.max(axis=2).astype(np.int64)  # [Q, S, L]
        Asum = tiling.tap_sums(wl, ta, L)  # [Gi, taps, cb, L]
        steps = st.steps
        B2 = self.width(fmt) ** 2
        if st.depthwise:
            cb = Q
            wpad = np.zeros((cb * L, steps), np.int64)
            wpad[:O] = tw[:, :, 0]
            Wd = wpad.reshape(cb, L, steps).transpose(0, 2, 1)  # [cb, taps, L]
            Am = Amax.reshape(cb, -1, steps, L)
            cost = np.maximum((Am * Wd[:, None]).max(axis=3), 1)  # [cb, sets, taps]
            stream = cost.sum(axis=(1, 2)).astype(np.float64)
            cycles = tiling.round_robin(stream, T) * wl.og
            dense = tiling.round_robin(np.full(cb, cost[0].size * B2, np.float64), T) * wl.og
            eff = float((Asum[0].transpose(1, 0, 2) * Wd).sum()) * wl.og
        else:
            G = wl.groups
            Am = Amax.reshape(G, -1, steps, L)  # images of group g are contiguous
            As = Asum.reshape(G, steps, L)
            Wb = tiling.row_blocks(tw.reshape(O, steps * L), wl, R).reshape(G, -1, R, steps, L)
            Wmax = Wb.max(axis=2)  # [G, nblk, steps, L]
            blocks = []
            for g in range(G):
                for b in range(Wmax.shape[1]):
                    blocks.append(float(np.maximum((Am[g] * Wmax[g, b][None]).max(axis=2), 1).sum()))
            cycles = tiling.round_robin(np.array(blocks), T)
            dense = tiling.round_robin(np.full(len(blocks), Am[0].shape[0] * steps * B2, np.float64), T)
            eff = float((As * tw.reshape(G, wl.og, steps, L).sum(axis=1)).sum())
        units = self.units(cfg, fmt)
        busy = eff / max(cycles * units, 1.0)
        ev = self.events(wl, cfg, fmt, cycles, st)
        return result(cycles, units, eff, ev,
                      "slowest term pair: max over lanes x rows x columns of terms(a)*terms(w) sets each step",
                      1.0 - busy, dense, mean_act_terms=float(ta.mean()) if ta.size else 0.0)
