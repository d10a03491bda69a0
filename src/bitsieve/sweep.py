"""Design-space sweeps: a TOML grid of models x formats x group sizes x methods x accelerators, run by a local
process pool or by Ray, written to a resumable SQLite store (see results.py).

A sweep file::

    models = ["mtcnn-rnet", "lenet-mnist"]      # built-in names or model files
    formats = ["fp32", "int8"]                  # default ["fp32"]
    groups = [64, 16]                           # default [64]
    align = "weight"                            # float alignment: weight (default) or none
    accelerators = ["dense", "stripes", "bitx"] # default: every accelerator
    eval_limit = 64                             # samples per accuracy measurement: N, 0 (none), "full" or
                                                # "quick" (default: QUICK_LIMIT of the model's task)
    activations = 2                             # real samples whose activations are captured

    [methods.bitx]                              # one table per method; a list is a grid axis
    keep = [3, 4, 5, 6, 8]
    [methods.truncate]
    keep = 6
    [methods.bitwave]                           # an empty table: the method at its defaults

Work is shared where it can be: a task is one (model, format, group). It loads the model and captures its
activations once, decomposes every tensor once, then loops over the methods and the accelerators. A task's rows
go to the store together with its 'done' mark, so a killed sweep resumes where it stopped.

Everything is checked before any work starts; a bad entry is a UserError naming the line of the file.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import results
from .errors import UserError

#: the quick evaluation subset of each task (samples): compare's default and a sweep's without eval_limit
QUICK_LIMIT = {"imagenet": 50, "mnist": 2000, "faces": 200, "stsb": 500}
TOP_KEYS = ("name", "models", "formats", "groups", "align", "accelerators", "accels", "methods", "eval_limit",
            "activations", "seed")
DEFAULT_ACTIVATIONS = 2


# ---- one unit of work --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One (model, format, group): everything that shares a loaded model and its decomposed tensors."""

    model: str
    format: str = "fp32"
    group: int = 64
    align: str = "weight"
    methods: tuple[str, ...] = ()  # canonical method specs; the original model is always measured too
    accels: tuple[str, ...] = ()
    eval_limit: int | None = 0  # None: the whole evaluation set; 0: no accuracy
    activations: int = DEFAULT_ACTIVATIONS
    seed: int = 0

    @property
    def key(self) -> str:
        """Unique and stable: readable fields plus a hash of the whole spec."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.model}|{self.format}|g{self.group:02d}|{self.align}|{h}"

    def spec(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# ---- sweep files ------------------------------------------------------------------------------------------
@dataclass
class Sweep:
    path: str
    text: str
    models: list[str]
    formats: list[str]
    groups: list[int]
    align: str
    accels: list[str]
    methods: list[str]  # expanded grid, canonical specs
    eval_limit: int | str | None
    activations: int
    seed: int
    name: str = ""
    tasks: list[Task] = field(default_factory=list)

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(t.key for t in self.tasks).encode()).hexdigest()


class _Lines:
    """Finds the line of a TOML entry by searching the text for its key (tomllib keeps no positions)."""

    def __init__(self, path: str, text: str):
        self.path, self.lines = path, text.splitlines()

    def find(self, *patterns: str, start: int = 1) -> int | None:
        for pat in patterns:
            rx = re.compile(pat)
            for i in range(max(start, 1) - 1, len(self.lines)):
                if rx.search(_strip_comment(self.lines[i])):
                    return i + 1
        return None

    def key(self, k: str, start: int = 1) -> int | None:
        q = re.escape(k)
        return self.find(rf'^\s*(["\']?){q}\1\s*=', rf'[.{{,\s]["\']?{q}["\']?\s*=', start=start)

    def section(self, table: str, name: str) -> int | None:
        q, t = re.escape(name), re.escape(table)
        return self.find(rf'^\s*\[\s*{t}\s*\.\s*(["\']?){q}\1\s*\]', rf'^\s*{t}\s*\.\s*["\']?{q}["\']?\s*[.=]',
                         rf'^\s*(["\']?){q}\1\s*[.=]', rf'\b{q}\b')

    def value(self, k: str, v, start: int = 1) -> int | None:
        """The line of value ``v`` of key ``k`` (lists may span lines)."""
        at = self.key(k, start) or start
        if isinstance(v, str):
            hit = self.find(rf'["\']{re.escape(v)}["\']', start=at)
        else:
            hit = self.find(rf'(?<![\w.]){re.escape(json.dumps(v))}(?![\w.])', start=at)
        return hit or at

    def error(self, line: int | None, msg: str) -> UserError:
        return UserError(f"{self.path}:{line}: {msg}" if line else f"{self.path}: {msg}")


def _strip_comment(line: str) -> str:
    out, q = [], None
    for ch in line:
        if q:
            if ch == q:
                q = None
        elif ch in "\"'":
            q = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out)


def _as_list(v):
    return list(v) if isinstance(v, list) else [v]


def quick_limit(task: str) -> int:
    return QUICK_LIMIT.get(task, 100)


def _builtin(name: str):
    from .zoo import BUILTINS

    return BUILTINS.get(name)


def known_models() -> list[str]:
    from .zoo import BUILTINS

    return list(BUILTINS)


def _check_model(name: str, base: Path) -> str:
    """A built-in name, or a model file (resolved against the sweep file's folder)."""
    if name in known_models():
        return name
    p = Path(name)
    if p.suffix.lower() in (".safetensors", ".pt", ".pth", ".onnx"):
        q = p if p.is_absolute() else base / p
        if q.is_file():
            return str(q.resolve())
        raise UserError(f"model file {name} not found")
    raise UserError(f"unknown model {name!r} (built-ins: {', '.join(known_models())}; or a .safetensors, .pt, "
                    ".pth or .onnx file)")


def _format_param_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def method_spec(name: str, params: dict) -> str:
    """``bitx``, {keep: 5} -> 'bitx:keep=5' (then canonicalised by the methods registry when it is there)."""
    return name if not params else name + ":" + ",".join(f"{k}={_format_param_value(v)}" for k, v in params.items())


def check_method(spec: str) -> str:
    """Validate a method spec against the registry (name, parameters, values); returns its canonical text."""
    from . import methods

    return "+".join(methods.parse_spec(part).spec() for part in spec.split("+"))


def parse(path, text: str | None = None) -> Sweep:
    """Read, expand and validate a sweep file. Every error is a UserError naming the file and line."""
    p = Path(path)
    if text is None:
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise UserError(f"sweep file {p} not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read sweep file {p}: {e}") from None
    L = _Lines(str(p), text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        line = int(m.group(1)) if m else len(text.rstrip().splitlines()) if "end of document" in str(e) else None
        raise L.error(line, f"not valid TOML: {e}") from None

    for k in doc:
        if k not in TOP_KEYS:
            raise L.error(L.key(k) or L.section("", k), f"unknown key {k!r} (known: {', '.join(TOP_KEYS)})")

    def lst(k, typ, default, empty_ok=False):
        v = doc.get(k, default)
        items = _as_list(v)
        if not items and not empty_ok:
            raise L.error(L.key(k), f"{k} must not be empty")
        for x in items:
            if not isinstance(x, typ) or isinstance(x, bool):
                raise L.error(L.value(k, x), f"{k}: {x!r} is not a {typ.__name__}")
        return items

    base = p.parent
    models = []
    if "models" not in doc:
        raise L.error(None, "no models: add e.g. models = [\"mtcnn-rnet\"]")
    for m in lst("models", str, None):
        try:
            models.append(_check_model(m, base))
        except UserError as e:
            raise L.error(L.value("models", m), str(e)) from None

    from . import formats as fmod

    fmts = []
    for f in lst("formats", str, ["fp32"]):
        try:
            fmts.append(fmod.get(f).name)
        except UserError as e:
            raise L.error(L.value("formats", f), str(e)) from None
    groups = lst("groups", int, [64])
    for g in groups:
        if not 1 <= g <= 64:
            raise L.error(L.value("groups", g), f"group size must be 1..64, got {g}")
    align = doc.get("align", "weight")
    if align not in ("weight", "none"):
        raise L.error(L.key("align"), f"align must be 'weight' or 'none', got {align!r}")

    from .accel import ACCELERATORS

    akey = "accelerators" if "accelerators" in doc else "accels"
    if akey in doc:
        accels = lst(akey, str, None, empty_ok=True)  # [] = profile and accuracy only
        for a in accels:
            if a not in ACCELERATORS:
                raise L.error(L.value(akey, a), f"unknown accelerator {a!r} (known: {', '.join(ACCELERATORS)})")
    else:
        accels = list(ACCELERATORS)
    accels = list(dict.fromkeys(accels))

    ev = doc.get("eval_limit", "quick")
    if ev == "full":
        eval_limit = None
    elif ev == "quick" or (isinstance(ev, int) and not isinstance(ev, bool) and ev >= 0):
        eval_limit = ev
    else:
        raise L.error(L.key("eval_limit"), f"eval_limit must be a whole number >= 0, \"quick\" or \"full\", "
                                           f"got {ev!r}")
    limits = {}
    for m in models:
        b = _builtin(m)
        if b is None:
            if eval_limit not in (0, "quick") and "eval_limit" in doc:
                raise L.error(L.value("models", m), f"{m}: accuracy needs a built-in model (a weights file has no "
                              "architecture to run and no task); set eval_limit = 0")
            limits[m] = 0
        else:
            limits[m] = quick_limit(b.task) if eval_limit == "quick" else eval_limit
    acts = doc.get("activations", DEFAULT_ACTIVATIONS)
    if not isinstance(acts, int) or isinstance(acts, bool) or acts < 1:
        raise L.error(L.key("activations"), f"activations must be a whole number >= 1, got {acts!r}")
    seed = doc.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise L.error(L.key("seed"), f"seed must be a whole number, got {seed!r}")
    name = doc.get("name", p.stem)
    if not isinstance(name, str):
        raise L.error(L.key("name"), "name must be a string")

    if akey not in doc and accels:  # by default: every accelerator that takes one of the sweep's formats
        usable = set()
        for f in fmts:
            usable |= set(applicable_accels(accels, fmod.get(f)))
        accels = [a for a in accels if a in usable]
    methods = expand_methods(doc.get("methods", {}), L)
    sw = Sweep(str(p), text, models, fmts, groups, align, accels, methods, eval_limit, acts, seed, name)
    sw.tasks = [Task(m, f, g, align, tuple(methods), tuple(accels), limits[m], acts, seed)
                for m in models for f in fmts for g in groups]
    _check_combinations(sw, L)
    return sw


def expand_methods(table, L: _Lines) -> list[str]:
    """[methods.NAME] tables -> the list of method specs of the grid (file order; lists are grid axes)."""
    from . import methods

    if not isinstance(table, dict):
        raise L.error(L.key("methods"), "methods must be tables: [methods.bitx] keep = [3, 4, 5]")
    specs = []
    for name, params in table.items():
        line = L.section("methods", name)
        if name not in methods.REGISTRY:
            raise L.error(line, f"unknown method {name!r} (known: {', '.join(methods.REGISTRY)})")
        if not isinstance(params, dict):
            raise L.error(line, f"methods.{name} must be a table of parameters, e.g. [methods.{name}] keep = [3, 4]")
        known = [p.name for p in methods.REGISTRY[name].params]
        for k, v in params.items():
            if k not in known:
                raise L.error(L.key(k, line or 1),
                              f"method {name!r} has no parameter {k!r} (its parameters: {', '.join(known) or 'none'})")
            if isinstance(v, list) and not v:
                raise L.error(L.key(k, line or 1), f"methods.{name}.{k}: an empty list leaves nothing to sweep")
            for x in _as_list(v):
                if isinstance(x, (dict, list)):
                    raise L.error(L.key(k, line or 1), f"methods.{name}.{k}: {x!r} is not a plain value")
        axes = [[(k, x) for x in _as_list(v)] for k, v in params.items()]
        for combo in itertools.product(*axes):
            spec = method_spec(name, dict(combo))
            try:
                check_method(spec)
            except UserError as e:
                bad = [k for k, _ in combo if re.search(rf"\b{re.escape(k)}\b", str(e))]
                k0 = bad[0] if bad else None
                at = (L.value(k0, dict(combo)[k0], line or 1) if k0 else None) or line
                raise L.error(at, f"methods.{name}: {e}") from None
            specs.append(spec)
    return list(dict.fromkeys(specs))


def _check_combinations(sw: Sweep, L: _Lines):
    """An accelerator none of the sweep's formats suits would produce nothing: say so, with its line."""
    if not sw.accels:
        return
    from . import formats

    akey = "accelerators" if L.key("accelerators") else "accels"
    usable = set()
    for f in sw.formats:
        usable |= set(applicable_accels(sw.accels, formats.get(f)))
    for a in sw.accels:
        if a not in usable:
            from .accel import ACCELERATORS

            kinds = ", ".join("int<b>" if k == "int" else k for k in ACCELERATORS[a].formats)
            raise L.error(L.value(akey, a) if L.key(akey) else None,
                          f"accelerator {a!r} takes none of the sweep's formats ({', '.join(sw.formats)}); "
                          f"it reads {kinds}")


# ---- running a task ------------------------------------------------------------------------------------------
def run_task(task: Task, progress: Callable[[str, float], None] | None = None) -> list[dict]:
    """Every row of one task. ``progress(stage, fraction)`` hears how far it is."""
    from . import formats

    fmt = formats.get(task.format)
    accels = applicable_accels(task.accels, fmt)
    setting = Setting(task.format, task.group, task.align, tuple(accels))
    return study(task.model, [setting], task.methods, follow_format=True, eval_limit=task.eval_limit,
                 activations=task.activations, seed=task.seed, progress=progress)


@dataclass(frozen=True)
class Setting:
    """Data format, group size and alignment that the profile and the accelerators read, and the accelerators."""

    format: str
    group: int = 64
    align: str = "weight"
    accels: tuple[str, ...] = ()


def applicable_accels(names, fmt) -> list[str]:
    """The accelerators of ``names`` whose design takes data in ``fmt`` (an fp32 sweep skips integer-only
    designs such as Stripes; dense is always there as the baseline when any accelerator runs)."""
    if not names:
        return []
    from .accel import ACCELERATORS

    ok = []
    for n in names:
        a = ACCELERATORS[n]
        try:
            a.check_format(fmt, a.configure())
        except UserError:
            continue
        ok.append(n)
    return ok


def study(model_spec, settings: list[Setting], method_specs, *, follow_format: bool, eval_limit: int | None,
          activations: int = DEFAULT_ACTIVATIONS, seed: int = 0, progress=None, model=None) -> list[dict]:
    """The shared pipeline of `sweep` tasks and `compare`: load the model once (activations captured once),
    apply every method once, then per setting decompose every tensor once for the profile and run the
    accelerators layer by layer (activations packed once per layer for all methods).

    ``follow_format``: methods read the (single) setting's format and group where they can (sweeps);
    otherwise each method runs at its own defaults (compare).
    """
    from . import model as model_mod

    say = progress or (lambda stage, frac: None)
    rows: list[dict] = []
    fmt0, g0 = (settings[0].format, settings[0].group) if follow_format else (None, None)
    steps = {spec: resolve(spec, fmt0, g0) for spec in method_specs}
    need_acts = any(_needs_acts(st) for st in steps.values()) or any(_accels_need_acts(s.accels) for s in settings)
    say("loading model", 0.0)
    m = model if model is not None else model_mod.load(model_spec, activations=activations if need_acts else 0)
    layers = [L for L in m.layers if L.kind in ("conv", "linear")]
    if not layers:
        raise UserError(f"{model_spec} has no conv or linear layers")
    # methods: new weights once per method (forward-pass emulations change no weights)
    weights: dict[str, list | None] = {"": None}
    for i, (spec, st) in enumerate(steps.items()):
        say(f"method {spec}", 0.05 + 0.1 * i / max(len(steps), 1))
        if all(x.method.kind == "weights" for x in st):
            weights[spec] = _apply(layers, st)
    # accuracy on the model's real task
    if eval_limit != 0:
        rows += accuracy_rows(model_spec, steps, eval_limit, settings,
                              lambda f: say("accuracy", 0.15 + 0.35 * f))
    for si, s in enumerate(settings):
        say(f"profile {s.format} g{s.group}", 0.5 + 0.5 * si / len(settings))
        rows += _profile_setting(m.name, layers, weights, s)
        if s.accels:
            rows += _simulate_setting(m.name, layers, weights, s, seed,
                                      lambda f, _si=si: say(f"accelerators {s.format}",
                                                            0.5 + 0.5 * (_si + f) / len(settings)))
    say("done", 1.0)
    return rows


def _needs_acts(steps) -> bool:
    return any(x.method.kind != "weights" or x.method.needs_activations(x.params) for x in steps)


def _accels_need_acts(names) -> bool:
    if not names:
        return False
    from .accel import ACCELERATORS

    return any(ACCELERATORS[n].needs_activations for n in ["dense", *names])


def accuracy_rows(model_spec: str, steps: dict, limit, settings, say=None) -> list[dict]:
    """``accuracy`` (the task's metric: top-1 %, Spearman x100...), ``accuracy_delta`` against the original and,
    where the task has it, ``accuracy_top5``, for the original model ('') and every method; layer '*', accel ''.
    Repeated for each setting, so every (format, group) section of a report has them."""
    from . import evaluate

    labels = list(steps)
    specs = ["+".join(x.spec() for x in st) for st in steps.values()]
    n = len(specs) + 1
    done = [0]

    def tick(_v):
        done[0] += 1
        if say:
            say(done[0] / n)

    res = evaluate.evaluate(model_spec, specs, limit=limit, progress=tick)
    variants = res["variants"]
    out = []
    for s in settings or [Setting("", 0)]:
        for label, v in zip(["", *labels], variants):
            kw = dict(method=label, format=s.format, group=s.group)
            out.append(results.row(res["model"], results.WHOLE, "accuracy", v["value"], **kw))
            out.append(results.row(res["model"], results.WHOLE, "accuracy_delta", v["delta"], **kw))
            if v.get("top5") is not None:
                out.append(results.row(res["model"], results.WHOLE, "accuracy_top5", v["top5"], **kw))
            out.append(results.row(res["model"], results.WHOLE, "eval_samples", res["samples"], **kw))
    return out


def _profile_setting(model: str, layers, weights: dict, s: Setting) -> list[dict]:
    from . import formats
    from .planes import pack

    fmt = formats.get(s.format)
    task = Task(model, s.format, s.group, s.align)
    base = {L.name: pack(L.weight, fmt, s.group, s.align) for L in layers}
    rows = profile_rows(task, model, layers, base, "", None)
    for label, ws in weights.items():
        if label == "" or ws is None:
            continue
        planes = {L.name: pack_like(w, base[L.name]) for L, w in zip(layers, ws)}
        rows += profile_rows(task, model, layers, planes, label, base)
    return rows


def _simulate_setting(model: str, layers, weights: dict, s: Setting, seed: int, say) -> list[dict]:
    """Every accelerator on every layer for the original weights and each method's, streaming layer by layer."""
    from . import simulate as sim_mod
    from .accel import tiling

    n = next((int(L.activation.shape[0]) for L in layers if getattr(L, "activation", None) is not None), 1)
    sim = sim_mod.Simulator(sim_mod.Run(accels=list(s.accels), fmt=s.format, seed=seed, inferences=n))
    per_label: dict[str, list] = {k: [] for k in weights}
    for i, L in enumerate(layers):
        wl = tiling.from_layer(L)
        acache: dict = {}
        for label, ws in weights.items():
            res = sim_mod.layer_results(sim, wl, None if ws is None else ws[i], acache)
            per_label[label] += sim_mod.layer_rows(sim, model, label, wl, res, group=s.group)
        say((i + 1) / len(layers))
    rows = []
    for label, lr in per_label.items():
        rows += lr
        rows += sim_mod.whole_rows(sim, model, label, lr, group=s.group)
    return rows


def resolve(spec: str, fmt: str | None, group: int | None):
    """The method steps of a spec for data in ``fmt`` with groups of ``group``: a method reads the sweep's
    format and group where it can, else its own defaults (e.g. BitWave, an integer method, in an fp32 sweep).
    Values written in the spec always win. ``fmt=None``: the method's own defaults throughout."""
    from . import methods

    parts = spec.split("+")
    tries = [{"format": fmt, "group": group}, {"group": group}, {"format": fmt}, {}] if fmt else [{}]
    err = None
    for ov in tries:
        try:
            return methods.parse_specs(parts, overrides=ov)
        except UserError as e:
            err = err or e
    raise err


def _apply(layers, steps) -> list:
    from . import methods

    return [r.weight for r in methods.apply_model(layers, steps)]


def pack_like(weight, base):
    """Pack transformed weights exactly as ``base`` was packed. Integer formats keep the original
    per-channel scale: re-deriving it from pruned weights would re-quantise them and undo the pruning."""
    import numpy as np

    from .planes import pack, pack_raw

    if base.scale is None:
        return pack(weight, base.fmt, base.group, base.align, base.axis)
    w = np.asarray(weight, dtype=np.float64)
    sc = np.asarray(base.scale, dtype=np.float64).reshape([-1] + [1] * (w.ndim - 1))
    q = np.clip(np.rint(w / sc), -base.fmt.qmax, base.fmt.qmax).astype(np.int64)
    return pack_raw(base.fmt.encode(q), base.fmt, base.group, base.align, base.axis, scale=base.scale)


def profile_rows(task: Task, model: str, layers, planes: dict, method: str, base: dict | None) -> list[dict]:
    """Bit-sparsity rows of a model's weights (per layer and whole model) in the task's format and group."""
    import numpy as np

    from .profile import counts, merge, stats

    kw = dict(method=method, format=task.format, group=task.group)
    rows, cs = [], []
    hist = None
    changed = ones_base = 0
    for L in layers:
        p = planes[L.name]
        c = counts(p)
        cs.append(c)
        st = stats(c)
        rows += [results.row(model, L.name, k, st[k], **kw)
                 for k in ("values", "zero_value_frac", "zero_bit_frac", "mean_essential_bits")]
        rows += [results.row(model, L.name, f"occupancy_s{i:02d}", v, **kw)
                 for i, v in enumerate(st["plane_occupancy"])]
        ess = np.bitwise_count(p.magnitudes())
        valid = ((p.valid[:, None] >> np.arange(p.group, dtype=np.uint64)) & np.uint64(1)).astype(bool)
        h = np.bincount(ess[valid].ravel(), minlength=p.nbits + 1)
        hist = h if hist is None else hist + h  # one format per setting: the same number of planes
        if base is not None:
            b = base[L.name]
            if b.words.shape == p.words.shape:
                changed += int(np.bitwise_count(b.words ^ p.words).sum())
            ones_base += int(np.bitwise_count(b.words).sum())
    if not cs:
        return rows
    st = stats(merge(cs))
    rows += [results.row(model, results.WHOLE, k, st[k], **kw)
             for k in ("values", "zero_value_frac", "zero_bit_frac", "mean_essential_bits")]
    rows += [results.row(model, results.WHOLE, f"occupancy_s{i:02d}", v, **kw)
             for i, v in enumerate(st["plane_occupancy"])]
    rows += [results.row(model, results.WHOLE, f"essential_hist_{k:02d}", v, **kw) for k, v in enumerate(hist)]
    if base is not None:
        rows.append(results.row(model, results.WHOLE, "changed_bit_frac", changed / max(ones_base, 1), **kw))
    return rows


def _worker_init():
    """Pool workers: one thread each, and die with the driving process even when it is SIGKILLed."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the pool's own shutdown still ends the workers
        pass
    _worker_init_threads()


def keep_freed_memory():
    """glibc hands every large temporary array back to the kernel and faults fresh zeroed pages in for the next
    one; a task makes thousands of them (a third of a worker's time went to page faults). Keep freed blocks of up
    to 32 MiB in the heap instead (glibc only; harmless elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: trim the heap only when 1 GiB is free at its top
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD: blocks under 32 MiB come from the heap
    except Exception:
        pass


def _task_entry(task: Task) -> tuple[str, list[dict], float]:
    t0 = time.perf_counter()
    rows = run_task(task)
    return task.key, rows, time.perf_counter() - t0


# ---- running a sweep -----------------------------------------------------------------------------------------
def open_store(sw: Sweep, outdir, force: bool = False) -> results.Store:
    """The store of this sweep in ``outdir``: new, or the one a killed run of the same sweep left."""
    store = results.Store(outdir)
    fp = store.get_meta("fingerprint")
    keys = {t.key for t in sw.tasks}
    if fp is not None and fp != sw.fingerprint() and not force and store.done() <= keys:
        fp = sw.fingerprint()  # the same sweep, extended (more models, formats or groups): run only the new tasks
    if fp is not None and fp != sw.fingerprint():
        if not force:
            other = store.get_meta("sweep_file")
            store.close()
            raise UserError(f"{outdir} holds results of a different sweep (from {other}); "
                            "use another -o folder, or --force to start over")
        store.clear()
    if force and fp == sw.fingerprint():
        store.clear()
    store.set_meta("fingerprint", sw.fingerprint())
    store.set_meta("sweep_file", sw.path)
    store.set_meta("sweep_text", sw.text)
    return store


def run(sw: Sweep, outdir, *, backend: str = "local", workers: int | None = None, address: str | None = None,
        force: bool = False, console=None, on_done: Callable[[Task], None] | None = None) -> dict:
    """Run every task of the sweep not yet in the store. Returns counts and the wall time."""
    if backend not in ("local", "ray"):
        raise UserError(f"unknown backend {backend!r} (local or ray)")
    if address and backend != "ray":
        raise UserError("--address needs --backend ray")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    store = open_store(sw, outdir, force)
    keep_freed_memory()  # tasks may run in this process too
    t0 = time.perf_counter()
    done = store.done()
    todo = [t for t in sw.tasks if t.key not in done]
    failed: list[tuple[Task, str]] = []
    progress = _Progress(console, len(sw.tasks), len(sw.tasks) - len(todo))

    def commit(task: Task, rows: list[dict], wall: float):
        store.commit_task(task.key, rows, task.spec(), wall)
        progress.advance(task, wall)
        if on_done:
            on_done(task)

    try:
        with progress:
            if not todo:
                pass
            elif backend == "ray":
                _run_ray(todo, commit, failed, workers, address)
            elif (workers or _default_workers()) == 1 or len(todo) == 1:
                for t in todo:
                    try:
                        key, rows, wall = _task_entry(t)
                    except UserError as e:
                        failed.append((t, str(e)))
                        continue
                    commit(t, rows, wall)
            else:
                _run_local(todo, commit, failed, min(workers or _default_workers(), len(todo)))
    finally:
        n_rows = store.conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        store.close()
    wall = time.perf_counter() - t0
    if failed:
        lines = "; ".join(f"{t.model} {t.format} g{t.group}: {msg}" for t, msg in failed)
        raise UserError(f"{len(failed)} of {len(sw.tasks)} tasks failed ({lines}); the others are stored, and "
                        "running the same command again retries only the failed ones")
    return {"tasks": len(sw.tasks), "ran": len(todo), "skipped": len(sw.tasks) - len(todo), "rows": n_rows,
            "wall_s": wall, "backend": backend, "store": str(Path(outdir) / results.STORE_NAME)}


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _run_local(todo, commit, failed, workers):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        futs = {pool.submit(_task_entry, t): t for t in todo}
        try:
            for fut in as_completed(futs):
                t = futs[fut]
                try:
                    _, rows, wall = fut.result()
                except UserError as e:
                    failed.append((t, str(e)))
                    continue
                commit(t, rows, wall)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _run_ray(todo, commit, failed, workers, address):
    try:
        import ray
    except ImportError:
        raise UserError("the Ray backend needs ray: pip install 'bitsieve[ray]'") from None
    started = False
    if not ray.is_initialized():
        env = {"env_vars": {"OMP_NUM_THREADS": "1"}}
        try:
            if address:
                ray.init(address=address, runtime_env=env, log_to_driver=False, logging_level="ERROR")
            else:
                ray.init(num_cpus=workers or _default_workers(), runtime_env=env, include_dashboard=False,
                         log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot start or reach Ray{' at ' + address if address else ''}: {e}") from None
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=2)(_ray_task)
        refs = {remote.remote(asdict(t)): t for t in todo}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                t = refs[ref]
                status, payload, wall = ray.get(ref)
                if status == "error":
                    failed.append((t, payload))
                else:
                    commit(t, payload, wall)
    finally:
        if started:
            ray.shutdown()


def _ray_task(spec: dict):
    """A Ray task: the same task function, user errors returned as values (not retried)."""
    _worker_init_threads()
    t = Task(**{**spec, "methods": tuple(spec["methods"]), "accels": tuple(spec["accels"])})
    try:
        _, rows, wall = _task_entry(t)
    except UserError as e:
        return "error", str(e), 0.0
    return "ok", rows, wall


def _worker_init_threads():
    os.environ["OMP_NUM_THREADS"] = "1"
    keep_freed_memory()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


class _Progress:
    """A Rich progress bar over the tasks (quiet without a console)."""

    def __init__(self, console, total: int, already: int):
        self.console, self.total, self.already = console, total, already
        self.bar = None

    def __enter__(self):
        if self.console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]sweep[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.description}"), console=self.console, transient=False)
            self.bar.__enter__()
            self.tid = self.bar.add_task("", total=self.total, completed=self.already)
        return self

    def advance(self, task: Task, wall: float):
        if self.bar is not None:
            self.bar.update(self.tid, advance=1, description=f"{task.model} {task.format} g{task.group} ({wall:.1f} s)")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
