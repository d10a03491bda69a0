"""The HTML report: structure, captions, self-containment, the Pareto rule, the compare report (designs, curves
with error bars, per-layer savings, bit profiles, provenance), readable text, and a headless-Chromium screenshot."""
import base64
import io
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from bitsieve import report, results
from bitsieve.cli import main
from bitsieve.results import row

METHODS = ["", "bitx:keep=5", "truncate:keep=6", "bitwave:k=4"]
ACCELS = ["dense", "stripes", "pragmatic", "bitlet"]


def synthetic_rows(models=("netA",), fmts=("fp32",), groups=(64,), n_layers=6, seed=0):
    """Rows shaped like a sweep's (profile, accuracy, speed-up, energy), with made-up values."""
    rng = np.random.default_rng(seed)
    rows = []
    for model in models:
        for f in fmts:
            nb = 24 if f.startswith("fp") else 7
            for g in groups:
                kw = dict(format=f, group=g)
                for mi, m in enumerate(METHODS):
                    for L in range(n_layers):
                        occ = rng.random(nb) * np.linspace(0.05, 0.5, nb) * (1 - 0.15 * mi)
                        rows += [row(model, f"layer{L}", f"occupancy_s{s:02d}", o, method=m, **kw)
                                 for s, o in enumerate(occ)]
                    rows += [row(model, "*", f"essential_hist_{k:02d}", h, method=m, **kw)
                             for k, h in enumerate(rng.multinomial(1000, np.ones(nb + 1) / (nb + 1)))]
                    rows.append(row(model, "*", "zero_bit_frac", 0.5 + 0.05 * mi, method=m, **kw))
                    rows.append(row(model, "*", "accuracy", 80 - 2 * mi * rng.random(), method=m, **kw))
                    for a in ACCELS:
                        for L in range(n_layers):
                            sp = 1.0 if a == "dense" else 1 + 3 * rng.random()
                            rows.append(row(model, f"layer{L}", "speedup", sp, method=m, accel=a, **kw))
                        sp = 1.0 if a == "dense" else 1 + 2 * rng.random() * (1 + mi / 3)
                        rows.append(row(model, "*", "speedup", sp, method=m, accel=a, **kw))
                        rows.append(row(model, "*", "cycles", 1e6 / sp, method=m, accel=a, **kw))
                        parts = {"compute": 1e6 / sp, "sram": 3e5, "dram": 5e5}
                        rows += [row(model, "*", f"energy_pj.{p}", e, method=m, accel=a, **kw)
                                 for p, e in parts.items()]
                        rows.append(row(model, "*", "energy_pj", sum(parts.values()), method=m, accel=a, **kw))
    return rows


COMPARE_DESIGNS = [("dense@fp32", "fp32"), ("dense@int16", "int16"), ("stripes", "int16"), ("pragmatic", "int16"),
                   ("bitx", "fp32"), ("bitlet", "fp32")]
#: knob variants in a scrambled order (the report sorts them by the knob); bitx's default keep is 6
KNOB_VARIANTS = {"bitx": ["bitx[keep=8]", "bitx[keep=2]", "bitx[keep=6]", "bitx[keep=4]"],
                 "bitlet": ["bitlet[prune=0xffff00]", "bitlet[prune=0xff0000]"]}
METHOD_ROWS = [("bitx", "bbs"), ("bitx", "truncate:keep=6")]
PROVENANCE = {"command": "bitsieve compare netC --accel bitx,bitlet", "model": "netC", "samples": 500, "seed": 0,
              "versions": "bitsieve 0.0, numpy 2 <test>", "formats": "bitx + bbs: bbs in fp32", "wall seconds": 12.5}


