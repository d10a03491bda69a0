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

import math
import os
import time
from dataclasses import dataclass, field

from . import designs, results
from .errors import UserError
from .study import engine, pipeline
from .study.progress import UnitBars
from .study.sweepfile import DEFAULT_ACTIVATIONS, quick_limit

DEFAULT_MODEL = "efficientnet-lite0"
#: software methods shown by default: the ones no design applies by itself, each on the designs it can change
DEFAULT_METHODS = ("bitwave", "bbs")
CURVES = ("weights", "all", "none")  # knob curves of the designs whose numerics rewrite weights / of all / none
#: rough relative cost per unit, only to start the slow ones first
COST_HINT = {"tactical": 10.0, "bitlet": 5.0, "laconic": 2.0, "pnpu": 1.5, "pragmatic": 1.0}
TASK_METRIC = {"imagenet": "ImageNet top-1 %", "mnist": "MNIST top-1 %", "faces": "LFW face / non-face accuracy %",
               "stsb": "STS-B Spearman x100"}
SENSITIVITY_LAYERS = 4  # per-layer sensitivity: half most-MAC layers, half most-pruned
SENSITIVITY_SAMPLES = 500  # ... on at most this many samples (a subset of the accuracy samples)
CLOCK_GHZ = pipeline.CLOCK_GHZ


def metric_label(model: str) -> str:
    from .zoo import BUILTINS

    b = BUILTINS.get(model)
    return TASK_METRIC.get(b.task, b.task) if b else ""


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
    layers: int = 0  # sensitivity: how many layers (pipeline.sensitivity_records)
    inputs: str | None = None  # a user model's data to run it on (bitsieve.capture)
    shapes: tuple = (None, None)  # a weights file's assumed (tokens, input shape): bitsieve.model.load

    @property
    def label(self) -> str:
        if self.kind == "sensitivity":
            return f"per-layer sensitivity of {self.design.name}, {self.layers} layers ({self.limit} samples)"
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
        if self.kind == "sensitivity":
            return 1e9 + self.layers * (self.limit or 1000) / 1000
        return COST_HINT.get(self.design.accel, 0.5) * (1 + len(self.methods))


@dataclass
class Plan:
    model: str
    entries: list[designs.Entry]
    methods: list[str]
    limit: int | None
    activations: int = DEFAULT_ACTIVATIONS  # real inputs simulated per workload (the batch)
    group: int = 64
    skipped: list[str] = field(default_factory=list)  # designs left out (they read activations a file lacks)
    units: list[Unit] = field(default_factory=list)
    inputs: str | None = None  # a user model's data (--inputs)
    shapes: tuple = (None, None)  # a weights file's assumed (--tokens, --input-shape)
    notes: list[str] = field(default_factory=list)  # what loading a user model assumed or did

    @property
    def designs(self) -> list[designs.Design]:
        return list(dict.fromkeys(e.design for e in self.entries))


