"""One self-contained HTML report from result rows: plots (matplotlib Agg, embedded as base64 PNG), sortable
tables (a few lines of inline JS), a caption under every figure naming model, format, group and methods.

Per (model, format, group) setting:
  1. whole-model table: method x accelerator -> accuracy, change, speed-up over dense, energy;
  2. accuracy versus speed-up, the Pareto front drawn and the dominated points and region shaded;
  3. whole-model speed-up bars per accelerator (one bar per method);
  4. per-layer speed-up bars, one small panel per accelerator;
  5. energy breakdown (compute, SRAM, DRAM stacked) per accelerator, one bar per method;
  6. per-layer bit-sparsity heatmap (layer x significance occupancy), one panel per method;
  7. essential-bits histogram, one bar per method and bit count.
Methods that ran on no accelerator (an emulated forward pass such as Bitlet numerics) appear in the tables and
the accuracy figures only; rows without accuracy give no Pareto front.
A model with several settings (a sweep over formats and group sizes) also gets one Pareto front over all of them.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import re
from collections import defaultdict

import numpy as np

from . import __version__
from .results import WHOLE

MAX_HEATMAPS = 6  # method panels in one heatmap figure
MAX_LAYER_LABELS = 45
COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
          "#64b5cd", "#2f4b7c", "#a05195"]


def method_label(m: str) -> str:
    return m or "original"


# ---- reading rows --------------------------------------------------------------------------------------
def _accel_order() -> dict:
    try:
        from .accel import ACCELERATORS
    except ImportError:  # a report needs only the rows
        return {}
    return {a: i for i, a in enumerate(ACCELERATORS)}


class _Index:
    """Rows indexed by setting (model, format, group), keeping first-seen order of layers, methods, accels."""

    def __init__(self, rows):
        self.val = {}
        self.settings: list[tuple] = []
        self.methods = defaultdict(list)
        self.accels = defaultdict(list)
        self.layers = defaultdict(list)
        self.metrics = defaultdict(set)
        self.profiled = defaultdict(set)
        seen_s, seen = set(), defaultdict(set)
        for r in rows:
            s = (r["model"], r["format"], int(r["group"]))
            if s not in seen_s:
                seen_s.add(s)
                self.settings.append(s)
            for name, v in (("methods", r["method"]), ("accels", r["accel"]), ("layers", r["layer"])):
                if v not in seen[(s, name)] and not (name == "layers" and v == WHOLE) and not (
                        name == "accels" and v == ""):
                    seen[(s, name)].add(v)
                    getattr(self, name)[s].append(v)
            self.metrics[s].add(r["metric"])
            self.val[(s, r["layer"], r["method"], r["accel"], r["metric"])] = r["value"]
            if r["metric"] == "zero_bit_frac":
                self.profiled[s].add(r["method"])
        order = _accel_order()
        for s in self.settings:  # original first; dense first, then the accelerators in registry order
            self.methods[s].sort(key=lambda m: m != "")
            self.accels[s].sort(key=lambda a: (a != "dense", order.get(a, len(order))))

    def get(self, s, metric, method="", accel="", layer=WHOLE, default=math.nan):
        return self.val.get((s, layer, method, accel, metric), default)

    def prefixed(self, s, prefix):
        """Metric names of a setting that start with ``prefix``, sorted by their numeric suffix."""
        ms = [m for m in self.metrics[s] if m.startswith(prefix)]
        return sorted(ms, key=lambda m: (int(re.sub(r"\D", "", m[len(prefix):]) or 0), m))


def summary(rows) -> list[dict]:
    """Whole-model records: one per (model, format, group, method, accel), accel '' when no accelerator ran."""
    ix = _Index(rows)
    out = []
    for s in ix.settings:
        base_acc = ix.get(s, "accuracy")
        for m in ix.methods[s]:
            acc = ix.get(s, "accuracy", m)
            delta = ix.get(s, "accuracy_delta", m, default=acc - base_acc)
            common = {"model": s[0], "format": s[1], "group": s[2], "method": m, "accuracy": acc,
                      "accuracy_delta": delta, "zero_bit_frac": ix.get(s, "zero_bit_frac", m),
                      "changed_bit_frac": ix.get(s, "changed_bit_frac", m)}
            ran = [a for a in ix.accels[s] if not math.isnan(ix.get(s, "cycles", m, a))]
            if not ran:  # no accelerator (or an emulated forward pass): one record, accuracy and bits only
                out.append({**common, "accel": "", "cycles": math.nan, "speedup": math.nan, "energy_pj": math.nan})
            for a in ran:
                out.append({**common, "accel": a, "cycles": ix.get(s, "cycles", m, a),
                            "speedup": ix.get(s, "speedup", m, a), "energy_pj": ix.get(s, "energy_pj", m, a)})
    return out


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For each (x, y) with both to maximise: True when no other point is at least as good in both and better
    in one."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    out = []
    for x, y in pts:
        dom = (pts[:, 0] >= x) & (pts[:, 1] >= y) & ((pts[:, 0] > x) | (pts[:, 1] > y))
        out.append(not dom.any())
    return out


# ---- figures --------------------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return base64.b64encode(buf.getvalue()).decode()


def _figure(w, h):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _layer_ticks(ax, layers, axis="y"):
    step = max(1, math.ceil(len(layers) / MAX_LAYER_LABELS))
    idx = list(range(0, len(layers), step))
    labels = [layers[i] if len(layers[i]) <= 28 else "…" + layers[i][-27:] for i in idx]
    if axis == "y":
        ax.set_yticks(idx, labels, fontsize=6)
    else:
        ax.set_xticks(idx, labels, fontsize=6, rotation=90)


def fig_pareto(points, title):
    """points: [(label, speedup, accuracy, colour key)]."""
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot()
    xy = [(p[1], p[2]) for p in points]
    front = pareto(xy)
    fx = sorted((x, y) for (x, y), f in zip(xy, front) if f)
    xs = np.array([p[0] for p in xy])
    ymin = min(p[1] for p in xy)
    pad = max(0.5, 0.05 * (max(p[1] for p in xy) - ymin))
    # the region the front dominates: below and left of its staircase (front sorted by speed-up ascending)
    x_left = min(0.95 * xs.min(), 0.95)
    stair_x = [x_left] + [x for x, _ in fx]
    stair_y = [fx[0][1]] + [y for _, y in fx] if fx else []
    if stair_x:
        ax.fill_between(stair_x, ymin - pad, stair_y, step="pre", color="#bbbbbb", alpha=0.35, lw=0,
                        label="dominated region")
        ax.step(stair_x, stair_y, where="pre", color="#333333", lw=1.2, label="Pareto front")
    keys = list(dict.fromkeys(p[3] for p in points))
    colour = {k: COLORS[i % len(COLORS)] for i, k in enumerate(keys)}
    labelled = set()
    for (label, x, y, k), f in zip(points, front):
        if f:
            ax.scatter([x], [y], s=46, color=colour[k], edgecolor="black", zorder=3)
            spot = (round(x, 2), round(y, 2))
            if spot not in labelled and len(labelled) < 12:  # one label per spot, a dozen at most
                labelled.add(spot)
                same = [p[0] for p, ff in zip(points, front) if ff and (round(p[1], 2), round(p[2], 2)) == spot]
                text = same[0] + (f" (+{len(same) - 1})" if len(same) > 1 else "")
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6.5)
        else:
            ax.scatter([x], [y], s=26, color=colour[k], alpha=0.35, zorder=2)
    for k in keys:
        ax.scatter([], [], color=colour[k], label=k)
    ax.scatter([], [], color="#999999", alpha=0.35, label="dominated point (faded)")
    ax.set_xlabel("speed-up over dense (whole model)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(ymin - pad, None)
    ax.set_xlim(left=x_left)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title, fontsize=9)
    return fig


def _simulated(ix, s):
    """Methods of a setting that ran on accelerators (an emulated forward pass has accuracy only)."""
    return [m for m in ix.methods[s] if any(not math.isnan(ix.get(s, "speedup", m, a)) for a in ix.accels[s])]


def fig_speedup_bars(ix, s):
    ms, accs = _simulated(ix, s), ix.accels[s]
    fig = _figure(max(6.0, 0.22 * len(ms) * len(accs) + 2), 3.4)
    ax = fig.add_subplot()
    w = 0.8 / max(len(ms), 1)
    for j, m in enumerate(ms):
        ys = [ix.get(s, "speedup", m, a) for a in accs]
        ax.bar(np.arange(len(accs)) + (j - (len(ms) - 1) / 2) * w, ys, w, label=method_label(m),
               color=COLORS[j % len(COLORS)])
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(accs)), accs, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speed-up over dense")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(len(ms), 4))
    return fig


def fig_layer_speedup(ix, s, method):
    layers, accs = ix.layers[s], [a for a in ix.accels[s]]
    layers = [L for L in layers if any(not math.isnan(ix.get(s, "speedup", method, a, L)) for a in accs)]
    if not layers or not accs:
        return None
    fig = _figure(max(7.0, 0.12 * len(layers) + 2), 1.15 * len(accs) + 1.0)
    axes = fig.subplots(len(accs), 1, sharex=True, squeeze=False)[:, 0]
    from matplotlib.ticker import MaxNLocator

    for i, (ax, a) in enumerate(zip(axes, accs)):
        ax.yaxis.set_major_locator(MaxNLocator(3))
        ys = np.array([ix.get(s, "speedup", method, a, L) for L in layers])
        ax.bar(range(len(layers)), ys, 0.8, color=COLORS[i % len(COLORS)])
        whole = ix.get(s, "speedup", method, a)
        if not math.isnan(whole):
            ax.axhline(whole, color="black", lw=0.8, ls="--")
        ax.set_ylabel(a, rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(axis="y", labelsize=6)
        ax.grid(axis="y", alpha=0.3)
    _layer_ticks(axes[-1], layers, axis="x")
    axes[0].set_title("speed-up over dense per layer (dashed: whole model)", fontsize=9)
    return fig


def _shade(hex_colour: str, k: int, n: int):
    """The k-th of n shades of a colour, dark (k = 0) to light."""
    from matplotlib.colors import to_rgb

    c = np.array(to_rgb(hex_colour))
    t = 0.0 if n <= 1 else 0.6 * k / (n - 1)
    return tuple(c + (1 - c) * t)


def fig_energy(ix, s, methods):
    """Stacked energy parts; one cluster per accelerator, one bar per method (colour = method, shade = part)."""
    accs = ix.accels[s]
    parts = ix.prefixed(s, "energy_pj.") or ["energy_pj"]
    ms = [m for m in methods if any(not math.isnan(ix.get(s, "energy_pj", m, a)) for a in accs)]
    if not ms:
        return None
    fig = _figure(max(6.0, 2.5 + 0.16 * len(accs) * len(ms) + 0.25 * len(accs)), 3.6)
    ax = fig.add_subplot()
    w = 0.8 / len(ms)
    for j, m in enumerate(ms):
        x = np.arange(len(accs)) + (j - (len(ms) - 1) / 2) * w
        bottom = np.zeros(len(accs))
        for k, part in enumerate(parts):
            ys = np.nan_to_num([ix.get(s, part, m, a) for a in accs]) / 1e6
            ax.bar(x, ys, w, bottom=bottom, color=_shade(COLORS[j % len(COLORS)], k, len(parts)),
                   edgecolor="white", lw=0.3, label=method_label(m) if k == 0 else None)
            bottom += ys
    ax.set_xticks(range(len(accs)), accs, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("energy per simulated batch (µJ)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
              title="method (parts, dark to light:\n" + ", ".join(p.split(".", 1)[-1] for p in parts) + ")",
              title_fontsize=7)
    return fig


def fig_heatmap(ix, s, methods):
    """One image: the methods' layer x significance matrices side by side (one imshow: cheap to draw)."""
    occ = ix.prefixed(s, "occupancy_s")
    layers = [L for L in ix.layers[s] if not math.isnan(ix.get(s, occ[0], "", "", L))] if occ else []
    if not occ or not layers:
        return None
    methods = [m for m in methods if not math.isnan(ix.get(s, occ[0], m, "", layers[0]))]
    n, gap = len(occ), 2
    blocks = []
    for m in methods:
        blocks.append(np.array([[ix.get(s, o, m, "", L) for o in reversed(occ)] for L in layers]))
        blocks.append(np.full((len(layers), gap), np.nan))
    mat = np.concatenate(blocks[:-1], axis=1)
    fig = _figure(1.6 + 2.3 * len(methods), max(3.0, 0.1 * len(layers) + 1.4))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", cmap="magma", vmin=0.0, vmax=1.0,
                   interpolation="nearest")
    ticks, labels = [], []
    for j, m in enumerate(methods):
        x0 = j * (n + gap)
        ax.text(x0 + (n - 1) / 2, -0.8, method_label(m), ha="center", va="bottom", fontsize=8)
        for i in range(0, n, 4 if n > 12 else 2):
            ticks.append(x0 + i)
            labels.append(str(n - 1 - i))
    ax.set_xticks(ticks, labels, fontsize=6)
    ax.set_xlabel("significance of each method's planes (MSB left)", fontsize=7)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    _layer_ticks(ax, layers)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of ones in the plane")
    return fig


