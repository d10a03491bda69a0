"""Energy and area: event counts x per-event energies, every energy from one cited basis, per inference.

Units. ``estimate`` returns pJ **per inference**: the simulated batch's energy divided by ``inferences``, the
number of inputs the batch holds (a conv's ``Workload.batch`` images; a linear layer's tokens may be one
input's sequence or a batch of images, so the caller, who knows how many inputs it captured, says). The
default ``inferences=1`` is the batch total. ``dram_cycles`` stays the batch's (it is compared with cycles).

Compute, one basis for every design: the BBS paper's Table V (MICRO'24), PEs synthesised at **28 nm,
800 MHz**, each 8 bit-serial multipliers x 8 bits = 64 units. A design's data file gives its PE's power
``pe_mw`` at ``clock_mhz`` over ``pe_units`` units, an optional ``factor`` for logic outside that PE, and
optional per-format ``scale_<kind>``; the energy of one unit for one cycle is
``pe_mw / clock_mhz / pe_units x factor x scale`` (e.g. Stripes 0.37 mW / 800 MHz / 64 = 7.23 fJ). No chip
power enters: a chip's power includes its SRAM, which is charged separately below, so mixing the two
counted the buffers twice (BitX/BitXpro before: whole-chip power / 1 GHz, 2.4-5.5x the PE-only basis).
Designs without a Table V PE take the PE of the same datapath with a stated factor: BitX/BitXpro the
bit-column-serial BitWave PE x 1.1 (x BitXpro/BitX published power), Laconic/Tactical the Pragmatic PE,
dense and PNPU the Stripes PE per unit at B x B units per MAC (the BBS iso-multiplier rule). Float formats
scale by a ratio stated in each file (Horowitz ISSCC'14 for bit-parallel MACs, the design's own published
fp32/fixed power ratio otherwise). Other nodes enter only as such ratios, taken as node-independent,
or as cross-checks: no absolute energy from another node is charged.

Which unit-cycles are charged: every cycle of the units that hold a real operand pair (a lane that finished
early still burns energy while it waits, in lock-step, for its tile, as BitSim charges every PE every
cycle); units that hold padding (channels, filters, windows or array rows past the layer's edge) are gated
and charged nothing. The occupied share is read off the model's same-dataflow dense reference, so

    compute = (cycles / dense_cycles) x MACs x B^2 x unit energy:

every real MAC costs B^2 units for the time the design needs per bit-parallel step. So a design that runs
k times fewer cycles at the same per-unit energy spends k times less compute energy. Dense: 1.85 pJ per
int16 MAC, 10.5 pJ per fp32 MAC (about 2x Horowitz's 45 nm arithmetic-only MACs: the Table V figures are
synthesised PEs with registers, accumulator and clock).

SRAM (``data/memory.toml``, BitSim's CACTI figures at 28 nm, one commit): charged per bit of a **real
operand** read, never for zero-padded lanes, rows or columns (a 3x3 depthwise conv fills 9 of BitX's 64
lanes: it is charged 9), at the format's stored width (32 bits for fp32), plus one write per output bit.
How often an operand is read is the dataflow's: ``sram_operand_bits`` gives the count every model uses,
from how many window steps share one weight read and how many filter passes re-read the activations.

DRAM (same BitSim commit): each layer's weights (``dram_w_bits`` where a design stores them compressed;
none does yet), input and output activations, each once per layer and batch (the weights once whatever the
batch, so energy per inference falls with the batch). DRAM-bound time = bits / (64 x 2, DDR) per cycle.

Area: PE-array area = units / ``pe_units`` x ``pe_um2`` x ``factor`` (the same Table V basis), in mm^2.
"""
from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources

from .. import formats
from .base import ceil_div


@lru_cache(maxsize=None)
def memory_table() -> dict:
    return tomllib.loads(resources.files("bitsieve.accel").joinpath("data", "memory.toml").read_text())


def format_kind(fmt: formats.Format) -> str:
    """The ``scale_<kind>`` a format uses: fp32, float16 (bf16, fp16), int16 (9..32 bits) or int8."""
    if fmt.is_float:
        return "fp32" if fmt.name == "fp32" else "float16"
    return "int16" if fmt.width > 8 else "int8"


