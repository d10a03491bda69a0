"""BitVert, the accelerator of BBS (Chen, Meng, Seo, Abdelfattah, "BBS: Bi-directional Bit-level Sparsity
for Deep Learning Acceleration", MICRO'24).

Source: BBS paper sections III-IV (two's-complement weights, one plane per cycle per 16-weight PE split in
two 8-lane sub-groups, each sub-group inverted when it holds more than 4 ones so at most 4 effectual bits
remain, 4 priority encoders x 5:1 muxes; redundant sign-extension planes (up to 3, a 2-bit field) and the
binary-pruned uniform LSB planes (all-0 or all-1, recovered through the 6-bit BBS constant) cost nothing;
16 x 32 PE array, channel reordering groups same-precision channels) and ``hardware/mac_unit_bitvert_16.v``
of yc2367/BitSim. Confidence: reference code.

What BitSim (6845fad, ``sim/sim/bitvert.py``) actually runs: its evaluation (``sim/test_bitvert.py``:
``BitVert(8, 8, 16, [32, 16], en_bbs=True, en_ol_channel=True, en_eager_compression=True)``) never looks at
the weights' bits: a layer costs its tile count x (s x 8 + (1 - s) x 4) cycles, s = the share of its output
channels the sensitive-channel pruner keeps at 8 bits (a JSON file of the authors'), the other channels at 4
(zero-point shifting with 4 pruned columns); ``_count_column_msb_clip`` is defined but never called. The
only data-dependent rule BitSim runs is the zeros-only ablation ``_count_no_b2s_cycle`` (``en_bbs`` off):
our ``mode`` = ``zeros``, exact to it per layer (tests/test_bitsim_parity.py, with ``reorder`` = false as
BitSim does not reorder; the precision mix is checked there through our tiling).

Cycles per group (``mode`` = ``bbs``, bitsieve's data rule for the paper's design): the planes left after
dropping the redundant MSB planes (planes equal to the sign plane, at most ``max_redundant``) and the uniform
LSB planes (at most ``max_pruned``); every remaining plane takes one cycle whatever its data. Per tile the
slowest row; with ``reorder`` the output channels are sorted by their cost before they are cut into rows (BBS
channel reordering). ``mode`` = ``zeros``: per group the sum over planes of ceil(ones / (group / 2)), at
least 1 per tile. Padding lanes (a chunk shorter than ``group``) are masked by the planes' ``valid`` word: they
neither break a uniform plane nor count as ones.

Zero-point shifting (``bbs:mode=zeropoint``) returns W'' = W' - c, up to 2^(const_bits-1) past the w-bit
range, whose low planes are uniform only when kept whole. Planes wider than the data format (int<w+2>tc
packing of int<w> data) are costed against the w-bit datapath: the extra top planes are sign extension, so
they count as redundant first; a group whose values need more than w bits gets no redundant plane.

The binary pruning that creates uniform LSB planes is a method (``--method bbs:k=4``); this model costs
whatever planes it is given. Hand-worked inversion (methods.md 8.2): plane bits [1,1,0,1,1,1,0,1] hold
6 ones > 4, so the sub-group is inverted and computes sum(A) - (A2 + A6) in one cycle (``select``).
"""
from __future__ import annotations

import re

import numpy as np

from .. import formats
from ..errors import UserError
from . import tiling
from .wserial import WeightSerial, result, row_share


def select(bits) -> tuple[bool, list[int]]:
    """One 8-lane sub-group of a plane -> (inverted, lanes whose activations are summed): with more than
    half ones the sub-group is inverted and the zeros are selected (the result is then sum(A) - selected)."""
    b = [int(x) & 1 for x in bits]
    inv = sum(b) > len(b) // 2
    return inv, [i for i, x in enumerate(b) if x == (0 if inv else 1)]