def fig_essential(ix, s, methods):
    hs = ix.prefixed(s, "essential_hist_")
    if not hs:
        return None
    fig = _figure(6.5, 3.3)
    ax = fig.add_subplot()
    methods = [m for m in methods if not math.isnan(ix.get(s, hs[0], m))]
    ks = np.array([int(h[len("essential_hist_"):]) for h in hs])
    w = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        cnt = np.nan_to_num([ix.get(s, h, m) for h in hs])
        tot = cnt.sum()
        if tot <= 0:
            continue
        ax.bar(ks + (j - (len(methods) - 1) / 2) * w, cnt / tot, w, label=method_label(m),
               color=COLORS[j % len(COLORS)])
    ax.set_xlabel("essential (non-zero) bits per weight")
    ax.set_ylabel("share of weights")
    ax.set_xticks(ks)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    return fig


# ---- HTML ---------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1280px;color:#222;
padding:0 16px}
h1{font-size:1.6em;margin-bottom:0}h2{margin-top:2.2em;border-bottom:2px solid #4c72b0;padding-bottom:4px}
.meta{color:#666;font-size:.9em}figure{margin:18px 0;padding:10px;border:1px solid #e3e3e3;border-radius:6px;
background:#fff;overflow-x:auto}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.86em;color:#444;margin-top:6px}table{border-collapse:collapse;font-size:.85em;margin:10px 0}
th,td{padding:3px 9px;border-bottom:1px solid #e6e6e6;text-align:right;white-space:nowrap}
th{background:#f3f5f9;cursor:pointer;user-select:none;position:sticky;top:0}th:hover{background:#e3e8f3}
td.t,th.t{text-align:left}tr:hover td{background:#fafafa}.pos{color:#1a7f37}.neg{color:#c0392b}
.wrap{max-height:520px;overflow:auto;display:inline-block;border:1px solid #e6e6e6}
nav a{margin-right:12px}.note{color:#666;font-style:italic}
"""

_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
 var tb=th.closest('table').tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th);
 var asc=th.dataset.dir!=='asc';th.parentNode.querySelectorAll('th').forEach(function(h){h.dataset.dir='';});
 th.dataset.dir=asc?'asc':'desc';var rows=Array.prototype.slice.call(tb.rows);
 function v(r){var t=r.cells[i].dataset.v!==undefined?r.cells[i].dataset.v:r.cells[i].textContent;
  var n=parseFloat(t);return isNaN(n)?t.toLowerCase():n;}
 rows.sort(function(a,b){var x=v(a),y=v(b);if(typeof x!==typeof y){x=String(x);y=String(y);}
  return (x<y?-1:x>y?1:0)*(asc?1:-1);});rows.forEach(function(r){tb.appendChild(r);});});});
"""


def _num(v, fmt="{:.3g}", signed=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '<td data-v="">–</td>'
    cls = ""
    if signed:
        cls = ' class="pos"' if v > 0 else ' class="neg"' if v < 0 else ""
        text = ("+" if v > 0 else "") + fmt.format(v)
    else:
        text = fmt.format(v)
    return f'<td data-v="{v!r}"{cls}>{html.escape(text)}</td>'


def _table(records, cols):
    """cols: [(key, header, kind)] kind: 't' text, 'f' number, 'd' signed number, 'p' percent, 'e' energy."""
    head = "".join(f'<th class="t">{html.escape(h)}</th>' if k == "t" else f"<th>{html.escape(h)}</th>"
                   for _, h, k in cols)
    body = []
    for r in records:
        cells = []
        for key_, _, kind in cols:
            v = r.get(key_)
            if kind == "t":
                v = method_label(v) if key_ == "method" else v
                cells.append(f'<td class="t">{html.escape(str(v))}</td>')
            elif kind == "p":
                cells.append(_num(None if v is None else 100 * v, "{:.1f}"))
            elif kind == "d":
                cells.append(_num(v, "{:.2f}", signed=True))
            elif kind == "e":
                cells.append(_num(None if v is None else v / 1e6, "{:.4g}"))
            elif kind == "x":
                cells.append(_num(v, "{:.2f}×"))
            else:
                cells.append(_num(v, "{:.4g}"))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="wrap"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(body) + "</tbody></table></div>")


class _Doc:
    def __init__(self):
        self.parts: list[str] = []
        self.n_fig = 0

    def add(self, s: str):
        self.parts.append(s)

    def figure(self, fig, caption: str, alt: str):
        if fig is None:
            return
        self.n_fig += 1
        self.add(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'
                 f"<figcaption><b>Figure {self.n_fig}.</b> {html.escape(caption)}</figcaption></figure>")


def _setting_text(s, methods) -> str:
    ms = ", ".join(method_label(m) for m in methods)
    return f"Model {s[0]}, format {s[1]}, group {s[2]}; methods: {ms}."


def build(rows, title: str | None = None, source: str = "", provenance: dict | None = None) -> str:
    """The report as one HTML string."""
    rows = list(rows)
    ix = _Index(rows)
    doc = _Doc()
    models = list(dict.fromkeys(s[0] for s in ix.settings))
    title = title or f"bitsieve report: {', '.join(models) or 'no results'}"
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    doc.add(f"<h1>{html.escape(title)}</h1><p class='meta'>bitsieve {__version__} · {len(rows):,} result rows"
            f"{' from ' + html.escape(source) if source else ''} · {now}</p>")
    if not rows:
        doc.add("<p class='note'>No result rows.</p>")
    recs = summary(rows)
    doc.add("<nav>" + "".join(f'<a href="#s{i}">{html.escape(f"{s[0]} {s[1]} g{s[2]}")}</a>'
                              for i, s in enumerate(ix.settings)) + "</nav>")
    cols = [("model", "model", "t"), ("format", "format", "t"), ("group", "group", "f"), ("method", "method", "t"),
            ("accel", "accelerator", "t"), ("accuracy", "accuracy", "f"), ("accuracy_delta", "Δ accuracy", "d"),
            ("speedup", "speed-up", "x"), ("energy_pj", "energy (µJ)", "e"), ("cycles", "cycles", "f"),
            ("zero_bit_frac", "zero bits %", "p"), ("changed_bit_frac", "bits changed %", "p")]

    # one Pareto front per model over all of its settings (a sweep over formats and group sizes)
    for model in models:
        ss = [s for s in ix.settings if s[0] == model]
        if len(ss) < 2:
            continue
        pts = [(f"{r['format']}/g{r['group']} {method_label(r['method'])}@{r['accel']}", r["speedup"],
                r["accuracy"], f"{r['format']} g{r['group']}") for r in recs
               if r["model"] == model and not math.isnan(r["speedup"]) and not math.isnan(r["accuracy"])]
        if len(pts) >= 2:
            doc.add(f"<h2>{html.escape(model)}: all settings</h2>")
            doc.figure(fig_pareto(pts, f"{model}: accuracy vs speed-up, every format, group, method, accelerator"),
                       f"Accuracy versus whole-model speed-up over dense for every point of the sweep. Model {model}, "
                       f"formats {', '.join(sorted({s[1] for s in ss}))}, groups "
                       f"{', '.join(str(g) for g in sorted({s[2] for s in ss}))}; methods: "
                       f"{', '.join(sorted({method_label(m) for s in ss for m in ix.methods[s]}))}. Points on the "
                       "front are outlined and labelled (format/group method@accelerator); dominated points are faded "
                       "and the region they lie in is shaded.", "Pareto front over all settings")

    for i, s in enumerate(ix.settings):
        ms = ix.methods[s]
        ctx = _setting_text(s, ms)
        doc.add(f'<h2 id="s{i}">{html.escape(s[0])} · {html.escape(s[1])} · group {s[2]}</h2>')
        srec = [r for r in recs if (r["model"], r["format"], r["group"]) == s]
        doc.add(_table(srec, [c for c in cols if c[0] not in ("model", "format", "group")]))
        pts = [(f"{method_label(r['method'])}@{r['accel']}", r["speedup"], r["accuracy"], r["accel"]) for r in srec
               if not math.isnan(r["speedup"]) and not math.isnan(r["accuracy"])]
        if len(pts) >= 2:
            doc.figure(fig_pareto(pts, f"{s[0]} {s[1]} group {s[2]}: accuracy vs speed-up"),
                       f"Accuracy versus whole-model speed-up over dense, one point per method and accelerator "
                       f"(colour = accelerator). {ctx} Pareto-optimal points are outlined and labelled; dominated "
                       "points are faded and the dominated region is shaded.", "Pareto front")
        elif ix.accels[s] and not any(not math.isnan(r["accuracy"]) for r in srec):
            doc.add("<p class='note'>No accuracy was measured for this setting, so there is no Pareto front.</p>")
        if ix.accels[s]:
            sim_ms = _simulated(ix, s)
            doc.figure(fig_speedup_bars(ix, s),
                       "Whole-model speed-up over the dense baseline per accelerator, one bar per method. "
                       + _setting_text(s, sim_ms), "Speed-up per accelerator")
            for m in sim_ms[:2]:
                doc.figure(fig_layer_speedup(ix, s, m),
                           f"Per-layer speed-up over dense, one panel per accelerator, method {method_label(m)}; "
                           f"the dashed line is the whole-model figure. Model {s[0]}, format {s[1]}, group {s[2]}.",
                           f"Per-layer speed-up, {method_label(m)}")
            doc.figure(fig_energy(ix, s, sim_ms[:MAX_HEATMAPS]),
                       "Energy per simulated batch by part (compute, DRAM, SRAM; dark to light), one cluster per "
                       f"accelerator, one bar per method (first {MAX_HEATMAPS} shown). "
                       + _setting_text(s, sim_ms[:MAX_HEATMAPS]), "Energy breakdown")
        profiled = [m for m in ms if m in ix.profiled[s]]
        shown = profiled[:MAX_HEATMAPS]
        doc.figure(fig_heatmap(ix, s, shown),
                   "Per-layer bit-sparsity heatmap: fraction of ones in each significance plane of each layer's "
                   f"weights (after grouping and alignment), one panel per method. Model {s[0]}, format {s[1]}, "
                   f"group {s[2]}; methods shown: {', '.join(method_label(m) for m in shown)}"
                   + (f" (first {MAX_HEATMAPS} of {len(profiled)})." if len(profiled) > len(shown) else "."),
                   "Occupancy heatmap")
        doc.figure(fig_essential(ix, s, shown),
                   "Essential-bits histogram: share of weights by number of non-zero significand/magnitude bits, "
                   f"whole model. Model {s[0]}, format {s[1]}, group {s[2]}; methods shown: "
                   f"{', '.join(method_label(m) for m in shown)}.", "Essential bits histogram")
    body = "\n".join(doc.parts)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{body}<script>{_JS}</script></body></html>")


def write(rows, path, *, force: bool = False, title: str | None = None, source: str = "",
          provenance: dict | None = None):
    """Render and write the report atomically (never over an existing file without ``force``)."""
    from .io import check_writable, write_atomic

    check_writable(path, force)
    return write_atomic(path, build(rows, title=title, source=source, provenance=provenance), force=force)
