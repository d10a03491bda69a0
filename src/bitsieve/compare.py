"""`bitsieve compare`: the main job. One model, every method at its defaults, every accelerator, accuracy on
the model's real task, one table and one HTML report.

Each accelerator runs on the data format its design is published for (``native_format``: fp32 for the float
designs, 16-bit fixed point for the DNNsim family, int8 for BitWave and BitVert), against the dense baseline in
that same format. Methods run at their own defaults (BitX on fp32, BitWave/BBS on int8...), so their accuracy
is what the papers' settings give; the accelerators then read the transformed weights in their own format.

The work is cut into units that share nothing but the model: the accuracy of every method, the bit profile
per format, and one unit per accelerator (the slow ones first). With several workers the units run in a
process pool whose workers load the model, capture its activations and apply the methods once each.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field

from . import results
from .errors import UserError
from .sweep import DEFAULT_ACTIVATIONS, Setting, _default_workers, _worker_init, keep_freed_memory, quick_limit

DEFAULT_MODEL = "efficientnet-lite0"
#: the data format each design is published for (others: fp32 when the design takes it, else int8)
NATIVE = {"stripes": "int16", "pragmatic": "int16", "laconic": "int16", "tactical": "int16", "bitwave": "int8",
          "bitvert": "int8"}
#: rough relative cost per accelerator, only to start the slow units first
COST_HINT = {"tactical": 10.0, "bitlet": 5.0, "laconic": 2.0, "pnpu": 1.5, "pragmatic": 1.0}


TASK_METRIC = {"imagenet": "ImageNet top-1 %", "mnist": "MNIST top-1 %", "faces": "LFW face / non-face accuracy %",
               "stsb": "STS-B Spearman x100"}


def metric_label(model: str) -> str:
    from .zoo import BUILTINS

    b = BUILTINS.get(model)
    return TASK_METRIC.get(b.task, b.task) if b else ""


def native_format(name: str) -> str:
    from .accel import ACCELERATORS

    if name in NATIVE:
        return NATIVE[name]
    return "fp32" if "fp32" in ACCELERATORS[name].formats else "int8"


@dataclass(frozen=True)
class Unit:
    """One piece of a comparison: 'accuracy', 'profile' (one format) or 'sim' (accelerators on one format)."""

    kind: str
    model: str
    methods: tuple[str, ...]
    setting: Setting | None = None
    limit: int | None = None
    activations: int = DEFAULT_ACTIVATIONS
    seed: int = 0
    with_dense: bool = False  # sim: also emit the dense rows; accuracy: the emulated forward-pass methods

    @property
    def label(self) -> str:
        if self.kind == "accuracy":
            what = ", ".join(m.split(":")[0] for m in self.methods) if self.with_dense else "methods"
            return f"accuracy, {what}" + (f" ({self.limit} samples)" if self.limit else " (full set)")
        if self.kind == "profile":
            return f"bit profile {self.setting.format}"
        return f"{', '.join(self.setting.accels)} ({self.setting.format})"

    @property
    def cost(self) -> float:
        if self.kind == "accuracy":
            return 1e9 + (1.0 if self.with_dense else 0.0)  # the emulated forward passes first
        if self.kind == "profile":
            return 0.5
        return sum(COST_HINT.get(a, 0.5) for a in self.setting.accels)


@dataclass
class Plan:
    model: str
    methods: list[str]
    accels: dict[str, str]  # accelerator -> format
    group: int
    limit: int | None
    activations: int = DEFAULT_ACTIVATIONS  # real inputs simulated per workload (the batch)
    units: list[Unit] = field(default_factory=list)

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(accelerator, format) in table order: the dense baseline of each format first."""
        fmts = list(dict.fromkeys(f for a, f in self.accels.items() if a != "dense"))
        dense = [("dense", f) for f in fmts] if "dense" in self.accels else []
        if "dense" in self.accels and not fmts:
            dense = [("dense", self.accels["dense"])]
        return dense + [(a, f) for a, f in self.accels.items() if a != "dense"]


