"""Energy you can explain: one per-event basis, SRAM per real operand, per-inference figures, and the
published chip figures of the seed designs against our models of them."""
from __future__ import annotations

import numbers

import numpy as np
import pytest

from bitsieve import formats
from bitsieve.accel import ACCELERATORS, energy, tiling
from bitsieve.accel.base import LayerResult
from bitsieve.simulate import Run, Simulator

# the published figures, and the PE-table figures the model is built from, written out here on purpose
BBS_PE_MW = {"stripes": 0.37, "pragmatic": 0.51, "bitlet": 0.57, "bitwave": 0.49, "bitvert": 0.45}
PER_UNIT = {k: v / 800 * 1e3 / 64 for k, v in BBS_PE_MW.items()}  # pJ per unit-cycle, 28 nm, 800 MHz


def unit(name, fmt):
    return energy.unit_pj(ACCELERATORS[name], formats.get(fmt))


# ---- one basis --------------------------------------------------------------------------------------------
def test_every_design_on_the_28nm_pe_basis_with_a_citation_per_number():
    for n, a in ACCELERATORS.items():
        e, ar = a.energy, a.area
        assert e["node_nm"] == 28 and ar["node_nm"] == 28, n
        assert e["clock_mhz"] == 800 and e["pe_units"] in (64, 8), n
        assert "unit_pj" not in e, n  # no per-design figure outside the shared PE basis
        for table in (e, ar):
            numbers_ = [k for k, v in table.items() if isinstance(v, numbers.Number) and k != "node_nm"]
            assert set(numbers_) <= set(table["cite"]), (n, set(numbers_) - set(table["cite"]))
            assert all(str(table["cite"][k]).strip() for k in numbers_), n


def test_unit_energies_follow_the_pe_table():
    for n in ("stripes", "pragmatic", "bitwave", "bitvert"):
        assert unit(n, "int8") == pytest.approx(PER_UNIT[n], rel=1e-12)
    assert unit("bitlet", "int8") == pytest.approx(PER_UNIT["bitlet"], rel=1e-12)
    assert unit("bitlet", "fp32") == pytest.approx(PER_UNIT["bitlet"] * 570 / 365, rel=1e-4)
    assert unit("bitlet", "int16") == pytest.approx(PER_UNIT["bitlet"] * 432 / 365, rel=1e-4)
    assert unit("tactical", "int16") == unit("pragmatic", "int16")
    assert unit("laconic", "int16") == pytest.approx(0.51 / 800 * 1e3 / 8, rel=1e-12)
    # dense: B x B units at the Stripes PE per unit: 1.85 pJ per int16 MAC, 10.5 pJ per fp32 MAC
    assert 16 * 16 * unit("dense", "int16") == pytest.approx(1.85, rel=1e-3)
    assert 24 * 24 * unit("dense", "fp32") == pytest.approx(10.53, rel=1e-3)
    assert unit("pnpu", "int8") == pytest.approx(PER_UNIT["stripes"] * 1.1, rel=1e-12)


def test_bitx_and_bitxpro_per_unit_energy_is_a_pe_figure_not_chip_power():
    """BitX: the bit-column-serial BitWave PE x 1.1 at 16-bit; fp32 per unit by the chip's own fp32/16-bit
    power ratio over the unit ratio 24/16. BitXpro / BitX = the two chips' published power ratio."""
    assert unit("bitx", "int16") == pytest.approx(PER_UNIT["bitwave"] * 1.1, rel=1e-12)
    assert unit("bitx", "fp32") == pytest.approx(PER_UNIT["bitwave"] * 1.1 * (68.62 / 36.41) / 1.5, rel=1e-6)
    assert unit("bitxpro", "int16") / unit("bitx", "int16") == pytest.approx(40.44 / 36.41, rel=1e-6)
    assert unit("bitxpro", "fp32") / unit("bitx", "fp32") == pytest.approx(74.82 / 68.62, rel=1e-6)
    # the old whole-chip reading: 36.41 mW / 1 GHz / 1024 units = 35.6 fJ, 3.4x this
    assert unit("bitx", "int16") < 36.41 / 1024 / 3


