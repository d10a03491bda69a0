"""Published chip figures of the seed designs against our models of them, configured as published.

``data/published.toml`` holds each figure the seed papers publish (BitX, BitXpro: power at fp32 and 16-bit
and area; Bitlet: power at fp32/16b/8b and area; PNPU: TOPS/W), with its source and conditions, and how each
design is modelled as published: clock and array overrides (``Accelerator.configure``), each cited or
marked [U] where the paper does not say.

What is compared. Power: the model's compute energy per cycle on a dense random conv layer that fills the
configured array (every unit holds a real operand pair, no zero weights or activations), times the clock:
the PE array at full utilisation, from ``energy.estimate`` like every simulation. Area: ``energy.area_mm2``
of the configured array. Efficiency: 2 x MACs / compute pJ (1 op per pJ = 1 TOPS/W) on the same kind of
layer, with the stated share of zero weights. Both model figures are PE-array only, a published chip also
holds buffers, control and clock, so ``reason`` says, with numbers from the model, what the gap is made of:
the model's own SRAM traffic on the same layer (power), how much SRAM the area left over would hold at
BitSim's CACTI density (area), or what the paper's condition implies (efficiency).
"""
from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources

import numpy as np

from . import ACCELERATORS, energy, tiling


@lru_cache(maxsize=None)
def table() -> dict:
    return tomllib.loads(resources.files("bitsieve.accel").joinpath("data", "published.toml").read_text())


def dense_layer(zero_weights: float = 0.0, seed: int = 0) -> tiling.Workload:
    """A 3x3 conv, 64 -> 80 channels on an 8 x 10 input (80 output pixels): it fills 64-lane groups (9 taps
    x 64 channels), 16- or 10-wide rows and columns exactly. Magnitudes in [0.5, 1] so no value quantises to
    zero; ``zero_weights`` of the weights are then set to zero at random."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.0, size=(80, 64, 3, 3)) * rng.choice([-1.0, 1.0], size=(80, 64, 3, 3))
    w[rng.random(w.shape) < zero_weights] = 0.0
    a = rng.uniform(0.5, 1.0, size=(1, 64, 8, 10))
    return tiling.Workload.conv(w.astype(np.float32), a.astype(np.float32), padding=1, name="published-dense")


def measure(design: str, fmt_name: str, zero_weights: float = 0.0) -> dict:
    """Our model of ``design`` configured as published, on ``dense_layer``: compute and SRAM pJ per cycle,
    compute pJ, MACs, occupancy, PE and unit counts and the array's area (at ``fmt_name``)."""
    from ..simulate import Run, Simulator

    spec = table()["model"][design]
    sim = Simulator(Run(accels=[design], fmt=fmt_name, sets={design: dict(spec["overrides"])}))
    wl = dense_layer(zero_weights)
    res = sim.layer(wl)[design]
    acc, cfg, fmt = ACCELERATORS[design], sim.cfg[design], sim.fmt
    e = energy.estimate(acc, cfg, fmt, wl, res)
    return {"compute_pj": e["compute"], "sram_pj_per_cycle": e["sram"] / res.cycles,
            "pe_pj_per_cycle": e["compute"] / res.cycles, "macs": float(wl.macs),
            "occupancy": energy.occupancy(acc, fmt, wl, res), "area_mm2": energy.area_mm2(acc, cfg, fmt),
            "n_pe": acc.n_pe(cfg), "units": acc.units(cfg, fmt)}


def published_comparison() -> list[dict]:
    """One row per published figure: {design, format, quantity, paper, model, ratio (model / paper),
    tolerance (a factor either way), within, reason, source}."""
    t = table()
    rows = []
    for fig in t["figure"]:
        design, fmt_name, q = fig["design"], fig["format"], fig["quantity"]
        m = measure(design, fmt_name, fig.get("zero_weights", 0.0))
        mhz = float(t["model"][design]["clock_mhz"])
        paper = float(fig["value"])
        if q == "power_mw":
            model = m["pe_pj_per_cycle"] * mhz / 1e3
        elif q == "area_mm2":
            model = m["area_mm2"]
        else:
            model = 2.0 * m["macs"] / m["compute_pj"]
        tol = float(t["tolerance"][q])
        ratio = model / paper
        within = 1.0 / tol <= ratio <= tol
        rows.append({"design": design, "format": fmt_name, "quantity": q, "paper": paper, "model": model,
                     "ratio": ratio, "tolerance": tol, "within": within,
                     "reason": _reason(design, q, paper, model, within, m, mhz, fig), "source": fig["source"]})
    return rows


def _reason(design, q, paper, model, within, m, mhz, fig) -> str:
    """What the gap between the paper and the model is made of, in the model's own numbers."""
    spec = table()["model"][design]
    where = f"{m['n_pe']} PE(s) of {m['units'] / m['n_pe']:.0f} units at {mhz:.0f} MHz, occupancy {m['occupancy']:.2f}"
    if q == "power_mw":
        sram_mw = m["sram_pj_per_cycle"] * mhz / 1e3
        head = (f"model = PE array at full utilisation, {where}. The model's SRAM traffic on the same layer "
                f"adds {sram_mw:.1f} mW")
        if within:
            return head + "."
        gap = paper - model
        if gap > 0:
            cover = ("more than covers" if sram_mw >= gap else "covers only part of")
            return (f"{head}, which {cover} the {gap:.1f} mW ({gap / paper:.0%}) of the whole-chip figure "
                    f"outside the PEs (buffers, alignment, control, clock: the paper gives no breakdown)")
        return f"{head}; the model's PEs alone draw {-gap:.1f} mW more than the whole published chip"
    if q == "area_mm2":
        if design == "bitlet":
            return f"not an independent check: the PE count is set from this area ({spec['overrides_cite']})"
        head = f"model = PE array only, {where}"
        if within:
            return head + "."
        sram = energy.memory_table()["sram"]
        gap = paper - model
        if gap <= 0:
            return f"{head}; the modelled PEs alone exceed the published chip by {-gap:.4f} mm^2"
        kb = gap / float(sram["bank_mm2"]) * float(sram["bank_kb"])
        return (f"{head}; the other {gap:.4f} mm^2 ({gap / paper:.0%}) of the chip would hold {kb:.1f} KB of "
                f"SRAM at BitSim's CACTI density (28 nm, {sram['bank_mm2']} mm^2 per {sram['bank_kb']} KB bank): "
                f"the chip's buffers and control, which the abstract does not break down")
    z = float(fig.get("zero_weights", 0.0))
    head = f"model = PE array only, {where}, {z:.0%} zero weights"
    if z == 0.0:
        return head + ("." if within else "; the chip's figure also pays for its buffers, control and clock")
    base = next(f for f in table()["figure"] if f["design"] == design and f["quantity"] == q
                and f.get("zero_weights", 0.0) == 0.0)
    dense = measure(design, fig["format"], 0.0)
    gain = dense["compute_pj"] / m["compute_pj"]
    head += f": the model gains {gain:.2f}x over the same layer without zeros"
    if within:
        return head + "."
    return (f"{head} (skipping one operand's zeros gives at most 1 / (1 - {z:.2f}) = {1 / (1 - z):.1f}x); the "
            f"paper's figure is {paper / base['value']:.1f}x its {base['value']} TOPS/W at 0% sparsity, which "
            "takes skipping several operands' zeros at once (AIOWS: input, output and weight) and effects the "
            "abstracts do not break down")
