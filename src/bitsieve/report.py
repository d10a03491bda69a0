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

Rows from ``bitsieve compare`` (design rows: layer '*', group 0, accel = a design) get a report about designs
instead (``_compare_sections``): the design table, accuracy-versus-speed-up curves over each design's knob with
confidence intervals, per-layer cycles saved (and sensitivity when measured), activation next to weight bit
profiles. Either kind ends with the provenance block the command passes in. Its figures are drawn at
``READABLE_DPI`` no wider than ``MAX_FIG_PX`` so that no text is under 11 px in a 1400 px window.
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
READABLE_DPI = 100  # compare figures: 9 pt text is 12.5 px, shown 1:1 ...
MAX_FIG_PX = 1240  # ... because the figure fits the 1280 px page column unscaled
MIN_FONT_PT = 9
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
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return base64.b64encode(buf.getvalue()).decode()


def _figure(w, h, dpi=80):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained", dpi=dpi)


def _layer_ticks(ax, layers, axis="y", fontsize=6):
    step = max(1, math.ceil(len(layers) / MAX_LAYER_LABELS))
    idx = list(range(0, len(layers), step))
    labels = [layers[i] if len(layers[i]) <= 28 else "…" + layers[i][-27:] for i in idx]
    if axis == "y":
        ax.set_yticks(idx, labels, fontsize=fontsize)
    else:
        ax.set_xticks(idx, labels, fontsize=fontsize, rotation=90)


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
    ax.set_ylabel("energy per inference (µJ)")
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


# ---- compare outputs: designs ------------------------------------------------------------------------------
_PARAM_SPLIT = re.compile(r",(?=[\w.]+=)")
MARKERS = ["D", "^", "v", "P", "X", "s", "h"]  # one per software method in the curves


def is_compare(rows) -> bool:
    """Rows from ``bitsieve compare``: they hold design rows (whole model, group 0, accel = the design)."""
    return any(r["layer"] == WHOLE and r["group"] == 0 and r["accel"] for r in rows)


def design_params(name: str) -> tuple[str, dict]:
    """``'bitx[keep=4]'`` -> ``('bitx', {'keep': '4'})``; a name without brackets has no parameters."""
    base, _, rest = name.partition("[")
    if not rest.endswith("]"):
        return name, {}
    return base, dict(p.split("=", 1) for p in _PARAM_SPLIT.split(rest[:-1]) if "=" in p)


def _knob_order(v):
    """Sort key of a knob value: numbers (decimal or 0x hex) by value, anything else after them."""
    for conv in (lambda x: int(x, 0), float):
        try:
            return (0, conv(v), "")
        except (TypeError, ValueError):
            pass
    return (1, 0, str(v))


def _knob_text(v: str) -> str:
    """Knob values as a reader knows them: bit masks (large integers) in hex."""
    n = _knob_order(v)[1]
    return hex(n) if isinstance(n, int) and n >= 0x1000 else v