def test_memory_energies_from_one_bitsim_commit():
    mem = energy.memory_table()
    assert mem["dram"]["read_pj_per_64b"] == mem["dram"]["write_pj_per_64b"] == 1000.0
    assert "6845fad" in mem["dram"]["source"] and "6845fad" in mem["sram"]["source"]
    s = mem["sram"]
    assert s["read_pj_per_access"] / s["access_bits"] == pytest.approx(0.2032, rel=1e-3)
    assert s["node_nm"] == 28


# ---- compute: time at equal per-cycle energy ------------------------------------------------------------
def fixed_conv(wvalue, seed=0):
    """1x1 conv, 64 channels -> 16 filters, 4x4 output, q7.0 weights all equal to ``wvalue``."""
    rng = np.random.default_rng(seed)
    w = np.full((16, 64, 1, 1), float(wvalue), np.float32)
    a = rng.integers(1, 100, size=(1, 64, 4, 4)).astype(np.float32)
    return tiling.Workload.conv(w, a, name=f"w{wvalue}")


def test_fewer_cycles_same_per_cycle_energy_less_compute():
    """BitX on weights of one set bit (1) and of four (15): 4x the cycles on the same array, so 4x the
    compute energy; one unit-cycle costs the same in both."""
    sim = Simulator(Run(accels=["bitx"], fmt="q7.0"))
    acc, cfg = ACCELERATORS["bitx"], sim.cfg["bitx"]
    got = {}
    for v in (1, 15):
        wl = fixed_conv(v)
        r = sim.layer(wl)["bitx"]
        got[v] = (r.cycles, energy.estimate(acc, cfg, sim.fmt, wl, r)["compute"])
    assert got[15][0] == 4 * got[1][0]
    assert got[15][1] == pytest.approx(4 * got[1][1], rel=1e-12)
    assert got[1][1] / got[1][0] == pytest.approx(got[15][1] / got[15][0], rel=1e-12)


def test_padding_lanes_are_gated():
    """8 or 16 real channels in one 64-lane group, the same cycles: compute energy follows the real lanes."""
    sim = Simulator(Run(accels=["bitx"], fmt="q7.0"))
    got = {}
    for cw in (8, 16):
        wl = tiling.Workload.conv(np.ones((16, cw, 1, 1), np.float32), np.ones((1, cw, 4, 4), np.float32))
        r = sim.layer(wl)["bitx"]
        got[cw] = (r.cycles, sim.energy("bitx", wl, r)["compute"])
    assert got[8][0] == got[16][0]
    assert got[16][1] == pytest.approx(2 * got[8][1], rel=1e-12)


def test_compute_energy_is_inverse_in_cycles_for_any_design():
    wl = fixed_conv(3)
    fmt = formats.get("int16")
    for n in ("bitx", "bitlet", "stripes"):
        acc = ACCELERATORS[n]
        cfg = acc.configure()
        base = LayerResult(cycles=1000.0, units=acc.units(cfg, fmt), effectual=1.0, dense_cycles=4000.0)
        fast = LayerResult(cycles=250.0, units=base.units, effectual=1.0, dense_cycles=4000.0)
        e0 = energy.estimate(acc, cfg, fmt, wl, base)["compute"]
        e1 = energy.estimate(acc, cfg, fmt, wl, fast)["compute"]
        assert e0 == pytest.approx(4 * e1, rel=1e-12)