def compare_rows(model="netC", n_layers=5, seed=0, accuracy=True):
    """Rows in the contract of ``bitsieve compare``: simulator rows per layer and per model (group 64), the
    fp32 weight and int16 activation profiles, one block of design rows per design, method and knob variant
    (group 0), the original model and per-layer sensitivity of bitx. Made-up values: stripes and pragmatic
    have the same per-layer speed-ups, dense 1.0 on every layer."""
    rng = np.random.default_rng(seed)
    layers = [f"block{i}.conv" for i in range(n_layers)]
    rows = []
    shared = 1 + 2 * rng.random(n_layers)  # stripes == pragmatic per layer
    for name, fmt in COMPARE_DESIGNS:
        sp = (np.ones(n_layers) if name.startswith("dense") else shared if name in ("stripes", "pragmatic")
              else 1 + 5 * rng.random(n_layers))
        for L, s in zip(layers, sp):
            cyc = 1e5 * (1 + rng.random()) / s
            rows += [row(model, L, "cycles", cyc, accel=name, format=fmt, group=64),
                     row(model, L, "speedup", s, accel=name, format=fmt, group=64),
                     row(model, L, "dram_cycles", 0.3 * cyc, accel=name, format=fmt, group=64)]
        # the simulator's whole-model rows share layer '*' and accel with the design rows (group differs)
        rows.append(row(model, "*", "energy_pj", 1e12, accel=name, format=fmt, group=64))
    if accuracy:
        rows += [row(model, L, "sensitivity_delta", -3 * rng.random(), accel="bitx", format="fp32")
                 for L in layers]
    for who, fmt, g, prefix in (("w", "fp32", 64, ""), ("a", "int16", 16, "act_")):
        for L in [*layers, "*"]:
            for k, v in (("zero_bit_frac", 0.4 + 0.3 * rng.random()), ("zero_value_frac", 0.3 * rng.random()),
                         ("mean_essential_bits", 3 + 8 * rng.random())):
                rows.append(row(model, L, prefix + k, v, format=fmt, group=g))
    entries = [(n, "", f) for n, f in COMPARE_DESIGNS] + [(a, m, "fp32") for a, m in METHOD_ROWS]
    entries += [(v, "", "fp32") for vs in KNOB_VARIANTS.values() for v in vs]
    for name, method, fmt in entries:
        kw = dict(method=method, accel=name, format=fmt)
        keep = int(report.design_params(name)[1].get("keep", 6)) if name.startswith("bitx") else 6
        prune = report.design_params(name)[1].get("prune", "0xffffff")
        sp = {"dense": 1.0, "stripes": 1.3, "pragmatic": 2.6, "bitlet": 1.6 + 0.4 * prune.count("00")}.get(
            report.design_params(name)[0].split("@")[0], 12.0 / keep + (0.3 if method else 0.0))
        acc = 80 - (8 - keep) * 1.5 - (0.5 if method else 0.0) - 0.5 * prune.count("00")
        metrics = {"speedup": sp, "speedup_latency": sp * 0.9, "speedup_iso_area": sp * 0.7,
                   "cycles": 1e6 / sp, "latency_cycles": 1.2e6 / sp, "dram_cycles": 2e5, "energy_pj": 4e6 / sp,
                   "energy_pj.compute": 2e6 / sp, "energy_pj.sram": 1.5e6 / sp, "energy_pj.dram": 0.5e6 / sp,
                   "tops_per_w": 2.0 * sp, "gops_per_mm2": 50 * sp, "area_mm2": 0.5}
        if accuracy:
            metrics.update({"accuracy": acc, "accuracy_ci_low": acc - 3, "accuracy_ci_high": acc + 2.5,
                            "n_samples": 500, "accuracy_delta": acc - 80, "accuracy_delta_ci_low": acc - 81,
                            "accuracy_delta_ci_high": acc - 79.5, "agreement": 0.97})
        rows += [row(model, "*", k, v, **kw) for k, v in metrics.items()]
    if accuracy:
        rows += [row(model, "*", k, v, accel="original", format="fp32")
                 for k, v in (("accuracy", 80.0), ("accuracy_ci_low", 77.0), ("accuracy_ci_high", 82.5),
                              ("n_samples", 500), ("saturated", 0.0))]
    return rows


