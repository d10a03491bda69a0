"""Bitlet (Lu et al., "Distilling Bit-level Sparsity Parallelism for General Purpose Deep Learning
Acceleration", MICRO'21): the accelerator model built on the RTL-exact PE of ``bitlet_pe``.

Source: the public Verilog of ``Zhu-Zixuan/Bitlet-PE`` as measured and written down in bitlet_rtl.md
(the PE: 64 weight/activation pairs per group, 24 significance engines, 8-bit check window, latency
N + 24 / N + 21 and streaming period N + 19 / N + 16 for fp32 / fixed) and methods.md section 2.
Confidence: exact (RTL) for the PE (cycles per group, via ``bitlet_pe.checkwindow_cycles`` and
``bitlet_pe.pe_dot_batch``); the array around it (how many PEs, whether they synchronise) is not public
(methods.md 2.4 [U]) and is a documented parameter (``rows`` x ``columns`` PEs, a tile waits for its
slowest PE; the default 1 x 1 means independent PEs, for which the speed-up does not depend on the PE count).

Per group, N = max over the enabled significance planes of the aligned weight magnitudes of the
check-window cycles (bitlet_rtl.md 2.2). Cycle variants (``variant``): ``rtl`` charges each group the
published RTL's streaming period N + 19 (fp32) / N + 16 (fixed) plus the last group's latency tail;
``pipelined`` charges N (a double-buffered PE, as the paper's throughput may assume).

Alignment (``align``): ``product`` (default, the RTL): weights are aligned to the maximum of
w_exp + a_exp over the 64 pairs, zero products included, so the activations of every output pixel change
the planes: the layer's tile steps (filter block x chunk x pixel block) are costed with the RTL PE's own
kernels (``bitlet_pe``: unpack and align, plane packing, check window) on ``samples`` tile steps drawn
uniformly (seeded by ``seed``) and scaled to all of them; a layer with fewer tile steps, or
``samples`` = 0, is costed exactly. (4096 samples: the standard error of a layer's cycles is about 0.5%.) ``weight``: align to the
group's largest weight exponent (no activations needed; the BitX patent's alignment). Fixed-point data
is not aligned, so its cycles are exact and need no activations.

Formats: fp32 (and bf16/fp16 data, which the fp32 PE runs as fp32 words), fixed point up to 25 bits
(24-bit magnitudes). The RTL's ``prune`` mask (24 bits, bit s enables plane s) is the ``prune`` parameter.

BitSim's Bitlet (``sim/sim/bitlet.py`` at yc2367/BitSim 6845fad, the BBS authors' model, run by
``sim/test_bitlet.py`` as ``Bitlet(8, 8, 32, [2, 16])``) is reproduced exactly by ``count`` = ``ones``
(each significance engine takes one essential bit per cycle: N = the most ones in any plane of the
group, no check window), ``int_planes`` = ``twos`` (all 8 two's-complement planes, the sign plane
included, as BitSim's ``int_to_twosComplement``), ``variant`` = ``pipelined``, ``group`` = 32, ``rows`` = 2,
``columns`` = 16 (tests/test_bitsim_parity.py checks every layer of lenet-mnist and mtcnn-rnet). With
``variant`` = ``rtl`` the same groups cost N + 16 each plus the 5-cycle tail. The defaults stay the
published RTL (check window, sign-magnitude).
"""
from __future__ import annotations

import zlib

import numpy as np

from .. import formats
from ..errors import UserError
from . import tiling
from .base import ceil_div
from .bitlet_pe import (LATENCY, N_PAIRS, PERIOD, _pe_kernel, checkwindow_cycles, pe_dot,  # noqa: F401 (re-export)
                        pe_dot_batch, plane_words)
from .wserial import WeightSerial, result

ACT_BITS = 24  # the PE multiplies a selected weight bit by a 24-bit (+sign) activation mantissa