# ---- SRAM per real operand -------------------------------------------------------------------------------
def padded_conv(cw, groups=1, k=1, seed=1):
    rng = np.random.default_rng(seed)
    out = 16 * groups if groups == 1 else groups
    w = rng.normal(size=(out, cw, k, k)).astype(np.float32)
    a = np.abs(rng.normal(size=(1, cw * groups, 6, 6))).astype(np.float32)
    return tiling.Workload.conv(w, a, padding=k // 2, groups=groups, name=f"c{cw}g{groups}")


@pytest.mark.parametrize("accel,fmt", [("bitx", "fp32"), ("bitxpro", "int16"), ("bitlet", "int16"),
                                       ("dense", "fp32"), ("bitvert", "int8")])
def test_sram_scales_with_useful_lanes(accel, fmt):
    """8 or 16 real channels in one zero-padded group of lanes: the same tiles, twice the real operands,
    exactly twice the SRAM reads (the padding lanes are not charged)."""
    sim = Simulator(Run(accels=[accel], fmt=fmt))
    acc = ACCELERATORS[accel]
    reads = {}
    for cw in (8, 16):
        wl = padded_conv(cw)
        r = sim.layer(wl)[accel]
        reads[cw] = energy.sram_bits(acc, sim.fmt, wl, r)["read"]
        assert r.events["tile_steps"] == sim.layer(padded_conv(8))[accel].events["tile_steps"]
    assert reads[16] == pytest.approx(2 * reads[8], rel=1e-12)


def test_depthwise_reads_its_nine_taps_not_sixty_four_lanes():
    """A 3x3 depthwise conv fills 9 of BitX's 64 lanes: weight reads are 9 weights per filter per output
    pixel (one column), activation reads 9 per filter per output pixel; SRAM energy per MAC equals a
    1x1 conv's with 64 real lanes."""
    wl = padded_conv(1, groups=32, k=3)
    sim = Simulator(Run(accels=["bitx"], fmt="int16"))
    ev = sim.layer(wl)["bitx"].events
    assert ev["sram_w_bits"] == 32 * 9 * 36 * 16
    assert ev["sram_a_bits"] == 32 * 9 * 36 * 16
    full = padded_conv(64)
    sim1 = Simulator(Run(accels=["bitx"], fmt="int16", sets={"bitx": {"rows": 1}}))
    e_dw = sim.energy("bitx", wl, sim.layer(wl)["bitx"])
    e_full = sim1.energy("bitx", full, sim1.layer(full)["bitx"])
    reads_dw = e_dw["sram"] - wl.out_ch * wl.windows * 16 * 23.6456 / 128
    reads_full = e_full["sram"] - full.out_ch * full.windows * 16 * 23.6456 / 128
    assert reads_dw / wl.macs == pytest.approx(reads_full / full.macs, rel=1e-12)


# ---- per inference ---------------------------------------------------------------------------------------
def test_energy_per_inference():
    """A batch of two identical images: per inference, compute and SRAM equal one image's, DRAM less (the
    weights are read once for both)."""
    wl1 = padded_conv(16)
    wl2 = tiling.Workload.conv(wl1.weight, np.concatenate([wl1.activation] * 2), name="x2")
    sim = Simulator(Run(accels=["bitx"], fmt="fp32"))
    acc, cfg = ACCELERATORS["bitx"], sim.cfg["bitx"]
    e1 = energy.estimate(acc, cfg, sim.fmt, wl1, sim.layer(wl1)["bitx"])
    r2 = sim.layer(wl2)["bitx"]
    batch = energy.estimate(acc, cfg, sim.fmt, wl2, r2)
    per = energy.estimate(acc, cfg, sim.fmt, wl2, r2, inferences=2)
    for k in ("compute", "sram", "dram", "total"):
        assert per[k] == pytest.approx(batch[k] / 2, rel=1e-12)
    assert per["compute"] == pytest.approx(e1["compute"], rel=1e-12)
    assert per["sram"] == pytest.approx(e1["sram"], rel=1e-12)
    w_pj = wl1.weight.size * 32 / 64 * 1000.0
    assert per["dram"] == pytest.approx(e1["dram"] - w_pj / 2, rel=1e-12)
    assert per["dram_cycles"] == batch["dram_cycles"]
    with pytest.raises(ValueError):
        energy.estimate(acc, cfg, sim.fmt, wl2, r2, inferences=0)


# ---- published chip figures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def published():
    from bitsieve.accel.published import published_comparison

    return {(r["design"], r["format"], r["quantity"], r["paper"]): r for r in published_comparison()}


def test_published_rows_are_complete(published):
    keys = {"design", "format", "quantity", "paper", "model", "ratio", "tolerance", "within", "reason", "source"}
    assert len(published) == 13
    for r in published.values():
        assert set(r) == keys
        assert r["ratio"] == pytest.approx(r["model"] / r["paper"], rel=1e-12)
        assert r["within"] == (1 / r["tolerance"] <= r["ratio"] <= r["tolerance"])
        assert r["reason"] and r["source"]
        assert r["tolerance"] == (1.5 if r["quantity"] == "area_mm2" else 2.0)


def test_published_power_pinned(published):
    """PE power at full utilisation = units x energy per unit-cycle x clock (1 GHz, [U])."""
    bitx32 = 64 * 24 * PER_UNIT["bitwave"] * 1.1 * (68.62 / 36.41) / 1.5  # pJ per cycle = mW at 1 GHz
    bitx16 = 64 * 16 * PER_UNIT["bitwave"] * 1.1
    bitlet8 = 100 * 24 * 24 * PER_UNIT["bitlet"]
    want = {("bitx", "fp32", 68.62): bitx32, ("bitx", "int16", 36.41): bitx16,
            ("bitxpro", "fp32", 74.82): bitx32 * 74.82 / 68.62, ("bitxpro", "int16", 40.44): bitx16 * 40.44 / 36.41,
            ("bitlet", "fp32", 570.0): bitlet8 * 570 / 365, ("bitlet", "int16", 432.0): bitlet8 * 432 / 365,
            ("bitlet", "int8", 365.0): bitlet8}
    for (d, f, paper), mw in want.items():
        r = published[(d, f, "power_mw", paper)]
        assert r["model"] == pytest.approx(mw, rel=1e-4), (d, f)
    assert published[("bitx", "fp32", "power_mw", 68.62)]["model"] == pytest.approx(20.32, abs=0.01)
    assert published[("bitlet", "fp32", "power_mw", 570.0)]["model"] == pytest.approx(1001.38, abs=0.01)
    for d in ("bitx", "bitxpro"):  # PE-only, 30% of the chip: outside 2x, the SRAM is named as the cause
        for f in ("fp32", "int16"):
            r = next(v for k, v in published.items() if k[:3] == (d, f, "power_mw"))
            assert not r["within"] and r["ratio"] == pytest.approx(0.296, abs=0.001)
            assert "SRAM traffic" in r["reason"] and "more than covers" in r["reason"]
    assert all(published[("bitlet", f, "power_mw", p)]["within"] for f, p in
               (("fp32", 570.0), ("int16", 432.0), ("int8", 365.0)))


def test_published_area_pinned(published):
    bitx = 64 * 24 / 64 * 702.4 * 1.1 * 1e-6
    r = published[("bitx", "fp32", "area_mm2", 0.039)]
    assert r["model"] == pytest.approx(bitx, rel=1e-9) and not r["within"]
    assert "6.2 KB of SRAM" in r["reason"]
    r = published[("bitxpro", "fp32", "area_mm2", 0.068)]
    assert r["model"] == pytest.approx(bitx * 40.44 / 36.41, rel=1e-6) and not r["within"]
    assert "14.4 KB of SRAM" in r["reason"]
    r = published[("bitlet", "fp32", "area_mm2", 1.5)]
    assert r["model"] == pytest.approx(100 * 576 / 64 * 1665.6e-6, rel=1e-9)
    assert "not an independent check" in r["reason"]


def test_published_pnpu_efficiency_pinned(published):
    """2 ops per MAC over the compute energy: 0.509 pJ per int8 MAC without zeros -> 3.93 TOPS/W."""
    r0 = published[("pnpu", "int8", "tops_per_w", 3.14)]
    assert r0["model"] == pytest.approx(2 / (64 * PER_UNIT["stripes"] * 1.1), rel=1e-9) and r0["within"]
    r90 = published[("pnpu", "int8", "tops_per_w", 278.39)]
    assert not r90["within"] and 5 * r0["model"] < r90["model"] < 10 * r0["model"]
    assert "88.7x" in r90["reason"]
    assert published[("pnpu", "int8", "tops_per_w", 146.52)]["model"] == r90["model"]
