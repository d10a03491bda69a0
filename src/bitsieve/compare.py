"""`bitsieve compare`: the main job. One model, every design (an accelerator with its own numerics, see
``bitsieve.designs``), accuracy *as each design computes*, speed, latency, energy per inference and area.

Rows: each design at its defaults, then each software method on the designs whose cycles read weight bits
(elsewhere the cell is n/a, never a repeated number), then, for the designs with a knob (BitX/BitXpro
``keep``, Bitlet ``prune``), the design at every knob value for accuracy-versus-speed curves.

Accuracy: every distinct numerics is run once on the same samples in the same order; changes against the
original model are paired (``evaluate._compare``: Wilson interval of the accuracy, paired bootstrap of the
change, agreement with the original's predictions). Speed: compute cycles against the same-array dense
reference (``speedup``), against the dense design in the same format scaled to equal area
(``speedup_iso_area``), and ``latency_cycles`` per inference = per layer max(compute, DRAM) (a per-layer
roofline) over the inputs of the simulated batch; ``cycles`` rows are the batch's.
Energy is per inference (the simulated batch's energy over its inputs).

The work is cut into units that share nothing but the model (``plan`` -> ``Unit`` -> rows): one accuracy
unit per numerics, one simulation unit per design (with its methods), one bit profile; ``run`` executes
them in this process or a process pool and assembles the tidy rows (``results``).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import designs, results
from .errors import UserError
from .sweep import DEFAULT_ACTIVATIONS, Setting, _default_workers, _worker_init, keep_freed_memory, quick_limit

DEFAULT_MODEL = "efficientnet-lite0"
#: software methods shown by default: the ones no design applies by itself, each on the designs it can change
DEFAULT_METHODS = ("bitwave", "bbs", "truncate")
#: rough relative cost per unit, only to start the slow ones first
COST_HINT = {"tactical": 10.0, "bitlet": 5.0, "laconic": 2.0, "pnpu": 1.5, "pragmatic": 1.0}
TASK_METRIC = {"imagenet": "ImageNet top-1 %", "mnist": "MNIST top-1 %", "faces": "LFW face / non-face accuracy %",
               "stsb": "STS-B Spearman x100"}
CLOCK_GHZ = 1.0  # for TOPS/W and GOPS/mm2 when a design states no clock: every design at the same 1 GHz


def metric_label(model: str) -> str:
    from .zoo import BUILTINS

    b = BUILTINS.get(model)
    return TASK_METRIC.get(b.task, b.task) if b else ""


def native_format(name: str) -> str:
    return designs.native_format(name)


@dataclass(frozen=True)
class Unit:
    """One piece of a comparison: 'accuracy' (some numerics), 'sim' (one design and its methods), 'profile'."""

    kind: str
    model: str
    design: designs.Design | None = None
    methods: tuple[str, ...] = ()
    numerics: tuple = ()  # accuracy: ((key, Numerics, design, method spec), ...)
    limit: int | None = None
    activations: int = DEFAULT_ACTIVATIONS
    seed: int = 0

    @property
    def label(self) -> str:
        if self.kind == "accuracy":
            what = ", ".join(dict.fromkeys(d.name + (f"+{m.split(':')[0]}" if m else "") for _, _, d, m in self.numerics))
            return f"accuracy: {what}" + (f" ({self.limit} samples)" if self.limit else " (full set)")
        if self.kind == "profile":
            return "bit profile (fp32 weights, activations)"
        return f"simulate {self.design.name} ({self.design.fmt})"

    @property
    def cost(self) -> float:
        if self.kind == "accuracy":
            return 1e9 + sum(5.0 if n.forward else 1.0 for _, n, _, _ in self.numerics)
        if self.kind == "profile":
            return 0.5
        return COST_HINT.get(self.design.accel, 0.5) * (1 + len(self.methods))


@dataclass
class Plan:
    model: str
    entries: list[designs.Entry]
    methods: list[str]
    limit: int | None
    activations: int = DEFAULT_ACTIVATIONS
    group: int = 64
    units: list[Unit] = field(default_factory=list)

    @property
    def designs(self) -> list[designs.Design]:
        return list(dict.fromkeys(e.design for e in self.entries))


def plan(model: str = DEFAULT_MODEL, *, methods: list[str] | None = None, accels: list[str] | None = None,
         fmt: str = "auto", group: int = 64, limit: int | None | str = "quick", accuracy: bool = True,
         activations: int = DEFAULT_ACTIVATIONS, seed: int = 0, sets: dict | None = None, curves: bool = True,
         workers: int = 2) -> Plan:
    """Check every choice and cut the comparison into units (nothing runs yet)."""
    from . import methods as methods_mod
    from .zoo import BUILTINS

    if not 1 <= group <= 64:
        raise UserError(f"--group must be 1..64, got {group}")
    specs = list(methods) if methods is not None else list(DEFAULT_METHODS)
    for s in specs:
        methods_mod.parse_specs(s.split("+"))  # unknown methods and bad parameters fail here
    base = designs.defaults(accels, fmt=fmt, sets=sets)
    entries = [designs.Entry(d) for d in base]
    for spec in specs:
        shown = False
        for d in base:
            if not d.reads_weights:
                continue
            steps = d.method_steps(spec)
            if steps is not None:
                entries.append(designs.Entry(d, spec, steps))
                shown = True
        if not shown:
            raise UserError(f"method {spec} runs on none of the designs compared (it needs a design that reads "
                            "weight bits in its format)")
    if curves:
        for d in base:
            for k in designs.knob_designs(d):
                if k.overrides != d.overrides:
                    entries.append(designs.Entry(k))
    builtin = BUILTINS.get(model)
    if limit == "quick":
        limit = quick_limit(builtin.task) if builtin else 0
    if builtin is None or not accuracy:
        limit = 0
    p = Plan(model, entries, specs, limit, activations, group)
    if limit != 0:
        seen: dict = {}
        for e in entries:
            key = e.accuracy_key()
            if key not in seen:
                seen[key] = (key, e.design.numerics(), e.design, e.method)
        items = sorted(seen.values(), key=lambda x: bool(x[1].forward))
        fwd = [x for x in items if x[1].forward]
        rest = [x for x in items if not x[1].forward]
        # the emulated forward passes are slow: their own units; the rest shared out over the workers
        for x in fwd:
            p.units.append(Unit("accuracy", model, numerics=(x,), limit=limit, seed=seed))
        n = max(1, min(workers, len(rest)))
        for i in range(n):
            chunk = tuple(rest[i::n])
            if chunk:
                p.units.append(Unit("accuracy", model, numerics=chunk, limit=limit, seed=seed))
    p.units.append(Unit("profile", model, activations=activations, seed=seed))
    for d in p.designs:
        ms = tuple(e.method for e in entries if e.design == d and e.method)
        p.units.append(Unit("sim", model, design=d, methods=ms, activations=activations, seed=seed))
    p.units.sort(key=lambda u: -u.cost)
    return p


# ---- running units (in this process or in pool workers) ------------------------------------------------------
_CACHE: dict = {}


def _prepared(unit: Unit):
    """The model with its activations captured, loaded once per process."""
    from . import model as model_mod

    key = (unit.model, unit.activations)
    if key not in _CACHE:
        _CACHE.clear()
        m = model_mod.load(unit.model, activations=unit.activations)
        layers = [L for L in m.layers if L.kind in ("conv", "linear")]
        if not layers:
            raise UserError(f"{unit.model} has no conv or linear layers")
        _CACHE[key] = (m, layers)
    return _CACHE[key]


def accuracy_records(model: str, items, limit, say) -> dict:
    """{numerics key: evaluate.Records} of the original ('original') and every numerics, same samples."""
    from . import evaluate

    m = evaluate.load_model(model)
    task = m.builtin.task
    batches = list(evaluate._batches(task, m.builtin, None, limit))
    if not batches:
        raise UserError(f"no {task} data to evaluate")
    out = {"original": evaluate._run(task, m, batches)}
    say(1 / (len(items) + 1))
    for i, (key, num, d, method) in enumerate(items):
        steps = d.method_steps(method) if method else ()
        with designs.computing(m, num, steps, batches[:1]):
            out[key] = evaluate._run(task, m, batches)
        say((i + 2) / (len(items) + 1))
    return out


def simulate_design(model: str, layers, d: designs.Design, methods: tuple, activations: int, seed: int,
                    say) -> list[dict]:
    """Per-layer and whole-model rows of design ``d`` (method '') and of each method composed before it."""
    from . import methods as methods_mod
    from . import simulate as sim_mod
    from .accel import tiling

    sim = sim_mod.Simulator(sim_mod.Run(accels=[d.accel], fmt=d.fmt, sets={d.accel: d.overrides} if d.sets else {},
                                        seed=seed, inferences=activations))
    weights = {"": None}
    for spec in methods:
        weights[spec] = [r.weight for r in methods_mod.apply_model(layers, d.method_steps(spec))]
    per: dict[str, list] = {k: [] for k in weights}
    for i, L in enumerate(layers):
        wl = tiling.from_layer(L)
        acache: dict = {}
        for label, ws in weights.items():
            res = sim_mod.layer_results(sim, wl, None if ws is None else ws[i], acache)
            per[label] += sim_mod.layer_rows(sim, model, label, wl, res)
        say((i + 1) / len(layers))
    rows = []
    for label, lr in per.items():
        rows += lr + sim_mod.whole_rows(sim, model, label, lr)
    for r in rows:  # the design's name (dense is named by its format, overrides shown)
        if r["accel"] == d.accel:
            r["accel"] = d.name
        elif r["accel"] == "dense":
            r["accel"] = f"dense@{d.fmt}"
    return [r for r in rows if r["accel"] == d.name or (d.accel == "dense")]


def run_unit(unit: Unit, progress=None):
    """What one unit produces: accuracy records, or rows. ``progress(fraction)`` hears how far it is."""
    from .sweep import _profile_setting

    say = progress or (lambda f: None)
    if unit.kind == "accuracy":
        return accuracy_records(unit.model, unit.numerics, unit.limit, say)
    m, layers = _prepared(unit)
    if unit.kind == "profile":
        rows = _profile_setting(m.name, layers, {"": None}, Setting("fp32", 64, "weight"))
        rows += activation_profile_rows(m.name, layers)
        say(1.0)
        return rows
    return simulate_design(m.name, layers, unit.design, unit.methods, unit.activations, unit.seed, say)


def activation_profile_rows(model: str, layers) -> list[dict]:
    """Per-layer bit profile of the captured input activations (int16, per-layer scale), whole model too."""
    from . import formats
    from .planes import pack
    from .profile import counts, merge, stats

    fmt = formats.get("int16")
    cs, rows = [], []
    for L in layers:
        a = getattr(L, "activation", None)
        if a is None:
            continue
        a = np.asarray(a, np.float32)
        p = pack(a.reshape(a.shape[0], a.shape[1], -1) if a.ndim >= 3 else a.reshape(-1, a.shape[-1]), fmt, 16,
                 per_channel=False)
        c = counts(p)
        cs.append(c)
        st = stats(c)
        for k in ("zero_value_frac", "zero_bit_frac", "mean_essential_bits"):
            rows.append(results.row(model, L.name, f"act_{k}", st[k], format="int16", group=16))
    if cs:
        st = stats(merge(cs))
        for k in ("zero_value_frac", "zero_bit_frac", "mean_essential_bits"):
            rows.append(results.row(model, results.WHOLE, f"act_{k}", st[k], format="int16", group=16))
    return rows


@contextlib.contextmanager
def _cache_cleared():
    try:
        yield
    finally:
        _CACHE.clear()


def _pool_unit(unit: Unit, queue):
    t0 = time.perf_counter()
    last = [0.0]

    def say(f):
        if f - last[0] >= 0.02 or f >= 1.0:
            last[0] = f
            queue.put((unit, f))

    out = run_unit(unit, say)
    return out, time.perf_counter() - t0


def run(p: Plan, *, workers: int | None = None, console=None) -> dict:
    """Run every unit and assemble the rows; returns rows, the table records, warnings and timings."""
    workers = workers or min(_default_workers(), max(1, len(p.units)))
    keep_freed_memory()
    bars = _Bars(console, p.units)
    out: dict[Unit, object] = {}
    warnings: list[str] = []
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with bars, _cache_cleared():
        if workers <= 1:
            for u in p.units:
                t1 = time.perf_counter()
                out[u] = _guard(u, lambda u=u: run_unit(u, lambda f, _u=u: bars.update(_u, f)), warnings)
                seconds[u.label] = time.perf_counter() - t1
                bars.update(u, 1.0)
        else:
            _run_pool(p, workers, bars, out, warnings, seconds)
    rows = assemble(p, out)
    return {"rows": rows, "warnings": warnings, "seconds": seconds, "wall_s": time.perf_counter() - t0,
            "workers": workers}


def _guard(u: Unit, fn, warnings):
    try:
        return fn()
    except UserError as e:
        if u.kind != "accuracy":
            raise
        warnings.append(f"accuracy not measured: {e}")
        return {}


def _run_pool(p: Plan, workers: int, bars, out, warnings, seconds):
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        q = manager.Queue()
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
            futs = {pool.submit(_pool_unit, u, q): u for u in p.units}
            pending = set(futs)
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    while True:
                        try:
                            u, f = q.get_nowait()
                        except queue_mod.Empty:
                            break
                        bars.update(u, f)
                    for fut in done:
                        u = futs[fut]
                        res = _guard(u, fut.result, warnings)
                        out[u], seconds[u.label] = (res if isinstance(res, tuple) else (res, 0.0))
                        bars.update(u, 1.0)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise


class _Bars:
    """One Rich progress bar per unit (nothing without a console)."""

    def __init__(self, console, units):
        self.console, self.units, self.p = console, units, None

    def __enter__(self):
        if self.console is not None:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn("{task.description}", style="bold"), BarColumn(), TaskProgressColumn(),
                              TimeElapsedColumn(), console=self.console, transient=False)
            self.p.__enter__()
            self.ids = {u: self.p.add_task(u.label, total=1.0) for u in self.units}
        return self

    def update(self, unit, frac):
        if self.p is not None:
            self.p.update(self.ids[unit], completed=min(1.0, frac))

    def __exit__(self, *exc):
        if self.p is not None:
            self.p.__exit__(*exc)


# ---- assembling the design rows ------------------------------------------------------------------------------
def assemble(p: Plan, out: dict) -> list[dict]:
    """Simulator and profile rows as they came, plus one block of design rows per entry (layer '*', accel =
    the design, method = the software method or ''): accuracy with its interval and sample count, the
    paired change, agreement, speed-ups, latency, energy per inference, TOPS/W, GOPS/mm2, area."""
    from . import evaluate

    rows: list[dict] = []
    recs: dict = {}
    for u in p.units:
        if u.kind == "accuracy":
            recs.update(out.get(u) or {})
        else:
            rows += out.get(u) or []
    whole = {(r["accel"], r["method"], r["metric"]): r["value"] for r in rows if r["layer"] == results.WHOLE}
    per_layer: dict = {}
    for r in rows:
        if r["layer"] != results.WHOLE and r["metric"] in ("cycles", "dram_cycles"):
            per_layer.setdefault((r["accel"], r["method"]), {}).setdefault(r["layer"], {})[r["metric"]] = r["value"]
    base = recs.get("original")
    model = p.model
    add_rows = []
    for e in p.entries:
        d = e.design
        kw = dict(method=e.method, accel=d.name, format=d.fmt, group=0)

        def add(metric, value, _kw=kw):
            add_rows.append(results.row(model, results.WHOLE, metric, value, **_kw))

        rec = recs.get(e.accuracy_key()) if base is not None else None
        if rec is not None:
            m = rec.metrics()
            key = evaluate.METRIC[rec.task]
            c = evaluate._compare(base, rec)
            add("accuracy", m[key])
            add("accuracy_ci_low", c["ci_low"])
            add("accuracy_ci_high", c["ci_high"])
            add("n_samples", rec.n)
            add("accuracy_delta", m[key] - base.metrics()[key])
            add("accuracy_delta_ci_low", c["delta_ci_low"])
            add("accuracy_delta_ci_high", c["delta_ci_high"])
            add("agreement", c["agreement"])
        lat = _latency(per_layer.get((d.name, e.method), {}))
        dense = f"dense@{d.fmt}"
        lat_d = _latency(per_layer.get((dense, ""), {}))
        if lat:
            add("latency_cycles", lat / max(p.activations, 1))  # per inference
            a, ad = whole.get((d.name, e.method, "area_mm2")), whole.get((dense, "", "area_mm2"))
            if lat_d and a and ad:
                add("speedup_latency", lat_d / lat)
                add("speedup_iso_area", (lat_d / lat) * (ad / a))
            en, macs = whole.get((d.name, e.method, "energy_pj")), whole.get((d.name, e.method, "macs"))
            if en and macs:
                ops = 2.0 * macs / max(p.activations, 1)  # per inference, a MAC = 2 ops
                add("tops_per_w", ops / en)
                if a:  # the simulated batch's ops over its latency (the batch's) at CLOCK_GHZ, per mm2
                    add("gops_per_mm2", 2.0 * macs / (lat / CLOCK_GHZ) / a)
    if base is not None:
        kw = dict(method="", accel="original", format="fp32", group=0)
        m = base.metrics()
        key = evaluate.METRIC[base.task]
        lo, hi = evaluate._compare(base, base)["ci_low"], evaluate._compare(base, base)["ci_high"]
        for k, v in (("accuracy", m[key]), ("accuracy_ci_low", lo), ("accuracy_ci_high", hi), ("n_samples", base.n)):
            add_rows.append(results.row(model, results.WHOLE, k, v, **kw))
        sat = hi >= 99.5 or (base.correct is not None and bool(base.correct.all()))
        add_rows.append(results.row(model, results.WHOLE, "saturated", float(sat), **kw))
    return rows + add_rows


def _latency(layers: dict) -> float:
    """Per-layer roofline: a layer takes max(compute cycles, DRAM cycles); the model the sum."""
    return float(sum(max(v.get("cycles", 0.0), v.get("dram_cycles", 0.0)) for v in layers.values()))


# ---- presenting ------------------------------------------------------------------------------------------------
def table_data(rows, p: Plan) -> list[dict]:
    """One record per entry (design + method) with every design metric, for the table and ``--json``."""
    idx: dict = {}
    for r in rows:
        if r["layer"] == results.WHOLE:
            idx.setdefault((r["accel"], r["method"]), {})[r["metric"]] = r["value"]
    out = []
    for e in p.entries:
        m = idx.get((e.design.name, e.method), {})
        out.append({"design": e.design.name, "accel": e.design.accel, "format": e.design.fmt, "method": e.method,
                    "numerics": e.design.numerics().describe(), "note": e.design.numerics().note,
                    **{k: m.get(k) for k in DESIGN_METRICS}})
    return out


DESIGN_METRICS = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "n_samples", "accuracy_delta",
                  "accuracy_delta_ci_low", "accuracy_delta_ci_high", "agreement", "speedup", "speedup_iso_area",
                  "speedup_latency", "cycles", "latency_cycles", "dram_cycles", "energy_pj", "energy_pj.compute",
                  "energy_pj.sram", "energy_pj.dram", "tops_per_w", "gops_per_mm2", "area_mm2")


def original_accuracy(rows) -> dict:
    return {r["metric"]: r["value"] for r in rows if r["accel"] == "original" and r["layer"] == results.WHOLE}


def rich_table(data: list[dict], p: Plan, metric_name: str, original: dict):
    from rich.table import Table

    n = original.get("n_samples")
    title = f"{p.model}: designs as they compute" + (f"; accuracy = {metric_name}" if metric_name else "")
    if original.get("accuracy") is not None:
        title += (f"; original {original['accuracy']:.2f} [{original['accuracy_ci_low']:.1f}, "
                  f"{original['accuracy_ci_high']:.1f}] on {int(n)} samples")
        if original.get("saturated"):
            title += " (saturated: small losses cannot show)"
    t = Table(title=title, show_lines=False)
    for c, j in (("design", "left"), ("method", "left"), ("format", "left"), ("accuracy\n95% CI", "right"),
                 ("change\npaired 95% CI", "right"), ("agree", "right"), ("speed-up\nsame array", "right"),
                 ("speed-up\niso-area", "right"), ("latency\nMcycles", "right"), ("energy /\ninference", "right"),
                 ("TOPS/W", "right"), ("area\nmm²", "right")):
        t.add_column(c, justify=j)
    for r in data:
        acc = "–" if r["accuracy"] is None else (f"{r['accuracy']:.2f}\n[{r['accuracy_ci_low']:.1f}, "
                                                 f"{r['accuracy_ci_high']:.1f}]")
        if r["accuracy_delta"] is None:
            ch = "–"
        else:
            d = r["accuracy_delta"]
            colour = "green" if r["accuracy_delta_ci_low"] >= 0 else "red" if r["accuracy_delta_ci_high"] < 0 else "yellow"
            ch = f"[{colour}]{d:+.2f}[/]\n[{r['accuracy_delta_ci_low']:+.1f}, {r['accuracy_delta_ci_high']:+.1f}]"
        t.add_row(r["design"], r["method"].split(":")[0] if r["method"] else "", r["format"], acc, ch,
                  _f(r["agreement"], "{:.3f}"), _f(r["speedup"], "{:.2f}×"), _f(r["speedup_iso_area"], "{:.2f}×"),
                  _f(None if r["latency_cycles"] is None else r["latency_cycles"] / 1e6, "{:.3g}"),
                  _energy(r["energy_pj"]), _f(r["tops_per_w"], "{:.3g}"), _f(r["area_mm2"], "{:.3g}"))
    return t


def _f(v, fmt):
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _energy(pj) -> str:
    if pj is None or (isinstance(pj, float) and math.isnan(pj)):
        return "–"
    for unit, scale in (("mJ", 1e9), ("µJ", 1e6), ("nJ", 1e3)):
        if pj >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def default_output(model: str) -> str:
    """compare-<model>.html, or the first compare-<model>-<n>.html that does not exist yet (never overwrites)."""
    stem = "compare-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in os.path.basename(model))
    path = f"{stem}.html"
    n = 2
    while os.path.exists(path):
        path = f"{stem}-{n}.html"
        n += 1
    return path