def round_words(values: np.ndarray, fmt: formats.Format) -> np.ndarray:
    """Float values rounded to ``fmt`` (bf16/fp16/fp32), returned as fp32 words (exact)."""
    if fmt.name == "fp32":
        return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    if fmt.name == "bf16":  # a bf16 pattern is the top half of the fp32 word
        return fmt.encode(values) << np.uint32(16)
    v = fmt.decode(fmt.encode(values)).astype(np.float32)
    return np.ascontiguousarray(v).view(np.uint32)


class Bitlet(WeightSerial):
    """Bitlet (MICRO'21): bit-interleaving PE, 24 significance engines each picking one 1 per cycle
    through an 8-bit check window over a 64-weight plane; N = slowest plane; rtl (N+19 / N+16 period) or
    pipelined (N) variants; weights aligned on product exponents (RTL) or weight exponents. Source:
    Zhu-Zixuan/Bitlet-PE RTL (bitlet_rtl.md). Confidence: exact (RTL) for the PE, the array is a
    documented assumption. Formats: fp32 (bf16/fp16 data as fp32 words), fixed point <= 25 bits."""

    name = "bitlet"
    formats = ("fp32", "bf16", "fp16", "int")
    align_floats = "weight"

    def check_format(self, fmt, cfg):
        fmt = formats.get(fmt) if isinstance(fmt, str) else fmt
        super().check_format(fmt, cfg)
        if not fmt.is_float and fmt.width > 25:
            raise UserError(f"bitlet takes fixed point up to 25 bits (24-bit magnitudes); {fmt.name} is wider")

    def validate(self, cfg):
        super().validate(cfg)
        if not 1 <= cfg["prune"] <= 0xFFFFFF:
            raise UserError("bitlet.prune must be a non-zero 24-bit mask (the RTL hangs with prune = 0)")
        if cfg["group"] > 64:
            raise UserError("bitlet.group is at most 64 (N_total)")
        if cfg["samples"] < 0:
            raise UserError("bitlet.samples must be >= 0 (0 = every tile step, exact)")
        if cfg["int_planes"] == "twos" and cfg["count"] != "ones":
            raise UserError("bitlet.int_planes=twos is BitSim's model and needs bitlet.count=ones "
                            "(the RTL check window reads sign-magnitude planes)")

    needs_activations = True  # with product alignment of float data (see reads_activations)

    def reads_activations(self, cfg, fmt):
        return self.uses_product(cfg, fmt)

    def pack_format(self, fmt, cfg):
        if fmt.is_float:
            return formats.get("fp32")
        if cfg.get("int_planes") == "twos":  # BitSim: two's-complement planes, sign plane included
            return fmt if fmt.twos else formats.get(fmt.name + "tc")
        if fmt.twos:
            return formats.get(fmt.name[:-2])
        return fmt

    def uses_product(self, cfg, fmt) -> bool:
        return fmt.is_float and cfg["align"] == "product"

    def units(self, cfg, fmt):
        return self.n_pe(cfg) * cfg["channels"] * ACT_BITS

    def overhead(self, cfg, fmt) -> tuple[int, int]:
        """(per-group cycles added, one-off tail) of the cycle variant."""
        mode = "fp32" if fmt.is_float else "fixed"
        if cfg["variant"] == "rtl":
            return PERIOD[mode], LATENCY[mode] - PERIOD[mode]
        return 0, 0

    def _n_from_planes(self, words, cfg):
        """N per group from [n, nbits] plane words (enabled planes only; enabled planes beyond the data's
        width are all-zero and cost 8 each)."""
        nb = words.shape[1]
        ones = cfg.get("count") == "ones"
        if ones:  # BitSim: one essential bit per engine per cycle
            cw = np.bitwise_count(words).astype(np.int64)
        else:
            cw = checkwindow_cycles(words, cfg["window"], cfg["n_calc"])
        en = ((cfg["prune"] >> np.arange(nb)) & 1).astype(bool)
        cw = np.where(en[None, :], cw, 0)
        n = cw.max(axis=1, initial=0)
        if not ones and (cfg["prune"] >> nb) & 0xFFFFFF:
            zero_cost = checkwindow_cycles(np.zeros(1, np.uint64), cfg["window"], cfg["n_calc"])[0]
            n = np.maximum(n, zero_cost)
        return n, cw

    def simulate(self, layer, wplanes, aplanes, cfg):
        wl = layer
        fmt = formats.get(cfg["format"])
        over, tail = self.overhead(cfg, fmt)
        if self.uses_product(cfg, fmt):
            if cfg["count"] == "ones":
                raise UserError("bitlet.count=ones (BitSim's model) costs planes aligned without activations: "
                                "use it with fixed point or --set bitlet.align=weight")
            return self._simulate_product(wl, fmt, cfg, over, tail)
        words = wplanes.words
        n, cw = self._n_from_planes(words, cfg)
        cost = (n + over).reshape(wl.out_ch, -1)
        cycles, t, rep = self.tiles(cost, wl, cfg)
        cycles += tail * (1 if cycles else 0)
        pop = float(np.bitwise_count(words).sum())
        eff = pop * wl.batch * wl.windows * self.width(fmt)
        arg = np.argmax(cw, axis=1) if cw.size else np.zeros(0, int)
        s, share = _top_plane(arg, n > 0)
        ev = self.events(wl, cfg, fmt, cycles, t.size, rep, {"mean_n": float(n.mean()) if n.size else 0.0})
        return result(cycles, self.units(cfg, fmt), eff, ev,
                      f"densest plane: plane s={s} sets N most often", share,
                      self.dense_equiv(t.size, rep, cfg, fmt), mean_n=ev["mean_n"])

    # ---- product alignment: the RTL PE on sampled (tile, pixel block) pairs -------------------------------
    def _simulate_product(self, wl, fmt, cfg, over, tail):
        if wl.activation is None:
            raise UserError(f"{wl.name}: bitlet with align=product needs the captured activations "
                            "(or --set bitlet.align=weight)")
        G, R, C = cfg["group"], cfg["rows"], cfg["columns"]
        lay = tiling.layout(wl, G, cfg["layout"])
        J = lay.J
        Ww = round_words(tiling.lane_values(wl, lay, formats.get("fp32")), fmt)  # [O, J, G] uint32
        A = tiling.act_grouped(wl, pad=True)
        grouped = wl.groups > 1 and not wl.depthwise
        A = A.reshape(wl.groups if grouped else 1, wl.batch, *A.shape[1:])
        Aw = round_words(A, fmt)  # [Gimg, N, Cimg, Hp, Wp]
        oh, ow = wl.out_hw
        sh, sw = wl.stride
        nbk, cbw = ceil_div(wl.og, R), ceil_div(ow, C)
        nblocks = wl.batch * oh * cbw
        ntile = wl.groups * nbk * J
        total = ntile * nblocks
        S = cfg["samples"]
        exact = S == 0 or total <= S
        if exact:
            pairs = np.arange(total, dtype=np.int64)
        else:
            rng = np.random.default_rng([cfg["seed"], zlib.crc32(wl.name.encode())])
            pairs = rng.integers(0, total, size=S)
        chan = np.where(lay.valid, lay.lane_ch, 0)
        ky, kx = np.divmod(np.where(lay.valid, lay.lane_tap, 0), wl.kernel[1])
        en = ((cfg["prune"] >> np.arange(24)) & 1).astype(bool)
        cost = np.empty(pairs.size)
        pop = 0.0
        hist = np.zeros(24, np.int64)
        step = max(1, 16384 // (R * C))
        for p0 in range(0, pairs.size, step):
            pr = pairs[p0:p0 + step]
            tile, blk = np.divmod(pr, nblocks)
            g, rest = np.divmod(tile, nbk * J)
            b, j = np.divmod(rest, J)
            n_i, rest = np.divmod(blk, oh * cbw)
            oy, bx = np.divmod(rest, cbw)
            ox = bx[:, None] * C + np.arange(C)  # [s, C]
            rows = b[:, None] * R + np.arange(R)  # [s, R] filter index within the group
            ok = (rows < wl.og)[:, :, None] & (ox < ow)[:, None, :]  # [s, R, C]
            Wsel = Ww[g[:, None] * wl.og + np.minimum(rows, wl.og - 1), j[:, None]]  # [s, R, G]
            ch = g[:, None] + 0 * chan[j] if wl.depthwise else chan[j]  # [s, G]
            yy = (oy[:, None, None] * sh + ky[j][:, None, :])  # [s, 1, G]
            xx = np.minimum(ox, ow - 1)[:, :, None] * sw + kx[j][:, None, :]  # [s, C, G]
            gi = g if grouped else np.zeros_like(g)
            Asel = Aw[gi[:, None, None], n_i[:, None, None], ch[:, None, :], yy, xx]  # [s, C, G]
            Asel = np.where(lay.valid[j][:, None, :], Asel, np.uint32(0))
            si, ri, ci = np.nonzero(ok)
            n, cw, wal = group_n(Wsel[si, ri], Asel[si, ci], cfg, en)
            full = np.full(ok.shape, -1, np.int64)
            full[si, ri, ci] = n + over
            cost[p0:p0 + step] = full.max(axis=(1, 2))
            pop += float(np.bitwise_count(wal).sum())
            np.add.at(hist, cw.argmax(axis=1), 1)
        scale = 1.0 if exact else total / pairs.size
        cycles = float(cost.sum()) * scale + tail
        eff = pop * scale * self.width(fmt)
        s = int(hist.argmax()) if hist.sum() else 0
        share = float(hist.max() / max(hist.sum(), 1))
        ev = self.events(wl, cfg, fmt, cycles, ntile, nblocks, {"sampled": float(not exact)})
        how = "exact" if exact else f"{pairs.size} sampled tile steps"
        return result(cycles, self.units(cfg, fmt), eff, ev,
                      f"densest plane: plane s={s} sets N most often ({how})", share,
                      self.dense_equiv(ntile, nblocks, cfg, fmt))


def group_n(W: np.ndarray, A: np.ndarray, cfg: dict, enabled: np.ndarray):
    """The RTL PE's N for many groups of fp32 words [E, <=64]: ``bitlet_pe``'s unpack/align kernel, its
    plane packing and its check-window scheduler (the values it also computes are not needed here).
    Returns (N [E], channel cycles [E, 24], aligned magnitudes [E, 64])."""
    E = W.shape[0]
    pad = N_PAIRS - W.shape[1]
    if pad:
        W = np.pad(W, ((0, 0), (0, pad)))
        A = np.pad(A, ((0, 0), (0, pad)))
    W = np.ascontiguousarray(W, dtype=np.uint32)
    A = np.ascontiguousarray(A, dtype=np.uint32)
    wal = np.zeros((E, N_PAIRS), np.uint32)
    _pe_kernel(W, A, False, np.int64(cfg["prune"]), np.int64(0), False, wal, np.zeros(E, np.int64),
               np.zeros(E, np.int64), np.zeros(E, np.uint32))
    cw = np.where(enabled[None, :], checkwindow_cycles(plane_words(wal), cfg["window"], cfg["n_calc"]), 0)
    return cw.max(axis=1, initial=0), cw, wal


def _top_plane(arg: np.ndarray, mask: np.ndarray) -> tuple[int, float]:
    a = arg[mask] if mask.size else arg
    if a.size == 0:
        return 0, 0.0
    h = np.bincount(a)
    return int(h.argmax()), float(h.max() / a.size)
