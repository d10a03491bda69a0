"""The HTML report: structure, captions, self-containment, the Pareto rule, and a headless-Chromium screenshot."""
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
def test_report_screenshot_in_headless_chromium(tmp_path):
    rows = synthetic_rows()
    page = tmp_path / "report.html"
    report.write(rows, page, title="screenshot test")
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