class Designs:
    """The rows of one model's comparison, by what the report draws from them.

    ``whole[(design, method)]``: design-row metrics, in first-seen order (compare writes every design at its
    defaults first, so the first design of an accelerator is its default); ``layer[(design, method,
    metric)]``: {layer: value}; ``profile[metric]``: {layer: value} of the unmodified weights and of the
    activations (``act_*``), ``profile_setting[metric]`` their (format, group); ``original``: the original
    model's accuracy metrics.
    """

    def __init__(self, rows, model: str):
        self.model = model
        self.whole: dict = defaultdict(dict)
        self.formats: dict = {}
        self.layer: dict = defaultdict(dict)
        self.profile: dict = defaultdict(dict)
        self.profile_setting: dict = {}
        self.original: dict = {}
        self.published: dict = defaultdict(dict)  # (design, format, quantity) -> {paper, model, ratio}
        for r in rows:
            if r["model"] != model:
                continue
            a, m, k, L = r["accel"], r["method"], r["metric"], r["layer"]
            if m == "published":
                q, _, part = k.rpartition(".")
                self.published[(a, r["format"], q)][part] = r["value"]
            elif a == "original":
                self.original[k] = r["value"]
            elif a and L == WHOLE and r["group"] == 0:
                self.whole[(a, m)][k] = r["value"]
                self.formats[(a, m)] = r["format"]
            elif a and L != WHOLE:
                self.layer[(a, m, k)][L] = r["value"]
            elif not a and not m:
                self.profile[k][L] = r["value"]
                self.profile_setting[k] = (r["format"], r["group"])
        self.bases: dict = defaultdict(list)  # accelerator (the name before '[') -> its designs, default first
        for a, m in self.whole:
            if not m:
                self.bases[design_params(a)[0]].append(a)

    def get(self, design, metric, method=""):
        return self.whole.get((design, method), {}).get(metric, math.nan)

    def colour(self, name: str) -> str:
        """One colour per accelerator in every figure."""
        base = design_params(name.split(" + ")[0])[0]
        return COLORS[list(self.bases).index(base) % len(COLORS)] if base in self.bases else COLORS[-1]

    def methods_on(self, base) -> list[tuple[str, str]]:
        """(design, method) of the software methods composed before a design of this accelerator."""
        return [(a, m) for a, m in self.whole if m and design_params(a)[0] == base]

    def knob(self, base) -> tuple[str, dict] | None:
        """(parameter, {design: value}) when the accelerator's designs differ in exactly one parameter; the
        default appears only when its name states the value. None without variants."""
        names = self.bases[base]
        params = {n: design_params(n)[1] for n in names}
        keys = {k for p in params.values() for k in p}
        varying = [k for k in sorted(keys) if len({p.get(k) for p in params.values()}) > 1]
        if len(names) < 2 or len(varying) != 1:
            return None
        k = varying[0]
        return k, {n: p[k] for n, p in params.items() if k in p}

    def record(self, design, method="") -> dict:
        return {"design": design, "method": method, "format": self.formats.get((design, method), ""),
                **self.whole[(design, method)]}

    def main_records(self) -> list[dict]:
        """The original model, then each accelerator's default design followed by its software methods."""
        out = [{"design": "original", "method": "", "format": "fp32", **self.original}] if self.original else []
        for base, names in self.bases.items():
            out += [self.record(names[0])] + [self.record(a, m) for a, m in self.methods_on(base)]
        return out

    def knob_records(self) -> list[dict]:
        """Each accelerator's variants (the default excepted), sorted by its knob."""
        out = []
        for base, names in self.bases.items():
            kn = self.knob(base)
            if kn:
                out += [self.record(n) for n in sorted(kn[1], key=lambda n: _knob_order(kn[1][n]))
                        if n != names[0]]
        return out


def _yerr(d: Designs, points):
    """Asymmetric error bars from the accuracy interval (0 where none was stated)."""
    lo = [y - d.get(a, "accuracy_ci_low", m) for a, m, _, y in points]
    hi = [d.get(a, "accuracy_ci_high", m) - y for a, m, _, y in points]
    return np.clip(np.nan_to_num([lo, hi]), 0, None)


