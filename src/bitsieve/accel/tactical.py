"""Bit-Tactical (Delmas Lascorz et al., ASPLOS'19) as DNNsim models it: a static weight-sparsity scheduler in
front of an activation-bit back-end.

Source: DNNsim ``core/src/BitTactical.cpp`` (``original_schedule``, ``search``, ``promote``),
``core/include/core/BitTactical.h`` (the 'T' and 'L' search maps), ``core/src/BitPragmatic.cpp`` (TCL-E:
Pragmatic back-end, ``process_pe`` with each lane reading the activation its promoted weight needs) and
``core/src/ShapeShifter.cpp`` (TCL-P: dynamic-precision back-end), ``core/src/OutputStationary.cpp``
(weight buffer per filter set, zero lines skipped up to H in a row). Defaults from DNNsim's
``examples/BitPragmatic/BitTacticalE_example`` and ``examples/ShapeShifter/BitTacticalP_example``:
lookahead H = 2, lookaside D = 5, 'T' shape, 16 lanes x 16 columns x 16 rows x 16 tiles; E: b = 2,
1 column register, Booth on; P: group size 1, no registers, no low-bit trimming. Confidence: reference code.

Scheduler: weights of a filter set are a [step][row][lane] buffer. For each step (all-zero steps skipped,
at most H in a row), for each row: among its zero slots, count the non-zero candidates in the search map
(lookahead (t+h, same lane), lookaside (t+dh, lane+d) with wrap-around inside the 16 lanes), promote the
first candidate into the first slot whose count equals the current maximum, repeat until no slot has a
candidate. As in DNNsim's ``process_pe``, a zero weight left in place still feeds its activation to the
back-end; a slot whose weight moved away reads nothing.

Back-end cost per step and column: max over the filter set's rows of the Pragmatic brick cost (E) of the
activations the row's lanes fetch; P: per group of columns, highest bit over the rows, lanes and columns of
the group, + 1, with DNNsim's signed-layer rule (``stripes.precision_values``). At step 0 a padding slot
fetches lane 0 (DNNsim's default buffer entry). Tiles run in lock-step (``WindowFirstOutS``): per window
set, the T filter sets of a pass each issue their executed steps, call i costs the slowest tile, and the
column-sync state (``column_registers`` run-ahead, DNNsim's start rule) runs through the whole layer per
sample. Depthwise: ``depthwise`` = 'tiles' (bitsieve: channel bricks dealt to the tiles, each on its own)
or 'dnnsim' (every brick in turn on one tile). Linear: ``linear`` = 'tokens' or 'dnnsim' (one token at a
time, ``kernels.tactical_linear_costs``); ``first_layer``: see ``accel.dnnsim``.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from . import tiling
from .base import ceil_div
from .dnnsim import DnnsimModel, dense_streams, linear_dnnsim, result
from .kernels import (_patterns_kernel, booth, pragmatic_cycles, tactical_cycles, tactical_linear_costs,
                      tactical_schedule)


class Tactical(DnnsimModel):
    """Bit-Tactical (ASPLOS'19): lookahead/lookaside weight-sparsity scheduler ('T' or 'L' search shape) on a Pragmatic
    (TCL-E) or dynamic-precision (TCL-P) activation back-end. Source: DNNsim core/src/BitTactical.cpp,
    BitPragmatic.cpp, ShapeShifter.cpp. Confidence: reference code. Formats: fixed point only (int<b>). Mapping
    defaults are bitsieve's where it deliberately differs from DNNsim (depthwise, linear, 3-channel strided
    first layers); ``depthwise``/``linear``/``first_layer`` = 'dnnsim' reproduce DNNsim (checked per layer in
    tests/test_dnnsim_parity.py)."""

    name = "tactical"
    uses_weights = True

    def validate(self, cfg):
        super().validate(cfg)
        if cfg["lookahead"] > 8 or cfg["lookaside"] > 15:
            raise UserError("tactical: lookahead must be <= 8 and lookaside <= 15")
        if not 0 <= cfg["bits_first_stage"] <= 5:
            raise UserError("tactical.bits_first_stage must be 0..5")

    def schedule(self, wl, wm, cfg):
        """Build the weight buffers of every filter set and run the scheduler. Returns a dict of the kernel's
        inputs that depend on the weights."""
        L, R = cfg["lanes"], cfg["rows"]
        O = wl.out_ch
        wm = wm.reshape(O, -1, L)  # [O, J, L]
        J = wm.shape[1]
        if wl.depthwise:
            if wl.og != 1:
                raise UserError(f"{wl.name}: tactical models depthwise convs with one filter per channel")
            cb = ceil_div(wl.in_ch, L)
            F, R = cb, L
            diag = np.zeros((cb * L, J), np.int64)
            diag[:O] = wm[:, :, 0]
            d = diag.reshape(cb, L, J).transpose(0, 2, 1)  # [F, taps, rows]
            nzv = np.zeros((F, J, L, L), bool)
            real = np.zeros((F, J, L, L), bool)
            rr = np.arange(L)
            nzv[:, :, rr, rr] = d != 0
            realrow = (np.arange(cb * L) < O).reshape(cb, L)
            real[:, :, rr, rr] = realrow[:, None, :]
            rows_real = np.minimum(L, O - np.arange(cb) * L)
            img0 = np.zeros(F, np.int64)
            img1 = np.full(F, wl.batch, np.int64)
            boff = np.arange(F, dtype=np.int64)
            ky, kx = np.divmod(np.arange(J), wl.kernel[1])
            sb = np.zeros(J, np.int64)
            wnz = d != 0  # [F, taps, rows] per lane l = row
        else:
            lay = tiling.layout(wl, L, "channel")
            blk = tiling.row_blocks(wm.reshape(O, J * L), wl, R)  # [G, nb, R, J*L]
            G, nb = blk.shape[:2]
            F = G * nb
            w = blk.reshape(F, R, J, L).transpose(0, 2, 1, 3)  # [F, J, R, L]
            rowok = (np.arange(nb * R) < wl.og).reshape(nb, R)
            real = np.broadcast_to(lay.valid[None, :, None, :] & np.tile(rowok, (G, 1))[:, None, :, None],
                                   (F, J, R, L))
            nzv = w != 0
            rows_real = np.tile(np.minimum(R, wl.og - np.arange(nb) * R), G)
            gi = np.repeat(np.arange(G), nb)
            img0, img1 = gi * wl.batch, (gi + 1) * wl.batch
            boff = np.zeros(F, np.int64)
            cb = ceil_div(wl.cw, L)
            tap, sb = np.divmod(np.arange(J), cb)
            ky, kx = np.divmod(tap, wl.kernel[1])
            wnz = None
        real = np.ascontiguousarray(real)
        src_t, src_l, execd = tactical_schedule(nzv, real, cfg["shape"], cfg["lookahead"], cfg["lookaside"])
        return dict(src_t=src_t, src_l=src_l, execd=execd, real=real, rows_real=rows_real.astype(np.int64),
                    img0=img0.astype(np.int64), img1=img1.astype(np.int64), boff=boff.astype(np.int64),
                    ky=ky.astype(np.int64), kx=kx.astype(np.int64), sb=sb.astype(np.int64),
                    nz_weights=int(nzv.sum()), F=F, wm=wm, wnz=wnz, cb=cb)

    def simulate(self, layer, wplanes, aplanes, cfg):
        fmt = aplanes.fmt
        B = self.width(fmt)
        L, C, T = cfg["lanes"], cfg["columns"], cfg["tiles"]
        wl, mags, signs, wm = self.operands(layer, wplanes, aplanes, cfg)  # bricks in order (image, y, x, brick)
        sch = self.schedule(wl, wm, cfg)
        Hp, Wp = wl.padded_hw
        pragmatic = cfg["backend"] == "pragmatic"
        cbk = sch["cb"]
        Cp = cbk * L
        signed = False
        if pragmatic:
            masks = booth(mags, fmt.nbits) if cfg["booth"] else mags
            gcost = pragmatic_cycles(masks, cfg["bits_first_stage"])
            M = masks.astype(np.uint64).reshape(-1)
            ghi = glo = np.zeros(1, np.int64)
            regs, gs = cfg["column_registers"], 1
        else:
            from .stripes import brick_precision, precision_values

            vals, signed = precision_values(mags, signs)
            ghi, glo = brick_precision(vals, signed)
            gcost = np.zeros(1, np.int64)
            M = vals.astype(np.uint64).reshape(-1)
            regs, gs = cfg["group_registers"], cfg["group_size"]
        # flat offsets (relative to a window's top-left input pixel) of what every slot reads; rows with the
        # identity schedule share the brick cost, the others become distinct fetch patterns
        src_t, src_l = sch["src_t"], sch["src_l"]
        F_, J, R_, L_ = src_t.shape
        step_off = ((sch["ky"] * Wp + sch["kx"]) * Cp + sch["sb"] * L).astype(np.int64)
        goff = ((sch["ky"] * Wp + sch["kx"]) * cbk + sch["sb"])[None, :] + sch["boff"][:, None]
        has_ident = np.zeros((F_, J), np.bool_)
        pat_off = np.empty((F_ * J * R_, L_), np.int64)
        pat_start = np.zeros((F_, J), np.int64)
        pat_n = np.zeros((F_, J), np.int64)
        npat = _patterns_kernel(src_t, src_l, sch["real"], sch["rows_real"], step_off, sch["boff"], L,
                                not wl.depthwise, has_ident, pat_off, pat_start, pat_n)
        pat_off = pat_off[:npat]
        oh, ow = wl.out_hw
        F = np.arange(F_)
        if not wl.depthwise:  # per sample, conv group by conv group, T filter sets in lock-step per pass
            nb = F_ // wl.groups
            cls, pass_id, base, stride, nstates = F // nb, (F % nb) // T, np.zeros(F_, np.int64), 1, wl.batch
        elif cfg["depthwise"] == "dnnsim":  # per sample, brick after brick on one tile
            cls, pass_id, base, stride, nstates = F, np.zeros(F_, np.int64), np.zeros(F_, np.int64), 1, wl.batch
        else:  # one state per brick over every image, bricks dealt to the tiles
            cls, pass_id, base, stride, nstates = np.zeros(F_, np.int64), F, F, 0, F_
        out_c = tactical_cycles(M, gcost.astype(np.int64), ghi.astype(np.int64), glo.astype(np.int64), pat_off,
                                pat_start, pat_n, goff.astype(np.int64), sch["execd"], has_ident, sch["img0"],
                                sch["img1"], cls, pass_id, base, stride, nstates, Hp, Wp, Cp, cbk, wl.stride[0],
                                wl.stride[1], oh, ow, C, 0 if pragmatic else 1, 1 << cfg["bits_first_stage"], gs,
                                cfg["minor_bit"], signed, regs)
        out_c = out_c.astype(np.float64)
        cycles = tiling.round_robin(out_c, T) if wl.depthwise and cfg["depthwise"] == "tiles" else float(out_c.sum())
        if wl.kind == "linear" and cfg["linear"] == "dnnsim":
            pass_fs = np.r_[np.arange(0, F_, T), F_]
            cost = tactical_linear_costs(M.reshape(-1, J, L).astype(np.int64), src_t, src_l, sch["execd"],
                                         sch["rows_real"], pass_fs, C, 0 if pragmatic else 1,
                                         1 << cfg["bits_first_stage"], signed, cfg["minor_bit"])
            cycles = linear_dnnsim(cost, wl, cfg)
        # work: terms (E) or precision bits (P) of activations met by non-zero weights
        st = self.streams(wl, cfg)
        if pragmatic:
            per = np.bitwise_count(masks.astype(np.uint64)).astype(np.int64)
        else:
            m = mags.astype(np.uint64)
            per = np.where(m > 0, np.floor(np.log2(np.maximum(m, 1).astype(np.float64))).astype(np.int64) + 1, 1)
            per = per + (signs & (mags != 0))
        As = tiling.tap_sums(wl, per, L)  # [Gi, taps, cb, L]
        wm = sch["wm"]
        if wl.depthwise:
            nzw = (sch["wnz"]).astype(np.int64)  # [F = cb, taps, L]
            eff = float((As[0].transpose(1, 0, 2) * nzw).sum()) * B
        else:
            Gs = wl.groups
            nzw = (wm != 0).reshape(Gs, wl.og, -1, L).sum(axis=1)  # [G, steps, L]
            eff = float((As.reshape(Gs, -1, L) * nzw).sum()) * B
        executed = float(sch["execd"].sum()) / max(sch["execd"].size, 1)
        units = self.units(cfg, fmt)
        ev = self.events(layer, cfg, fmt, cycles, st, {"executed_step_frac": executed,
                                                     "zero_weight_frac": 1.0 - sch["nz_weights"] / max(wm.size, 1)})
        loss = 1.0 - eff / max(cycles * units, 1.0)
        back = "Pragmatic" if pragmatic else "dynamic-precision"
        return result(cycles, units, eff, ev, f"{back} back-end: slowest row x column of each scheduled step", loss,
                      dense_streams(st, B), executed_steps=executed)