def plan(model: str = DEFAULT_MODEL, *, methods: list[str] | None = None, accels: list[str] | None = None,
         fmt: str = "auto", group: int = 64, limit: int | None | str = "quick", accuracy: bool = True,
         activations: int = DEFAULT_ACTIVATIONS, seed: int = 0, sets: dict | None = None, curves: str = "weights",
         workers: int = 2, sensitivity: int = SENSITIVITY_LAYERS, inputs: str | None = None,
         tokens: int | None = None, input_shape: str | None = None) -> Plan:
    """Check every choice and cut the comparison into units (nothing runs yet). ``inputs``: the data a user model
    (an .onnx file, a Hugging Face folder) runs on, so the designs that read activations are compared too (it
    runs once here, which checks the model and its inputs and gives the batch). ``tokens`` / ``input_shape``: the
    GEMM and conv sizes a weights file lacks (``--tokens 1``: decoding, where latency is the weights' DRAM time)."""
    from . import methods as methods_mod
    from .zoo import BUILTINS

    if not 1 <= group <= 64:
        raise UserError(f"--group must be 1..64, got {group}")
    specs = list(methods) if methods is not None else list(DEFAULT_METHODS)
    for s in specs:
        methods_mod.parse_specs(s.split("+"))  # unknown methods and bad parameters fail here
    base = designs.defaults(accels, fmt=fmt, sets=sets)
    skipped: list[str] = []
    notes: list[str] = []
    if model in BUILTINS and inputs is not None:
        raise UserError(f"{model} runs on its own data: --inputs is for user models (.onnx, Hugging Face folders)")
    if model not in BUILTINS and inputs is not None:  # a user model run on the user's data: no labels, no accuracy
        from . import model as model_mod

        m = model_mod.load(model, inputs=inputs)
        notes = m.notes
        activations = next((int(L.activation.shape[0]) for L in m.layers if L.activation is not None), 1)
    elif model not in BUILTINS:  # a weights file: no architecture to run, so no activations and no accuracy
        from . import model as model_mod

        notes = model_mod.load(model, tokens=tokens, input_shape=input_shape).notes  # a bad file fails here
        activations = 0
        keep = [d for d in base if not d.reads_activations()]
        skipped = [d.name for d in base if d not in keep]
        if accels is not None and not [d for d in keep if d.accel != "dense"]:
            raise UserError(f"{', '.join(skipped)} read the input activations, which a weights file cannot give "
                            "(choose weight-only designs such as bitx, bitxpro, bitwave, bitvert)")
        base = keep
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
        if not shown and methods is not None:  # a default method with nothing to run on is simply not shown
            raise UserError(f"method {spec} runs on none of the designs compared (it needs a design that reads "
                            "weight bits in its format)")
    if curves not in CURVES:
        raise UserError(f"--curves must be one of {', '.join(CURVES)}, got {curves!r}")
    for d in base:  # an emulated forward pass (Bitlet) costs ~3x a weight rewrite: its curve only with 'all'
        if curves == "all" or (curves == "weights" and not d.numerics().forward):
            entries += [designs.Entry(k, knob=True) for k in designs.knob_designs(d)]
    builtin = BUILTINS.get(model)
    if limit == "quick":
        limit = quick_limit(builtin.task) if builtin else 0
    if builtin is None or not accuracy:
        limit = 0
    p = Plan(model, entries, specs, limit, activations, group, skipped=skipped, inputs=inputs,
             shapes=(tokens, input_shape), notes=notes)
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
        n = max(1, min(workers + 1, len(rest)))  # one chunk more than workers: the longest-first order balances
        for i in range(n):
            chunk = tuple(rest[i::n])
            if chunk:
                p.units.append(Unit("accuracy", model, numerics=chunk, limit=limit, seed=seed))
        target = next((d for d in base if d.numerics().weights), None)
        if sensitivity and target is not None:
            n = SENSITIVITY_SAMPLES if limit is None else min(limit, SENSITIVITY_SAMPLES)
            p.units.append(Unit("sensitivity", model, design=target, limit=n, seed=seed, layers=sensitivity))
    p.units.append(Unit("profile", model, activations=activations, seed=seed, inputs=inputs, shapes=p.shapes))
    for d in p.designs:
        ms = tuple(e.method for e in entries if e.design == d and e.method)
        p.units.append(Unit("sim", model, design=d, methods=ms, activations=activations, seed=seed, inputs=inputs,
                            shapes=p.shapes))
    p.units.sort(key=lambda u: -u.cost)
    return p


# ---- running units (the study engine: this process, a process pool or Ray) ------------------------------------
_CACHE: dict = {}


def _prepared(unit: Unit):
    """The model with its activations captured, loaded once per process."""
    from . import model as model_mod

    key = (unit.model, unit.activations, unit.inputs, unit.shapes)
    if key not in _CACHE:
        _CACHE.clear()
        tokens, input_shape = unit.shapes
        m = model_mod.load(unit.model, inputs=unit.inputs) if unit.inputs is not None else \
            model_mod.load(unit.model, activations=unit.activations, tokens=tokens, input_shape=input_shape)
        layers = [L for L in m.layers if L.kind in ("conv", "linear")]
        if not layers:
            raise UserError(f"{unit.model} has no conv or linear layers")
        _CACHE[key] = (m, layers)
    return _CACHE[key]


def run_unit(unit: Unit, say=None):
    """What one unit produces: accuracy records, or rows. ``say(fraction)`` hears how far it is."""
    say = say or (lambda f: None)
    if unit.kind == "accuracy":
        return pipeline.accuracy_records(unit.model, unit.numerics, unit.limit, say)
    if unit.kind == "sensitivity":
        return pipeline.sensitivity_records(unit.model, unit.design, unit.layers, unit.limit, say)
    m, layers = _prepared(unit)
    if unit.kind == "profile":
        rows = pipeline.profile_setting(m.name, layers, {"": None}, pipeline.Setting("fp32", 64, "weight"))
        rows += pipeline.activation_profile_rows(m.name, layers)
        say(1.0)
        return rows
    return pipeline.simulate_design(m.name, layers, unit.design, unit.methods, unit.activations, unit.seed, say)


def run(p: Plan, *, workers: int | None = None, console=None, backend: str = "local",
        address: str | None = None) -> dict:
    """Run every unit on the study engine and assemble the rows; returns rows, warnings and timings."""
    workers = workers or min(engine.default_workers(), max(1, len(p.units)))
    out: dict[int, object] = {}
    warnings: list[str] = []
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        with UnitBars(console, p.units) as bars:
            for d in engine.execute(p.units, run_unit, backend=backend, workers=workers, address=address,
                                    on_progress=bars.update):
                if d.error:
                    if d.unit.kind != "accuracy":
                        raise UserError(d.error)
                    warnings.append(f"accuracy not measured: {d.error}")
                out[id(d.unit)] = d.result
                seconds[d.unit.label] = d.wall_s
                bars.update(d.unit, 1.0)
    finally:
        _CACHE.clear()
    rows = assemble(p, {u: out.get(id(u)) for u in p.units})
    from .accel import published

    accels = {d.accel for d in p.designs}
    pub = [r for r in published.published_comparison() if r["design"] in accels]
    return {"rows": rows + published_rows(p.model, pub), "warnings": warnings, "seconds": seconds,
            "wall_s": time.perf_counter() - t0, "workers": workers, "published": pub}


