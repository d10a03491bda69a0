"""Sweep files: a TOML grid of models x formats x group sizes x methods x accelerators, run by a local
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
    [designs.bitx]                              # accelerator parameters: a list is a grid axis, so the
    keep = [4, 6]                               # design's keep sweeps together with the method's keep

Rows of a design variant name it ``bitx[keep=4]``; ``bitsieve sweep --set bitx.rows=8`` sets a parameter of
every variant (values in a [designs] table win).

Work is shared where it can be: a task is one (model, format, group). It loads the model and captures its
activations once, decomposes every tensor once, then loops over the methods and the accelerators. A task's rows
go to the store together with its 'done' mark, so a killed sweep resumes where it stopped.

Everything is checked before any work starts; a bad entry is a UserError naming the line of the file.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError

#: the quick evaluation subset of each task (samples): compare's default and a sweep's without eval_limit
QUICK_LIMIT = {"imagenet": 200, "mnist": 10000, "faces": 200, "stsb": 1379}
TOP_KEYS = ("name", "models", "formats", "groups", "align", "accelerators", "accels", "methods", "designs",
            "eval_limit", "activations", "seed")
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
    designs: tuple = ()  # design variants: ((accel, ((param, value), ...)), ...); accels without one run as is
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
    designs: list = field(default_factory=list)  # design variants (see Task.designs)
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
    from ..zoo import BUILTINS

    return BUILTINS.get(name)


def known_models() -> list[str]:
    from ..zoo import BUILTINS

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
    from .. import methods

    return "+".join(methods.parse_spec(part).spec() for part in spec.split("+"))


def parse(path, text: str | None = None, sets: dict | None = None) -> Sweep:
    """Read, expand and validate a sweep file. Every error is a UserError naming the file and line. ``sets``
    ({accel: {param: value}}, from ``--set``) configure every variant of those accelerators."""
    p = Path(path)
    if text is None:
        if p.exists() and not p.is_file():  # a folder, or a FIFO that would block
            raise UserError(f"sweep file {p} is not a regular file")
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
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise L.error(None, "not a sweep file: arrays or tables nested too deeply") from None

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

    from .. import formats as fmod

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

    from ..accel import ACCELERATORS

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
            usable |= set(_applicable(accels, fmod.get(f)))
        accels = [a for a in accels if a in usable]
    methods = expand_methods(doc.get("methods", {}), L)
    variants = expand_designs(doc.get("designs", {}), sets or {}, L)
    accels = list(dict.fromkeys([*accels, *(a for a, _ in variants)]))
    sw = Sweep(str(p), text, models, fmts, groups, align, accels, methods, eval_limit, acts, seed, name,
               designs=variants)
    sw.tasks = [Task(m, f, g, align, tuple(methods), tuple(accels), tuple(variants), limits[m], acts, seed)
                for m in models for f in fmts for g in groups]
    _check_combinations(sw, L)
    return sw


def expand_methods(table, L: _Lines) -> list[str]:
    """[methods.NAME] tables -> the list of method specs of the grid (file order; lists are grid axes)."""
    from .. import methods

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


def expand_designs(table, sets: dict, L: _Lines) -> list:
    """[designs.ACCEL] tables (lists are grid axes) and ``--set`` values -> design variants
    ((accel, ((param, value), ...)), ...), checked against each accelerator's parameters."""
    from ..accel import ACCELERATORS

    if not isinstance(table, dict):
        raise L.error(L.key("designs"), "designs must be tables: [designs.bitx] keep = [4, 6]")
    for a in sets:
        if a not in ACCELERATORS:
            raise UserError(f"--set names unknown accelerator {a!r} (known: {', '.join(ACCELERATORS)})")
    out = []
    for name in list(table) + [a for a in sets if a not in table]:
        line = L.section("designs", name) if name in table else None
        if name not in ACCELERATORS:
            raise L.error(line, f"unknown accelerator {name!r} (known: {', '.join(ACCELERATORS)})")
        params = table.get(name, {})
        if not isinstance(params, dict):
            raise L.error(line, f"designs.{name} must be a table of parameters, e.g. [designs.{name}] keep = [4, 6]")
        axes = [[(k, x) for x in _as_list(v)] for k, v in params.items()]
        for combo in itertools.product(*axes):
            ov = {**{k: str(v) for k, v in sets.get(name, {}).items()}, **{k: _format_param_value(v) for k, v in combo}}
            try:
                ACCELERATORS[name].configure(ov)
            except UserError as e:
                raise L.error(line, str(e)) from None
            out.append((name, tuple(sorted(ov.items()))))
    return list(dict.fromkeys(out))


def _check_combinations(sw: Sweep, L: _Lines):
    """An accelerator none of the sweep's formats suits would produce nothing: say so, with its line."""
    if not sw.accels:
        return
    from .. import formats

    akey = "accelerators" if L.key("accelerators") else "accels"
    usable = set()
    for f in sw.formats:
        usable |= set(_applicable(sw.accels, formats.get(f)))
    for a in sw.accels:
        if a not in usable:
            from ..accel import ACCELERATORS

            kinds = ", ".join("int<b>" if k == "int" else k for k in ACCELERATORS[a].formats)
            raise L.error(L.value(akey, a) if L.key(akey) else None,
                          f"accelerator {a!r} takes none of the sweep's formats ({', '.join(sw.formats)}); "
                          f"it reads {kinds}")


def _applicable(names, fmt):
    from .pipeline import applicable_accels

    return applicable_accels(names, fmt)