def fig_design_curves(d: Designs):
    """Accuracy versus speed-up: each accelerator's designs over its knob joined in knob order (labelled by
    value, the default starred), designs without a knob as single points, software methods as their own
    markers; every point with its 95 % interval. None when no design has both numbers."""

    def pts(pairs):
        out = [(a, m, d.get(a, "speedup", m), d.get(a, "accuracy", m)) for a, m in pairs]
        return [p for p in out if math.isfinite(p[2]) and math.isfinite(p[3])]

    fig = _figure(11.5, 5.6, dpi=READABLE_DPI)
    ax = fig.add_subplot()
    acc0 = d.original.get("accuracy", math.nan)
    if math.isfinite(acc0):
        ax.axhspan(d.original.get("accuracy_ci_low", acc0), d.original.get("accuracy_ci_high", acc0),
                   color="#cccccc", alpha=0.4, lw=0)
        ax.axhline(acc0, color="#555555", lw=1, ls="--", label="original model (band: 95 % CI)")
    methods = list(dict.fromkeys(m for _, m in d.whole if m))
    xs_all = []
    for base, names in d.bases.items():
        c = d.colour(base)
        kn = d.knob(base)
        default, line = pts([(names[0], "")]), []
        if kn:
            k, values = kn
            line = pts(sorted(((n, "") for n in values), key=lambda p: _knob_order(values[p[0]])))
            if line:
                ax.errorbar([p[2] for p in line], [p[3] for p in line], yerr=_yerr(d, line), fmt="-o", ms=5,
                            color=c, capsize=3, lw=1.4, label=f"{base} over {k}")
                for a, _, x, y in line:
                    ax.annotate(_knob_text(values[a]), (x, y), textcoords="offset points", xytext=(5, 5),
                                fontsize=MIN_FONT_PT, color=c)
        if default:
            ax.errorbar([p[2] for p in default], [p[3] for p in default], yerr=_yerr(d, default),
                        fmt="*" if kn else "o", ms=15 if kn else 8, mec="black", color=c, capsize=3,
                        label=f"{names[0]} (default)" if kn else names[0], zorder=4)
        for a, m, x, y in pts(d.methods_on(base)):
            ax.errorbar([x], [y], yerr=_yerr(d, [(a, m, x, y)]), fmt=MARKERS[methods.index(m) % len(MARKERS)],
                        ms=8, color=c, mec="black", capsize=3, label=f"{m} on {a}", zorder=4)
        xs_all += [p[2] for p in default + line + pts(d.methods_on(base))]
    if not xs_all:
        return None
    if max(xs_all) / max(min(xs_all), 1e-9) > 4:
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("speed-up over the same-array dense design (whole model)")
    ax.set_ylabel("accuracy as the design computes")
    ax.grid(alpha=0.3)
    n = len(ax.get_legend_handles_labels()[1])  # every design and method is named: the figure grows to fit
    ncols = 1 if n <= 24 else 2
    fig.set_figheight(max(5.6, 0.24 * math.ceil(n / ncols) + 0.8))
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=MIN_FONT_PT, ncols=ncols)
    return fig


def fig_design_energy(d: Designs):
    """Energy per inference of each default design and method, stacked by part (why a fast design can still
    cost more energy: its SRAM or DRAM share). None without energy rows."""
    recs = [r for r in d.main_records() if math.isfinite(r.get("energy_pj", math.nan))]
    if not recs:
        return None
    parts = [p for p in ("energy_pj.compute", "energy_pj.sram", "energy_pj.dram")
             if any(math.isfinite(r.get(p, math.nan)) for r in recs)] or ["energy_pj"]
    unit, scale = _energy_unit(max(r["energy_pj"] for r in recs))
    fig = _figure(10.5, 0.32 * len(recs) + 1.6, dpi=READABLE_DPI)
    ax = fig.add_subplot()
    y = np.arange(len(recs))
    left = np.zeros(len(recs))
    for k, part in enumerate(parts):
        v = np.nan_to_num([r.get(part, math.nan) for r in recs]) / scale
        ax.barh(y, v, 0.7, left=left, color=COLORS[k], label=_PART.get(part, part))
        left += v
    ax.set_yticks(y, [r["design"] + (f" + {r['method']}" if r["method"] else "") for r in recs])
    ax.invert_yaxis()
    ax.set_xlabel(f"energy per inference ({unit})")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=MIN_FONT_PT)
    return fig


_PART = {"energy_pj.compute": "compute", "energy_pj.sram": "SRAM", "energy_pj.dram": "DRAM", "energy_pj": "total"}