class _Parse(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.captions, self.tables, self.scripts, self.links = [], [], 0, 0, []
        self._cap = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "figcaption":
            self._cap = ""
        if tag == "table" and "sortable" in (a.get("class") or ""):
            self.tables += 1
        if tag == "script":
            self.scripts += 1
            assert "src" not in a, "scripts must be inline"
        if tag in ("link", "a") and a.get("href", "").startswith("http"):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self.captions.append(self._cap)
            self._cap = None

    def handle_data(self, data):
        if self._cap is not None:
            self._cap += data


def test_pareto_rule():
    pts = [(1.0, 80.0), (2.0, 79.0), (1.5, 78.0), (3.0, 70.0), (2.0, 79.0), (0.5, 80.0)]
    assert report.pareto(pts) == [True, True, False, True, True, False]


def test_report_structure(tmp_path):
    rows = synthetic_rows(groups=(64, 16)) + synthetic_rows(models=("netB",), n_layers=2, seed=1)
    html = report.build(rows, source="synthetic")
    p = _Parse()
    p.feed(html)
    # per setting: Pareto, speed-up bars, 2 per-layer speed-up, energy, heatmap, histogram; + 1 Pareto per model
    assert len(p.imgs) == 3 * 7 + 1
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        arr = np.asarray(im.convert("L"), dtype=float)
        assert arr.std() > 10, "a plot is blank"
    assert len(p.captions) == len(p.imgs)
    for cap in p.captions:
        assert re.search(r"[Mm]odel net[AB]", cap), cap
        assert "format fp32" in cap or "formats fp32" in cap, cap
        assert re.search(r"group", cap), cap
        assert "method" in cap, cap
    assert any("bitx:keep=5" in c and "truncate:keep=6" in c for c in p.captions)
    assert p.tables == 3 and p.scripts == 1 and not p.links
    assert "Pareto" in html and "dominated" in html


def test_report_summary_delta():
    recs = report.summary(synthetic_rows())
    base = {r["accel"]: r for r in recs if r["method"] == ""}
    for r in recs:
        assert r["accuracy_delta"] == pytest.approx(r["accuracy"] - base[r["accel"]]["accuracy"])
    assert all(r["speedup"] == 1.0 for r in recs if r["accel"] == "dense")


def test_report_without_accelerators_or_accuracy(tmp_path):
    rows = [r for r in synthetic_rows() if r["accel"] == "" and r["metric"] != "accuracy"]
    html = report.build(rows)
    p = _Parse()
    p.feed(html)
    assert len(p.imgs) == 2  # heatmap + histogram only
    assert "Pareto" not in html


def test_report_cli(tmp_path, capsys):
    src = tmp_path / "rows.csv"
    src.write_text(results.to_csv([r for r in synthetic_rows(n_layers=2) if r["method"] in ("", "bitx:keep=5")]))
    out = tmp_path / "r.html"
    assert main(["report", str(src), "-o", str(out), "--csv", str(tmp_path / "all.csv")]) == 0
    assert out.stat().st_size > 10_000 and (tmp_path / "all.csv").exists()
    assert main(["report", str(src), "-o", str(out)]) == 2  # never over an existing file without --force
    assert "exists" in capsys.readouterr().err
    src.write_text(results.to_csv([r for r in synthetic_rows(n_layers=2) if r["accel"] == ""]))
    assert main(["report", str(src), "-o", str(out), "--force", "--json"]) == 0
    assert '"summary"' in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "x.html")]) == 2


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
@pytest.mark.parametrize("kind", ["sweep", "compare"])
def test_report_screenshot_in_headless_chromium(tmp_path, kind):
    rows = synthetic_rows() if kind == "sweep" else compare_rows()
    page = tmp_path / "report.html"
    report.write(rows, page, title="screenshot test", provenance=PROVENANCE)
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1280,3000", page.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert img.shape[:2] == (3000, 1280)
    grey = img.mean(axis=2)
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    subprocess.run([*cmd[:-3], f"--screenshot={tmp_path / 'blank.png'}", "--window-size=1280,3000", blank.as_uri()],
                   check=True, capture_output=True, timeout=120)
    blank_var = np.asarray(Image.open(tmp_path / "blank.png").convert("L"), dtype=float).var()
    assert grey.var() > 100 * (blank_var + 1), "the page looks blank"
    # the plots are there: many coloured (not grey) pixels, which only the embedded PNGs draw
    sat = img.max(axis=2) - img.min(axis=2)
    assert (sat > 60).mean() > 0.02, "no coloured plot pixels in the screenshot"
    # and in more than one place down the page (several figures, not one)
    bands = [(sat[i:i + 500] > 60).mean() > 0.01 for i in range(0, 3000, 500)]
    assert sum(bands) >= 3
    assert not math.isnan(grey.mean())