def group_cost(words: np.ndarray, valid: np.ndarray, width: int, cfg,
               data_width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cycles per group and effectual bits (min(ones, zeros) of the processed planes) in BBS mode.
    ``data_width`` (default ``width``): the datapath's bits when the planes are wider (module docstring)."""
    n = words.shape[0]
    v = valid.astype(np.uint64)
    B = width if data_width is None else int(data_width)
    extra = max(width - B, 0)
    sign = words[:, width - 1] & v
    red = np.zeros(n, np.int64)
    alive = np.ones(n, bool)
    for i in range(1, cfg["max_redundant"] + extra + 1):
        s = width - 1 - i
        if s < 0:
            break
        alive &= ((words[:, s] ^ sign) & v) == 0
        red += alive
    uni = np.zeros(n, np.int64)
    alive = np.ones(n, bool)
    for s in range(min(cfg["max_pruned"], width - 1)):
        w = words[:, s] & v
        alive &= (w == 0) | (w == v)
        uni += alive
    red_b = np.maximum(red - extra, 0)  # redundant planes of the w-bit datapath
    uni = np.minimum(uni, B - 1 - red_b)
    cost = B - red_b - uni
    ones = np.bitwise_count(words & v[:, None]).astype(np.int64)
    cnt = np.bitwise_count(v).astype(np.int64)[:, None]
    s_idx = np.arange(width)[None, :]
    processed = (s_idx >= uni[:, None]) & (s_idx < (width - red)[:, None])
    eff = (np.minimum(ones, cnt - ones) * processed).sum(axis=1)
    return cost, eff


class BitVert(WeightSerial):
    """BitVert (BBS, MICRO'24): two's-complement weight planes, one plane per cycle with bi-directional
    (ones or zeros) selection; redundant sign planes and binary-pruned uniform LSB planes skipped; channel
    reordering. Source: BBS paper + BitSim hardware; mode=zeros is BitSim's _count_no_b2s_cycle exactly.
    Confidence: reference code. Formats: fixed point (two's complement)."""

    name = "bitvert"
    formats = ("int",)

    def pack_format(self, fmt, cfg):
        """Two's complement; 2 bits wider than plain int<w> data once the lane packer quantises integers on
        the data's grid and clips them to the wider format (``lanes.quantized``'s ``grid``), so zero-point-shifted
        weights (up to +-(2^(w-1) - 1 + 2^(const_bits-1))) keep their uniform low planes instead of being
        clipped to int<w>."""
        if re.fullmatch(r"int\d+(tc)?", fmt.name):
            return formats.get(f"int{fmt.width + 2}tc")
        return fmt if fmt.twos else formats.get(fmt.name + "tc")

    def validate(self, cfg):
        super().validate(cfg)
        if cfg["group"] % 2:
            raise UserError("bitvert.group must be even (two sub-groups)")

    def units(self, cfg, fmt):
        """group/2 selected activations per cycle per PE (8 bit-serial multipliers for a 16-weight PE, the
        BBS paper's iso-multiplier normalisation)."""
        return cfg["group"] // 2 * self.n_pe(cfg) * self.width(fmt)

    def simulate(self, layer, wplanes, aplanes, cfg):
        wl = layer
        fmt = formats.get(cfg["format"])
        b = wplanes.fmt.width
        words = wplanes.words
        valid = wplanes.valid
        if cfg["mode"] == "bbs":
            cost, effb = group_cost(words, valid, b, cfg, min(b, fmt.width))
        else:  # the data's own planes (the top extra planes of a wider packing are sign extension)
            ones = np.bitwise_count(words[:, :min(b, fmt.width)] & valid[:, None]).astype(np.int64)
            cost = (-(-ones // (cfg["group"] // 2))).sum(axis=1)
            effb = ones.sum(axis=1)
        O = wl.out_ch
        cost2 = cost.reshape(O, -1)
        order = None
        if cfg["reorder"]:
            mean = cost2.mean(axis=1).reshape(wl.groups, wl.og)
            order = np.argsort(-mean, axis=1, kind="stable").reshape(-1)
        per_row = tiling.row_blocks(cost2, wl, cfg["rows"], order)
        t = per_row.max(axis=2)
        if cfg["mode"] == "zeros":
            t = np.maximum(t, 1)
        rep = tiling.col_blocks(wl, cfg["columns"])
        cycles = float(t.sum()) * rep
        B = self.width(fmt)
        eff = float(effb.sum()) * wl.batch * wl.windows * B
        ev = self.events(wl, cfg, fmt, cycles, t.size, rep, {"planes_mean": float(cost.mean()) if cost.size else 0.0})
        return result(cycles, self.units(cfg, fmt), eff, ev,
                      "planes left per group: the slowest row of each tile",
                      row_share(t, per_row), self.dense_equiv(t.size, rep, cfg, fmt))