def published_rows(model: str, pub: list[dict]) -> list[dict]:
    """The seed papers' power / area / efficiency next to our model of the design configured as published
    (``accel.published``): rows with method 'published', metrics ``<quantity>.paper`` / ``.model`` / ``.ratio``."""
    out = []
    for r in pub:
        for k in ("paper", "model", "ratio"):
            out.append(results.row(model, results.WHOLE, f"{r['quantity']}.{k}", r[k], method="published",
                                   accel=r["design"], format=r["format"]))
    return out


# ---- assembling the design rows ------------------------------------------------------------------------------
def assemble(p: Plan, out: dict) -> list[dict]:
    """Simulator and profile rows as they came, plus one block of design rows per entry (layer '*', accel =
    the design, method = the software method or ''): accuracy with its interval and sample count, the
    paired change, agreement, speed-ups, latency, energy per inference, TOPS/W, GOPS/mm2, area."""
    rows: list[dict] = []
    recs: dict = {}
    sens = None
    for u in p.units:
        if u.kind == "accuracy":
            recs.update(out.get(u) or {})
        elif u.kind == "sensitivity":
            sens = (u, out.get(u) or {})
        else:
            rows += out.get(u) or []
    whole, per_layer = pipeline.sim_index(rows)
    base = recs.get("original")
    model = p.model
    add_rows = []
    for e in p.entries:
        d = e.design
        rec = recs.get(e.accuracy_key()) if base is not None else None
        metrics = {**(pipeline.accuracy_metrics(base, rec) if rec is not None else {}),
                   **pipeline.performance_metrics(whole, per_layer, d.name, e.method, f"dense@{d.fmt}", p.activations)}
        add_rows += [results.row(model, results.WHOLE, k, v, method=e.method, accel=d.name, format=d.fmt, group=0)
                     for k, v in metrics.items()]
    if sens is not None and sens[1].get("original") is not None:
        u, rec = sens
        layers = per_layer.get((u.design.name, ""), {})
        kw = dict(method="", accel=u.design.name, format=u.design.fmt, group=0)
        for name, r in rec.items():
            if name == "original":
                continue
            m = pipeline.accuracy_metrics(rec["original"], r)
            for metric, v in (("sensitivity_delta", m["accuracy_delta"]),
                              ("sensitivity_delta_ci_low", m["accuracy_delta_ci_low"]),
                              ("sensitivity_delta_ci_high", m["accuracy_delta_ci_high"]), ("sensitivity_samples", r.n)):
                add_rows.append(results.row(model, name, metric, v, **kw))
            lr = layers.get(name, {})
            if "dense_cycles" in lr and "cycles" in lr:
                add_rows.append(results.row(model, name, "cycles_saved", lr["dense_cycles"] - lr["cycles"], **kw))
    if base is not None:
        add_rows += [results.row(model, results.WHOLE, k, v, accel="original", format="fp32", group=0)
                     for k, v in pipeline.original_metrics(base).items()]
    return add_rows + rows  # design rows first: readers take the first design of an accelerator as its default


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
                    "knob": e.knob,
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
    from rich.markup import escape
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
        t.add_row(escape(r["design"]), escape(r["method"].split(":")[0]) if r["method"] else "", r["format"], acc, ch,
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


def published_table(pub: list[dict]):
    from rich.table import Table

    t = Table(title="Published power, area and efficiency against our model of each design configured as "
                    "published (tolerance: power 2x, area 1.5x)")
    for c in ("design", "format", "quantity", "paper", "model", "ratio", "within", "why not / note"):
        t.add_column(c, justify="right" if c in ("paper", "model", "ratio") else "left", overflow="fold")
    for r in pub:
        t.add_row(r["design"], r["format"], r["quantity"], f"{r['paper']:.4g}", f"{r['model']:.4g}",
                  f"{r['ratio']:.2f}", "yes" if r["within"] else "[red]no[/]", r.get("reason") or "")
    return t


def default_output(model: str) -> str:
    """compare-<model>.html, or the first compare-<model>-<n>.html that does not exist yet (never overwrites)."""
    stem = "compare-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in os.path.basename(model))
    path = f"{stem}.html"
    n = 2
    while os.path.exists(path):
        path = f"{stem}-{n}.html"
        n += 1
    return path
