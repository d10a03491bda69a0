"""Energy and area: event counts x per-event energies, every number from a cited table with its node.

Compute: every model states its array's ``units`` (peak 1b x 1b products per cycle, ``base`` docstring);
BitSim charges every PE every cycle (``PE_ENERGY * num_pe * num_cycle``), so compute energy =
cycles x units x ``unit_pj`` (pJ per unit per cycle), with ``unit_pj`` from the accelerator's data file:
mostly the BBS paper's Table V (28 nm, 800 MHz, PEs normalised to 8 bit-serial multipliers of 8 bits = 64
units): power / frequency / 64. Float datapaths scale by a documented factor.

Memory: one table, ``data/memory.toml`` (SRAM per 64-bit access from Horowitz ISSCC'14, 45 nm; DRAM per
64-bit access from BitSim, off-chip). SRAM bits are the models' tile reads (weights and activations per
tile step) plus output writes; DRAM bits are each layer's weights (as stored: compressed where the design
stores only non-zero planes), input and output activations, each once (BitSim without refetch).
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


def dram_bits(wl, fmt: formats.Format, res) -> dict:
    """DRAM bits of a layer: weights as stored (model event ``dram_w_bits`` if the design compresses),
    input activations and output activations at the format's width."""
    B = fmt.width
    w = res.events.get("dram_w_bits", wl.out_ch * wl.cw * wl.taps * B)
    H, W = wl.in_hw
    a_in = wl.batch * wl.in_ch * H * W * B
    a_out = wl.batch * wl.out_ch * wl.windows * B
    return {"w": float(w), "a_in": float(a_in), "a_out": float(a_out)}


def estimate(acc, cfg: dict, fmt: formats.Format, wl, res) -> dict:
    """Energy breakdown in pJ (``compute``, ``sram``, ``dram``, ``total``) and DRAM-bound cycles."""
    mem = memory_table()
    compute = res.cycles * res.units * unit_pj(acc, fmt)
    out_bits = wl.batch * wl.out_ch * wl.windows * fmt.width
    sram_bits = res.events.get("sram_w_bits", 0.0) + res.events.get("sram_a_bits", 0.0) + out_bits
    sram = sram_bits / 64.0 * mem["sram"]["pj_per_64b"]
    d = dram_bits(wl, fmt, res)
    dram = (d["w"] + d["a_in"]) / 64.0 * mem["dram"]["read_pj_per_64b"] + d["a_out"] / 64.0 * mem["dram"]["write_pj_per_64b"]
    dram_cycles = (d["w"] + d["a_in"] + d["a_out"]) / mem["dram"]["bits_per_cycle"]
    return {"compute": compute, "sram": sram, "dram": dram, "total": compute + sram + dram,
            "dram_cycles": dram_cycles}


def area_mm2(acc, cfg: dict, fmt: formats.Format) -> float:
    """PE-array area of the configured array (the data file's PE area per ``pe_units`` units)."""
    a = acc.area
    return acc.units(cfg, fmt) / float(a["pe_units"]) * float(a["pe_um2"]) * 1e-6
