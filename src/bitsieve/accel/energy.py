"""Energy and area: event counts x per-event energies, every number from a cited table with its node.

Compute. Every model states its array's ``units`` (peak 1b x 1b products per cycle, ``base`` docstring) and
``unit_pj``, the energy of one unit for one cycle, comes from its data file: for most designs the BBS paper's
Table V (MICRO'24; 28 nm, 800 MHz; PEs normalised to 8 bit-serial multipliers of 8 bits = 64 units):
PE power / frequency / 64, e.g. Stripes 0.37 mW / 800 MHz / 64 = 7.23 fJ. Float datapaths scale by a
documented factor. Which unit-cycles are charged:

- a unit that holds a real operand pair is charged every cycle of the layer: BitSim charges every PE every
  cycle (``PE_ENERGY * num_pe * num_cycle``), so a lane that finished its bits early still burns energy while
  it waits, in lock-step, for the slowest lane of its tile;
- a unit that holds no real operand (channel padding, filters or windows past the layer's edge, rows,
  columns and tiles of an array larger than the layer) is clock/operand gated and charged nothing. Without
  this, a 4096-MAC array running LeNet's 1-input-channel conv1 charged every one of its MAC units each
  cycle: 0.15% occupancy, about 1300 pJ per fp32 MAC instead of about 10.

  The occupied share is read off the model's same-dataflow dense reference: ``dense_cycles`` x ``units`` is
  the unit-cycles of all the tiling's MAC slots at bit-parallel speed, of which MACs x B^2 are real, so
  compute = cycles x units x (MACs x B^2 / (dense_cycles x units)) x ``unit_pj``
          = (cycles / dense_cycles) x MACs x B^2 x ``unit_pj``:
  every real MAC costs B^2 units for the time the design needs per bit-parallel step. For ``dense`` this is
  exactly MACs x B^2 x ``unit_pj``: 1.85 pJ per int16 MAC, 10.5 pJ per fp32 MAC (24-bit significand x 2.53,
  ``data/dense.toml``). Cross-check, Horowitz ISSCC'14 (45 nm, arithmetic only): int16 MAC ~0.9 pJ (8b mult
  0.2 pJ, 32b mult 3.1 pJ, quadratic in width, + 32b add 0.1 pJ), fp32 MAC 4.6 pJ (3.7 + 0.9). The model is
  about 2x those: the BBS PE figures are synthesised PE totals (pipeline and accumulator registers, clock),
  not bare arithmetic, and the bit-serial per-unit figure carries them to a bit-parallel MAC
  (the iso-multiplier assumption, BBS V-A: one 8-bit multiplier = 8 bit-serial multipliers).

Memory: one table, ``data/memory.toml`` (SRAM per 64-bit access from Horowitz ISSCC'14, 45 nm; DRAM per
64-bit access from BitSim, off-chip). SRAM bits are the models' tile reads (weights and activations per
tile step, the reuse each dataflow implies: DaDianNao re-reads a weight brick for every window, the
bit-serial designs read a step's operands once and hold them for its cycles) plus output writes. Lanes that
hold padding are read too (the buffers hold the tiling's zero-padded bricks and groups, BitSim's one read
per buffer per tile): that weighs on wide fixed groups over short reductions, e.g. BitX/BitXpro's 64-lane
groups on efficientnet's 3x3 depthwise convs (9 of 64 lanes real): ~27x dense's SRAM energy there. The models
count tile reads at their datapath width B (the significand for floats); values are stored at the format's
width (32 bits for fp32), so those reads are scaled by width / B. DRAM bits are each layer's weights (the
model event ``dram_w_bits`` where a design stores them compressed; no model does yet), input activations
and output activations, each exactly once per layer and batch (BitSim without refetch: the weights are read
once whatever the batch, so energy is affine in the batch, not proportional).
DRAM-bound time = DRAM bits / (64 bits x 2, DDR) per cycle (BitSim ``_calc_dram_cycle``).

Area: PE-array area = units / ``pe_units`` x ``pe_um2`` (the cited PE area), reported in mm^2.
"""
from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources

from .. import formats


@lru_cache(maxsize=None)
def memory_table() -> dict:
    return tomllib.loads(resources.files("bitsieve.accel").joinpath("data", "memory.toml").read_text())


def unit_pj(acc, fmt: formats.Format) -> float:
    """pJ per 1b x 1b unit per cycle for this accelerator and format."""
    e = acc.energy
    base = float(e["unit_pj"])
    kind = "fp32" if fmt.name == "fp32" else ("float16" if fmt.is_float else ("int16" if fmt.width > 8 else "int8"))
    return base * float(e.get(f"scale_{kind}", 1.0))


def occupancy(acc, fmt: formats.Format, wl, res) -> float:
    """Share of the array's unit-cycles that hold a real operand pair: MACs x B^2 over the unit-cycles of
    the model's same-dataflow dense reference (``dense_cycles`` x ``units``); 1 where a model gives none."""
    B = acc.width(fmt)
    slots = res.dense_cycles * res.units
    if slots <= 0:
        return 1.0
    return min(1.0, float(wl.macs) * B * B / slots)


def active_unit_cycles(acc, fmt: formats.Format, wl, res) -> float:
    """Unit-cycles charged for compute: every cycle of the units that hold a real operand pair."""
    return res.cycles * res.units * occupancy(acc, fmt, wl, res)


def dram_bits(wl, fmt: formats.Format, res) -> dict:
    """DRAM bits of a layer, each read or written once: weights as stored (model event ``dram_w_bits`` if
    the design compresses), input activations and output activations at the format's width."""
    B = fmt.width
    w = res.events.get("dram_w_bits", wl.out_ch * wl.cw * wl.taps * B)
    H, W = wl.in_hw
    a_in = wl.batch * wl.in_ch * H * W * B
    a_out = wl.batch * wl.out_ch * wl.windows * B
    return {"w": float(w), "a_in": float(a_in), "a_out": float(a_out)}


def sram_bits(acc, fmt: formats.Format, wl, res) -> float:
    """SRAM bits of a layer: the model's tile reads (counted at the datapath width, scaled to the stored
    width) plus one write of every output."""
    reads = res.events.get("sram_w_bits", 0.0) + res.events.get("sram_a_bits", 0.0)
    reads *= fmt.width / acc.width(fmt)
    return reads + wl.batch * wl.out_ch * wl.windows * fmt.width


def estimate(acc, cfg: dict, fmt: formats.Format, wl, res) -> dict:
    """Energy breakdown in pJ (``compute``, ``sram``, ``dram``, ``total``) and DRAM-bound cycles."""
    mem = memory_table()
    compute = active_unit_cycles(acc, fmt, wl, res) * unit_pj(acc, fmt)
    sram = sram_bits(acc, fmt, wl, res) / 64.0 * mem["sram"]["pj_per_64b"]
    d = dram_bits(wl, fmt, res)
    dram = (d["w"] + d["a_in"]) / 64.0 * mem["dram"]["read_pj_per_64b"] + d["a_out"] / 64.0 * mem["dram"]["write_pj_per_64b"]
    dram_cycles = (d["w"] + d["a_in"] + d["a_out"]) / mem["dram"]["bits_per_cycle"]
    return {"compute": compute, "sram": sram, "dram": dram, "total": compute + sram + dram,
            "dram_cycles": dram_cycles}


def area_mm2(acc, cfg: dict, fmt: formats.Format) -> float:
    """PE-array area of the configured array (the data file's PE area per ``pe_units`` units)."""
    a = acc.area
    return acc.units(cfg, fmt) / float(a["pe_units"]) * float(a["pe_um2"]) * 1e-6