def plan(model: str = DEFAULT_MODEL, *, methods: list[str] | None = None, accels: list[str] | None = None,
         fmt: str = "auto", group: int = 64, limit: int | None | str = "quick", accuracy: bool = True,
         activations: int = DEFAULT_ACTIVATIONS, seed: int = 0) -> Plan:
    """Check every choice and cut the comparison into units (nothing runs yet)."""
    from . import formats
    from . import methods as methods_mod
    from .accel import ACCELERATORS
    from .sweep import applicable_accels, resolve
    from .zoo import BUILTINS

    if not 1 <= group <= 64:
        raise UserError(f"--group must be 1..64, got {group}")
    specs = list(methods) if methods is not None else list(methods_mod.REGISTRY)
    for s in specs:
        resolve(s, None, None)  # unknown methods and bad parameters fail here, before any work
    names = list(accels) if accels is not None else list(ACCELERATORS)
    names = list(dict.fromkeys(["dense", *names]))  # the baseline of every speed-up is always shown
    for a in names:
        if a not in ACCELERATORS:
            raise UserError(f"unknown accelerator {a!r} (known: {', '.join(ACCELERATORS)})")
    chosen: dict[str, str] = {}
    for a in names:
        if a == "dense" and fmt == "auto":
            chosen[a] = "fp32"  # dense runs on every format in use (see Plan.columns)
        elif fmt == "auto":
            chosen[a] = native_format(a)
        else:
            f = formats.get(fmt)
            if not applicable_accels([a], f):
                raise UserError(f"{a} does not take {f.name} data (use --format auto to run each design on its "
                                "own format, or leave it out with --accel)")
            chosen[a] = f.name
    builtin = BUILTINS.get(model)
    if limit == "quick":
        limit = quick_limit(builtin.task) if builtin else 0
    if builtin is None and accuracy and limit != 0:
        accuracy = False  # a weights file has no task to measure accuracy on
    if not accuracy:
        limit = 0
    p = Plan(model, specs, chosen, group, limit, activations)
    fmts = list(dict.fromkeys(chosen.values())) or [("fp32" if fmt == "auto" else formats.get(fmt).name)]
    if limit != 0 and builtin is not None:
        # emulated forward passes (Bitlet numerics) are much slower than weight rewrites: their own unit, so
        # that two workers share the accuracy work (it re-measures the original, ignored, as a reference)
        fwd = [x for x in specs if any(st.method.kind != "weights" for st in resolve(x, None, None))]
        rest = [x for x in specs if x not in fwd]
        p.units.append(Unit("accuracy", model, tuple(rest), limit=limit, seed=seed))
        if fwd:
            p.units.append(Unit("accuracy", model, tuple(fwd), limit=limit, seed=seed, with_dense=True))
    for f in fmts:
        s = Setting(f, group, "weight", ())
        p.units.append(Unit("profile", model, tuple(specs), s, activations=activations, seed=seed))
    first = {f: True for f in fmts}
    for a, f in chosen.items():
        if a == "dense":
            continue
        p.units.append(Unit("sim", model, tuple(specs), Setting(f, group, "weight", (a,)), activations=activations,
                            seed=seed, with_dense=first[f]))
        first[f] = False
    for f, need in first.items():  # a format with only dense asked for
        if need and "dense" in chosen:
            p.units.append(Unit("sim", model, tuple(specs), Setting(f, group, "weight", ("dense",)),
                                activations=activations, seed=seed, with_dense=True))
    p.units.sort(key=lambda u: -u.cost)
    return p


# ---- running units (in this process or in pool workers) ------------------------------------------------------
_CACHE: dict = {}


def _prepared(unit: Unit):
    """The model (activations captured) and every method's weights, loaded once per process."""
    from . import model as model_mod
    from .sweep import _apply, resolve

    key = (unit.model, unit.activations)
    if key not in _CACHE:
        _CACHE.clear()
        m = model_mod.load(unit.model, activations=unit.activations)
        layers = [L for L in m.layers if L.kind in ("conv", "linear")]
        if not layers:
            raise UserError(f"{unit.model} has no conv or linear layers")
        _CACHE[key] = {"model": m, "layers": layers, "weights": {"": None}}
    c = _CACHE[key]
    for spec in unit.methods:
        if spec not in c["weights"]:
            steps = resolve(spec, None, None)
            c["weights"][spec] = _apply(c["layers"], steps) if all(
                x.method.kind == "weights" for x in steps) else None
    return c["model"], c["layers"], {k: v for k, v in c["weights"].items() if k == "" or k in unit.methods}


def run_unit(unit: Unit, progress=None) -> list[dict]:
    """Rows of one unit. ``progress(fraction)`` hears how far it is."""
    from .sweep import _profile_setting, _simulate_setting, accuracy_rows, resolve

    say = progress or (lambda f: None)
    if unit.kind == "accuracy":
        steps = {s: resolve(s, None, None) for s in unit.methods}
        return accuracy_rows(unit.model, steps, unit.limit, [], say)
    m, layers, weights = _prepared(unit)
    if unit.kind == "profile":
        say(0.5)
        rows = _profile_setting(m.name, layers, weights, unit.setting)
        say(1.0)
        return rows
    weights = {k: v for k, v in weights.items() if k == "" or v is not None}  # bitlet: accuracy only
    rows = _simulate_setting(m.name, layers, weights, unit.setting, unit.seed, say)
    if not unit.with_dense:
        rows = [r for r in rows if r["accel"] != "dense"]
    return rows


@contextlib.contextmanager
def _cache_cleared():
    """Units run in this process keep the model in _CACHE; let it go when the comparison ends."""
    try:
        yield
    finally:
        _CACHE.clear()


def _pool_unit(unit: Unit, queue) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    last = [0.0]

    def say(f):
        if f - last[0] >= 0.02 or f >= 1.0:
            last[0] = f
            queue.put((unit, f))

    rows = run_unit(unit, say)
    return rows, time.perf_counter() - t0