def _energy_unit(pj: float) -> tuple[str, float]:
    for unit, scale in (("mJ", 1e9), ("µJ", 1e6), ("nJ", 1e3)):
        if pj >= scale:
            return unit, scale
    return "pJ", 1.0


def layer_panels(d: Designs) -> tuple[list[str], list[str], dict]:
    """Which default designs get a per-layer panel: (shown, flat, same). A design whose speed-up is the
    same on every layer (dense: 1.0) is 'flat', one whose per-layer speed-ups equal a shown design's is
    'same' {design: the shown one}: their panels would repeat a number."""
    layers = _layers(d)
    shown, flat, same, vecs = [], [], {}, {}
    for names in d.bases.values():
        n = names[0]
        sp = d.layer.get((n, "", "speedup"))
        if not sp:
            continue
        v = np.array([sp.get(L, math.nan) for L in layers], dtype=float)
        fin = v[np.isfinite(v)]
        if fin.size == 0 or np.allclose(fin, fin[0], rtol=1e-9):
            flat.append(n)
            continue
        twin = next((s for s in shown if np.allclose(v, vecs[s], rtol=1e-9, equal_nan=True)), None)
        if twin:
            same[n] = twin
            continue
        shown.append(n)
        vecs[n] = v
    return shown, flat, same


def _layers(d: Designs) -> list[str]:
    """Layer names in model order, from the simulator's and the profiles' per-layer rows."""
    seen: dict = {}
    for (_, m, k), per in d.layer.items():
        if k in ("cycles", "speedup") and not m:
            seen.update(dict.fromkeys(per))
    for per in d.profile.values():
        seen.update(dict.fromkeys(L for L in per if L != WHOLE))
    return list(seen)


def _sensitivity(d: Designs) -> dict:
    """{design: {layer: accuracy change when only that layer is pruned}} where it was measured."""
    return {(a + (f" + {m}" if m else "")): per for (a, m, k), per in d.layer.items() if k == "sensitivity_delta"}


def fig_layer_savings(d: Designs, shown: list[str]):
    """Per layer, the cycles each design saves over its same-array dense design (cycles x (speed-up - 1)),
    one panel per design in its colour; under it, in grey, the accuracy change when only that layer is pruned,
    where it was measured. None when neither is there."""
    sens = _sensitivity(d)
    layers = [L for L in _layers(d) if any(L in d.layer.get((n, "", "cycles"), {}) for n in shown)
              or any(L in per for per in sens.values())]
    panels = []  # a design's sensitivity right under its savings
    for n in shown:
        panels += [("saved", n)] + [("sens", k) for k in sens if design_params(k.split(" + ")[0])[0] == n]
    panels += [("sens", k) for k in sens if ("sens", k) not in panels]
    if not panels or not layers:
        return None
    fig = _figure(min(MAX_FIG_PX / READABLE_DPI, max(8.0, 0.16 * len(layers) + 3)), 1.35 * len(panels) + 1.8,
                  dpi=READABLE_DPI)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    from matplotlib.ticker import MaxNLocator

    x = np.arange(len(layers))
    for ax, (kind, n) in zip(axes, panels):
        ax.yaxis.set_major_locator(MaxNLocator(3))
        if kind == "saved":
            cyc, sp = d.layer.get((n, "", "cycles"), {}), d.layer.get((n, "", "speedup"), {})
            saved = np.array([cyc.get(L, math.nan) * (sp.get(L, math.nan) - 1) for L in layers]) / 1e6
            ax.bar(x, np.nan_to_num(saved), 0.8, color=d.colour(n))
            ax.set_ylabel(f"{n}\nMcycles saved", rotation=0, ha="right", va="center")
        else:
            ax.bar(x, np.nan_to_num([sens[n].get(L, math.nan) for L in layers]), 0.8, color="#444444")
            ax.set_ylabel(f"{n}\nΔ accuracy,\nonly this layer", rotation=0, ha="right", va="center")
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
    _layer_ticks(axes[-1], layers, axis="x", fontsize=MIN_FONT_PT)
    return fig