def unit_pj(acc, fmt: formats.Format) -> float:
    """pJ of one 1b x 1b unit for one cycle: PE power / clock / PE units x logic factor x format scale."""
    e = acc.energy
    per_unit = float(e["pe_mw"]) / float(e["clock_mhz"]) * 1e3 / float(e["pe_units"])
    return per_unit * float(e.get("factor", 1.0)) * float(e.get(f"scale_{format_kind(fmt)}", 1.0))


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


def sram_operand_bits(wl, window_steps: int, filter_passes: int, B: int) -> dict:
    """SRAM bits of the real operands a tiled dataflow reads, at datapath width B (the models' events).

    Weights: each real weight once per window step (a step serves every window of its PE columns at once;
    ``window_steps`` counts them over the batch). Activations: each real (window, tap, channel) lane once
    per filter pass (``filter_passes``: how many times the array's filter rows are refilled per conv group).
    Padding lanes, idle rows and idle columns hold nothing real and are not counted."""
    reduction = wl.cw * wl.taps
    return {"sram_w_bits": float(wl.out_ch) * reduction * window_steps * B,
            "sram_a_bits": float(wl.groups) * filter_passes * reduction * wl.windows * wl.batch * B}


def filter_passes(wl, rows: int) -> int:
    """Times ``rows`` filter rows are refilled per conv group (a depthwise conv: one filter per group)."""
    return ceil_div(wl.og, rows)


def dram_bits(wl, fmt: formats.Format, res) -> dict:
    """DRAM bits of a layer, each read or written once: weights as stored (model event ``dram_w_bits`` if
    the design compresses), input activations and output activations at the format's width."""
    B = fmt.width
    w = res.events.get("dram_w_bits", wl.out_ch * wl.cw * wl.taps * B)
    H, W = wl.in_hw
    a_in = wl.batch * wl.in_ch * H * W * B
    a_out = wl.batch * wl.out_ch * wl.windows * B
    return {"w": float(w), "a_in": float(a_in), "a_out": float(a_out)}


def sram_bits(acc, fmt: formats.Format, wl, res) -> dict:
    """SRAM bits of a layer: ``read`` = the model's real-operand reads (counted at the datapath width,
    scaled to the stored width), ``write`` = one write of every output."""
    reads = res.events.get("sram_w_bits", 0.0) + res.events.get("sram_a_bits", 0.0)
    return {"read": reads * fmt.width / acc.width(fmt), "write": float(wl.batch * wl.out_ch * wl.windows * fmt.width)}


def estimate(acc, cfg: dict, fmt: formats.Format, wl, res, inferences: int = 1) -> dict:
    """Energy in pJ per inference (``compute``, ``sram``, ``dram``, ``total``: the batch's energy over
    ``inferences`` inputs) and the batch's DRAM-bound cycles (``dram_cycles``)."""
    if inferences < 1:
        raise ValueError(f"inferences must be >= 1, got {inferences}")
    mem = memory_table()
    sram, dram = mem["sram"], mem["dram"]
    compute = active_unit_cycles(acc, fmt, wl, res) * unit_pj(acc, fmt)
    s = sram_bits(acc, fmt, wl, res)
    sram_pj = (s["read"] * sram["read_pj_per_access"] + s["write"] * sram["write_pj_per_access"]) / sram["access_bits"]
    d = dram_bits(wl, fmt, res)
    dram_pj = ((d["w"] + d["a_in"]) * dram["read_pj_per_64b"] + d["a_out"] * dram["write_pj_per_64b"]) / 64.0
    n = float(inferences)
    return {"compute": compute / n, "sram": sram_pj / n, "dram": dram_pj / n,
            "total": (compute + sram_pj + dram_pj) / n,
            "dram_cycles": (d["w"] + d["a_in"] + d["a_out"]) / dram["bits_per_cycle"]}


def area_mm2(acc, cfg: dict, fmt: formats.Format) -> float:
    """PE-array area of the configured array: units / ``pe_units`` x ``pe_um2`` x ``factor``."""
    a = acc.area
    return acc.units(cfg, fmt) / float(a["pe_units"]) * float(a["pe_um2"]) * float(a.get("factor", 1.0)) * 1e-6