def _errorbars(fig):
    """The error-bar containers of a figure and how many vertical bars they draw."""
    from matplotlib.container import ErrorbarContainer

    bars = [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
    return bars, sum(len(c.lines[2][0].get_segments()) for c in bars if c.lines[2])


def _assert_readable(fig):
    """Shown 1:1 in the page column, no text under 11 px (what a 1400 px window shows)."""
    from matplotlib.text import Text

    report._png(fig)  # lay out and draw, so every tick label exists
    assert fig.get_figwidth() * fig.dpi <= report.MAX_FIG_PX
    sizes = [t.get_fontsize() * fig.dpi / 72 for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert sizes and min(sizes) >= 11, min(sizes)


def test_compare_report(tmp_path):
    rows = compare_rows()
    assert report.is_compare(rows) and not report.is_compare(synthetic_rows())
    # the report reads the same rows back from CSV
    rows = results.from_csv(results.to_csv(rows))
    html = report.build(rows, title="compare test", source="bitsieve compare", provenance=PROVENANCE)
    p = _Parse()
    p.feed(html)
    for section in ("m0-designs", "m0-curves", "m0-energy", "m0-layers", "m0-profiles", "provenance"):
        assert f'id="{section}"' in html and f'href="#{section}"' in html, section
    # curves, energy, per-layer savings + sensitivity, bit profiles: nothing from the sweep's per-setting panels
    assert len(p.imgs) == len(p.captions) == 4
    for src in p.imgs:
        arr = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("L"), dtype=float)
        assert arr.std() > 10, "a plot is blank"
    assert all("Model netC" in c for c in p.captions)
    assert "Pareto" not in html and "Speed-up per accelerator" not in html
    # the design table (defaults and methods) and the knob table, intervals and sample counts in the cells
    assert p.tables == 2 and p.scripts == 1 and not p.links
    assert "Energy is per inference" in html and "energy / inference" in html
    assert 'data-v="0.6">0.6</td>' in html  # bitx's latency, 6e5 cycles, in Mcycles
    assert "77.00 [74.0, 79.5]" in html and "-3.00 [-4.0, -2.5]" in html and 'class="neg"' in html
    assert "Original model: accuracy 80.00 [77.0, 82.5] on 500 samples." in html
    for name, _ in COMPARE_DESIGNS:
        assert f'<td class="t">{name}</td>' in html
    assert '<td class="t">truncate:keep=6</td>' in html and '<td class="t">bitx[keep=2]</td>' in html
    knob_table = html.split("over their knob")[1]
    assert [knob_table.index(f"bitx[keep={k}]") for k in (2, 4, 6, 8)] == sorted(
        knob_table.index(f"bitx[keep={k}]") for k in (2, 4, 6, 8))
    # energy per inference comes from the design rows, not the simulator's whole-model rows (1e12 pJ)
    assert "2 µJ" in html and "1e+03 mJ" not in html
    # provenance: every entry, escaped
    for k, v in PROVENANCE.items():
        assert f"<th>{k}</th><td>{__import__('html').escape(str(v))}</td>" in html
    # per-layer panels only where they say something
    cap = next(c for c in p.captions if "saves per layer" in c)
    assert "dense@fp32, dense@int16: the same speed-up on every layer" in cap
    assert "pragmatic: the same per-layer speed-ups as stripes" in cap and "only that layer is pruned (bitx)" in cap


def test_compare_figures_data():
    d = report.Designs(compare_rows(), "netC")
    fig = report.fig_design_curves(d)
    bars, segments = _errorbars(fig)
    # bitx: 4 knob points + default + 2 methods; bitlet: 2 knob points + default; 4 designs without a knob
    assert segments == 4 + 1 + 2 + 2 + 1 + 4
    bitx = next(c for c in bars if c.get_label() == "bitx over keep")
    x, y = (np.asarray(v, dtype=float) for v in bitx.lines[0].get_data())
    assert list(y) == [80 - (8 - k) * 1.5 for k in (2, 4, 6, 8)] and list(x) == [12 / k for k in (2, 4, 6, 8)]
    lo, hi = (seg[:, 1] for seg in np.array(bitx.lines[2][0].get_segments()).transpose(1, 0, 2))
    assert np.allclose(lo, y - 3) and np.allclose(hi, y + 2.5)
    assert {"bitx (default)", "bitlet (default)", "bbs on bitx", "truncate:keep=6 on bitx", "stripes"} <= {
        c.get_label() for c in bars}
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"2", "4", "6", "8", "0xff0000", "0xffff00"} <= texts
    shown, flat, same = report.layer_panels(d)
    assert shown == ["stripes", "bitx", "bitlet"] and flat == ["dense@fp32", "dense@int16"]
    assert same == {"pragmatic": "stripes"}
    layers = report.fig_layer_savings(d, shown)
    assert len(layers.axes) == len(shown) + 1  # + bitx's sensitivity, right under its savings
    assert "only this layer" in layers.axes[2].get_ylabel() and layers.axes[3].get_ylabel().startswith("bitlet")
    saved = [p.get_height() for p in layers.axes[1].patches]  # bitx: cycles x (speed-up - 1), Mcycles
    cyc, sp = d.layer[("bitx", "", "cycles")], d.layer[("bitx", "", "speedup")]
    assert np.allclose(saved, [(cyc[L] * (sp[L] - 1)) / 1e6 for L in cyc])
    prof = report.fig_bit_profiles(d)
    assert len(prof.axes) == 3
    assert {t.get_text() for t in prof.axes[0].get_legend().get_texts()} == {
        "weights (fp32, groups of 64)", "activations (int16, groups of 16)"}
    for f in (fig, report.fig_design_energy(d), layers, prof):
        _assert_readable(f)


def test_compare_report_without_accuracy():
    html = report.build(compare_rows(accuracy=False))
    p = _Parse()
    p.feed(html)
    assert "No accuracy was measured" in html and "Original model" not in html
    assert len(p.imgs) == 3  # energy, per-layer savings, bit profiles
    assert 'id="provenance"' not in html  # none was given