def run(p: Plan, *, workers: int | None = None, console=None) -> dict:
    """Run every unit; returns rows (accuracy rows copied into each format's section), warnings, timings."""
    workers = workers or min(_default_workers(), max(1, len(p.units)))
    keep_freed_memory()
    bars = _Bars(console, p.units)
    out: dict[Unit, list] = {}
    warnings: list[str] = []
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with bars, _cache_cleared():
        if workers <= 1:
            for u in p.units:
                t1 = time.perf_counter()
                try:
                    out[u] = run_unit(u, lambda f, _u=u: bars.update(_u, f))
                except UserError as e:
                    if u.kind != "accuracy":
                        raise
                    warnings.append(f"accuracy not measured: {e}")
                    out[u] = []
                seconds[u.label] = time.perf_counter() - t1
                bars.update(u, 1.0)
        else:
            _run_pool(p, workers, bars, out, warnings, seconds)
    rows: list[dict] = []
    acc = [r for u in p.units if u.kind == "accuracy" for r in out.get(u, [])
           if not (u.with_dense and r["method"] == "")]  # the original is measured once in the main unit
    fmts = list(dict.fromkeys(f for _, f in p.columns)) or list(
        dict.fromkeys(u.setting.format for u in p.units if u.setting is not None))
    order = {a: i for i, a in enumerate(["dense", *p.accels])}
    for f in fmts:  # per format: accuracy (the same in every section of the report), profile, accelerators
        rows += [{**r, "format": f, "group": p.group} for r in acc]
        units = [u for u in p.units if u.setting is not None and u.setting.format == f]
        units.sort(key=lambda u: (u.kind != "profile", min((order.get(a, 99) for a in u.setting.accels),
                                                             default=-1) if not u.with_dense else -1))
        for u in units:
            rows += out.get(u, [])
    return {"rows": rows, "warnings": warnings, "seconds": seconds, "wall_s": time.perf_counter() - t0,
            "workers": workers}


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
                        try:
                            out[u], seconds[u.label] = fut.result()
                        except UserError as e:
                            if u.kind != "accuracy":
                                raise
                            warnings.append(f"accuracy not measured: {e}")
                            out[u] = []
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


# ---- presenting ------------------------------------------------------------------------------------------------
def table_data(rows, p: Plan) -> dict:
    """{method: {"accuracy", "delta", accel: {"speedup", "energy_pj", "format"}}} for the table and --json;
    ``energy_pj`` is per inference: the simulated batch's energy over its ``p.activations`` inputs."""
    idx = {}
    for r in rows:
        if r["layer"] == results.WHOLE:
            idx[(r["method"], r["accel"], r["format"], r["metric"])] = r["value"]
    f0 = p.columns[0][1] if p.columns else "fp32"
    out = {}
    for m in ["", *p.methods]:
        rec = {"accuracy": idx.get((m, "", f0, "accuracy")), "accuracy_delta": idx.get((m, "", f0, "accuracy_delta")),
               "accels": {}}
        for a, f in p.columns:
            sp = idx.get((m, a, f, "speedup"))
            if sp is None and m:  # a forward-pass emulation (bitlet): accuracy only
                continue
            rec["accels"][f"{a}@{f}" if a == "dense" else a] = {
                "accel": a, "format": f, "speedup": sp, "energy_pj": _per(idx.get((m, a, f, "energy_pj")), p.activations),
                "cycles": idx.get((m, a, f, "cycles"))}
        out[m] = rec
    return out


def _per(value, n: int):
    return None if value is None else value / n


def rich_table(data: dict, p: Plan, metric_name: str):
    from rich.table import Table

    t = Table(title=f"{p.model}: speed-up over dense (same format) and energy per inference, by method and "
                    f"accelerator" + (f"; accuracy = {metric_name}" if metric_name else ""), show_lines=True)
    t.add_column("method", style="bold")
    t.add_column("accuracy\n(change)", justify="right")
    keys = []
    for a, f in p.columns:
        t.add_column(f"{a}\n{f}", justify="right")
        keys.append(f"{a}@{f}" if a == "dense" else a)
    for m, rec in data.items():
        acc, d = rec["accuracy"], rec["accuracy_delta"]
        if acc is None:
            acc_s = "–"
        elif not m:
            acc_s = f"{acc:.2f}"
        else:
            colour = "green" if d >= 0 else "red" if d < -1 else "yellow"
            acc_s = f"{acc:.2f}\n[{colour}]{d:+.2f}[/]"
        cells = []
        for a in keys:
            c = rec["accels"].get(a)
            if c is None or c["speedup"] is None:
                cells.append("[dim]–[/]")
                continue
            e = c["energy_pj"]
            cells.append(f"{c['speedup']:.2f}×\n[dim]{_energy(e)}[/]")
        t.add_row(m.split(":")[0] if m else "original", acc_s, *cells)
    return t


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