_PROFILE_PANELS = (("zero bits (fraction)", "zero_bit_frac", "act_zero_bit_frac"),
                   ("zero values (fraction)", "zero_value_frac", "act_zero_value_frac"),
                   ("mean essential bits", "mean_essential_bits", "act_mean_essential_bits"))


def fig_bit_profiles(d: Designs):
    """Per layer, the weights' bit profile next to the activations' (bars side by side, whole model dashed),
    one panel per measure either of them has. None without profile rows."""
    layers = [L for L in _layers(d) if any(L in d.profile.get(k, {}) for _, w, a in _PROFILE_PANELS
                                           for k in (w, a))]
    panels = [p for p in _PROFILE_PANELS if d.profile.get(p[1]) or d.profile.get(p[2])]
    if not layers or not panels:
        return None
    fig = _figure(min(MAX_FIG_PX / READABLE_DPI, max(8.0, 0.16 * len(layers) + 3)), 2.0 * len(panels) + 1.8,
                  dpi=READABLE_DPI)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(len(layers))
    for ax, (label, wk, ak) in zip(axes, panels):
        for j, (k, who, c) in enumerate(((wk, "weights", COLORS[0]), (ak, "activations", COLORS[1]))):
            per = d.profile.get(k)
            if not per:
                continue
            fmt, g = d.profile_setting[k]
            ax.bar(x + (j - 0.5) * 0.4, np.nan_to_num([per.get(L, math.nan) for L in layers]), 0.4, color=c,
                   label=f"{who} ({fmt}, groups of {g})")
            if math.isfinite(per.get(WHOLE, math.nan)):
                ax.axhline(per[WHOLE], color=c, lw=1.2, ls="--")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper left", bbox_to_anchor=(0, 1.0), ncols=2, fontsize=MIN_FONT_PT)
    _layer_ticks(axes[-1], layers, axis="x", fontsize=MIN_FONT_PT)
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
.wrap{max-height:520px;max-width:100%;overflow:auto;display:inline-block;border:1px solid #e6e6e6}
table.designs th{white-space:normal;vertical-align:bottom}table.designs td,table.designs th{padding:3px 4px}
nav a{margin-right:12px}.note{color:#666;font-style:italic}
table.prov td{text-align:left;white-space:normal;vertical-align:top}table.prov th{cursor:default;text-align:left}
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


def _interval(r, key, signed):
    """A value with its 95 % interval (``key_ci_low``/``key_ci_high``) in one cell; a signed change is
    coloured only when its interval excludes zero."""
    v, lo, hi = (r.get(k, math.nan) for k in (key, f"{key}_ci_low", f"{key}_ci_high"))
    if v is None or not math.isfinite(v):
        return '<td data-v="">–</td>'
    f = "{:+.2f}" if signed else "{:.2f}"
    g = "{:+.1f}" if signed else "{:.1f}"
    text = f.format(v) + (f" [{g.format(lo)}, {g.format(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else "")
    cls = ' class="pos"' if signed and lo > 0 else ' class="neg"' if signed and hi < 0 else ""
    return f'<td data-v="{v!r}"{cls}>{html.escape(text)}</td>'


def _table(records, cols, cls=""):
    """cols: [(key, header, kind)] kind: 't' text, 'f' number, 'd' signed number, 'p' percent, 'e' energy
    (µJ), 'j' energy in its own unit, 'x' speed-up, 'a' value with its interval, 'c' change with its
    interval. ``cls``: an extra class of the table."""
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
            elif kind in ("a", "c"):
                cells.append(_interval(r, key_, kind == "c"))
            elif kind == "j":
                unit, scale = _energy_unit(v) if v is not None and math.isfinite(v) else ("", 1.0)
                cells.append(_num(None if v is None else v / scale, "{:.3g} " + unit))
            else:
                cells.append(_num(v, "{:.4g}"))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="wrap"><table class="sortable {cls}"><thead><tr>{head}</tr></thead><tbody>'
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


def _sweep_sections(doc: _Doc, rows, ix: _Index, models):
    """Per (model, format, group) setting: the method x accelerator table and figures (module docstring)."""
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
                       "Energy per inference by part (compute, DRAM, SRAM; dark to light), one cluster per "
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


#: headers break at spaces only (non-breaking hyphens and spaces inside terms)
DESIGN_COLS = [("design", "design", "t"), ("software", "method", "t"), ("format", "format", "t"),
               ("accuracy", "accuracy [95\u00a0%\u00a0CI]", "a"), ("n_samples", "n", "f"),
               ("accuracy_delta", "change [paired 95\u00a0%\u00a0CI]", "c"), ("agreement", "agreement", "f"),
               ("speedup", "speed\u2011up same array", "x"), ("speedup_latency", "speed\u2011up latency", "x"),
               ("speedup_iso_area", "speed\u2011up iso-area", "x"), ("latency_mcycles", "latency (Mcycles)", "f"),
               ("energy_pj", "energy / inference", "j"), ("tops_per_w", "TOPS/W", "f"),
               ("gops_per_mm2", "GOPS/mm²", "f"), ("area_mm2", "area (mm²)", "f")]


def _design_table(records) -> str:
    return _table([{**r, "software": r["method"] or "–", "latency_mcycles": r.get("latency_cycles", math.nan) / 1e6}
                   for r in records], DESIGN_COLS, "designs")


def _compare_sections(doc: _Doc, d: Designs, anchor: str):
    """One model's comparison: design table, accuracy-versus-speed-up curves, energy per inference, per-layer
    savings and sensitivity, bit profiles (module docstring)."""
    m = d.model
    sections = [("designs", "Designs"), ("curves", "Accuracy versus speed-up"), ("energy", "Energy"),
                ("layers", "Per layer"), ("profiles", "Bit profiles")] + (
                    [("published", "Published figures")] if d.published else [])
    doc.add("<nav>" + "".join(f'<a href="#{anchor}-{k}">{html.escape(t)}</a>' for k, t in sections)
            + '<a href="#provenance">Provenance</a></nav>')
    doc.add(f'<h2 id="{anchor}-designs">{html.escape(m)}: designs as they compute</h2>')
    o = d.original
    if math.isfinite(o.get("accuracy", math.nan)):
        doc.add(f"<p>Original model: accuracy {o['accuracy']:.2f} "
                f"[{o.get('accuracy_ci_low', math.nan):.1f}, {o.get('accuracy_ci_high', math.nan):.1f}] on "
                f"{int(o.get('n_samples', 0)):,} samples."
                + (" <b>The task is saturated on these samples: small losses cannot show.</b>"
                   if o.get("saturated") else "") + "</p>")
    doc.add(_design_table(d.main_records()))
    doc.add("<p class='note'>Accuracy is measured on the model as each design computes it (its own numerics; a "
            "method is applied before them, in the design's format); the change is paired against the original "
            "model on the same samples. Speed-up same array: over the dense design of the same array; latency: "
            "per-layer max of compute and DRAM cycles; iso-area: that latency speed-up scaled to the dense "
            "design's area. <b>Energy is per inference.</b></p>")
    knobs = d.knob_records()
    if knobs:
        doc.add("<p>The same designs over their knob (the points of the curves below):</p>")
        doc.add(_design_table(knobs))

    doc.add(f'<h2 id="{anchor}-curves">Accuracy versus speed-up</h2>')
    curved = [b for b in d.bases if d.knob(b)]
    fig = fig_design_curves(d)
    if fig is None:
        doc.add("<p class='note'>No accuracy was measured, so there are no accuracy-versus-speed-up curves.</p>")
    doc.figure(fig, f"Model {m}: accuracy as each design computes versus its whole-model speed-up over the "
                    "same-array dense design; error bars are 95 % intervals, the grey band the original model's. "
               + (f"Curves join the designs of {', '.join(curved)} in the order of their knob (values labelled, "
                  "the default starred); " if curved else "")
               + "other designs are single points; software methods are their own markers, in the colour of "
                 "the design they run on.", "Accuracy versus speed-up per design")

    doc.add(f'<h2 id="{anchor}-energy">Energy per inference</h2>')
    doc.figure(fig_design_energy(d), f"Model {m}: energy per inference of each design at its defaults and with "
                                     "each software method, by part (compute, SRAM, DRAM).", "Energy per inference")

    doc.add(f'<h2 id="{anchor}-layers">Per layer</h2>')
    shown, flat, same = layer_panels(d)
    sens = _sensitivity(d)
    left_out = ([f"{', '.join(flat)}: the same speed-up on every layer"] if flat else []) + \
        [f"{a}: the same per-layer speed-ups as {b}" for a, b in same.items()]
    doc.figure(fig_layer_savings(d, shown),
               f"Model {m}: cycles each design at its defaults saves per layer over its same-array dense design"
               + (f" ({', '.join(shown)})" if shown else "")
               + (f"; grey panels: accuracy change when only that layer is pruned ({', '.join(sens)})" if sens
                  else "") + "."
               + (f" Not drawn: {'; '.join(left_out)}." if left_out else ""), "Per-layer cycles saved")
    if not shown and not sens:
        doc.add("<p class='note'>No design's speed-up differs between layers"
                + (f" ({'; '.join(left_out)})" if left_out else "") + ".</p>")

    doc.add(f'<h2 id="{anchor}-profiles">Bit profiles: weights and activations</h2>')
    doc.figure(fig_bit_profiles(d), f"Model {m}: per layer, the unmodified weights' bit profile next to the "
                                    "captured input activations' (dashed: whole model).", "Bit profiles")
    if d.published:
        doc.add(f'<h2 id="{anchor}-published">Published power and area against the model</h2>')
        recs = [{"design": a, "format": f, "quantity": q, **v} for (a, f, q), v in d.published.items()]
        doc.add(_table(recs, [("design", "design", "t"), ("format", "format", "t"), ("quantity", "quantity", "t"),
                              ("paper", "paper", "f"), ("model", "model", "f"), ("ratio", "model / paper", "f")],
                       "published"))
        doc.add("<p class='note'>Each design configured as its paper publishes it (array, clock, format); the "
                "model's figure is the PE array's power at full utilisation (or its area, or TOPS/W); "
                "`bitsieve compare` prints the measured reason for every figure outside its tolerance.</p>")


def _provenance_block(doc: _Doc, provenance: dict | None):
    """How the numbers were made (command, versions, seed, samples, formats), label by label."""
    if not provenance:
        return
    cells = []
    for k, v in provenance.items():
        text = "<br>".join(html.escape(str(x)) for x in v) if isinstance(v, (list, tuple)) else html.escape(str(v))
        cells.append(f"<tr><th>{html.escape(str(k))}</th><td>{text}</td></tr>")
    doc.add(f'<h2 id="provenance">Provenance</h2><table class="prov">{"".join(cells)}</table>')


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
    elif is_compare(rows):
        for i, model in enumerate(models):
            _compare_sections(doc, Designs(rows, model), f"m{i}")
    else:
        _sweep_sections(doc, rows, ix, models)
    _provenance_block(doc, provenance)
    body = "\n".join(doc.parts)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{body}<script>{_JS}</script></body></html>")


def write(rows, path, *, force: bool = False, title: str | None = None, source: str = "",
          provenance: dict | None = None):
    """Render and write the report atomically (never over an existing file without ``force``)."""
    from .io import check_writable, write_atomic

    check_writable(path, force)
    return write_atomic(path, build(rows, title=title, source=source, provenance=provenance), force=force)
