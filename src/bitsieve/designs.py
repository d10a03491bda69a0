"""Designs: an accelerator model plus the numerics it applies to the model as it computes.

A chip that prunes bit columns at run time (BitX, BitXpro), aligns and truncates products (Bitlet) or computes
in fixed point (the DNNsim family, BitWave, BitVert) does not run the original model, so the accuracy of a
design is measured on the model *as the design computes it*. ``Design.numerics()`` says what that is:

- ``weights``: method specs the hardware applies to the weights at run time (BitX/BitXpro: their plane
  selection at the design's ``keep``/``score``/``group``/``layout``, the same function and the same lanes the
  simulator uses, so pruning in software or at run time gives the same bits and the same cycles);
- ``fmt``: the fixed-point format of weights (per output channel) and activations (per layer), or a float
  format (weights rounded to it, activations left in fp32);
- ``forward``: a forward-pass emulation (Bitlet: its PE numerics with the design's ``prune`` mask).

A software method composes *before* the design's numerics, in the design's format, group and lane layout
(``Design.method_steps``); it is shown only on designs whose cycles read weight bits (``reads_weights``):
Stripes and Pragmatic are activation-serial, a method cannot change their cycles, and its accuracy belongs to
the design it targets.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from . import formats
from .errors import UserError

#: the data format each design is published for (others: fp32 when the design takes it, else int8)
NATIVE = {"stripes": "int16", "pragmatic": "int16", "laconic": "int16", "tactical": "int16", "bitwave": "int8",
          "bitvert": "int8", "pnpu": "fp16", "pragmatic-ws": "int8"}
#: designs whose cycles read the weights' bits or zeros (a weight method can change them)
READS_WEIGHTS = ("laconic", "tactical", "bitlet", "bitx", "bitxpro", "bitwave", "bitvert", "pnpu", "pragmatic-ws")
#: the knob each design is swept over for accuracy-versus-speed curves, and its values
KNOBS = {"bitx": ("keep", (2, 4, 6, 8)), "bitxpro": ("keep", (2, 4, 6, 8)),
         "bitlet": ("prune", ("0xff0000", "0xfff000", "0xffff00", "0xffffff"))}


def native_format(accel: str) -> str:
    from .accel import ACCELERATORS

    if accel in NATIVE:
        return NATIVE[accel]
    return "fp32" if "fp32" in ACCELERATORS[accel].formats else "int8"


@dataclass(frozen=True)
class Numerics:
    """What a design does to the model as it computes (module docstring)."""

    fmt: str
    weights: tuple[str, ...] = ()
    forward: str = ""
    note: str = ""

    @property
    def fixed(self) -> bool:
        return not formats.get(self.fmt).is_float

    def key(self) -> tuple:
        return (self.fmt, self.weights, self.forward)

    def describe(self) -> str:
        parts = [f"weights and activations in {self.fmt}" if self.fixed else f"weights in {self.fmt}"]
        parts += [f"runtime {w}" for w in self.weights]
        if self.forward:
            parts.append(f"forward pass through {self.forward}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Design:
    """An accelerator at a configuration (``sets``: parameter overrides) in a data format."""

    accel: str
    fmt: str = ""
    sets: tuple = ()  # sorted (param, value) overrides

    @classmethod
    def make(cls, accel: str, fmt: str = "", sets: dict | None = None) -> "Design":
        from .accel import get

        a = get(accel)
        f = formats.get(fmt or native_format(a.name)).name
        cfg = a.configure(sets)  # unknown parameters and bad values fail here
        a.check_format(f, cfg)
        return cls(a.name, f, tuple(sorted((k, str(v)) for k, v in (sets or {}).items())))

    @property
    def name(self) -> str:
        """``bitx``, ``dense@int16`` (dense is named by its format), ``bitx[keep=4]`` with overrides."""
        base = f"dense@{self.fmt}" if self.accel == "dense" else self.accel
        return base + (f"[{','.join(f'{k}={v}' for k, v in self.sets)}]" if self.sets else "")

    @property
    def overrides(self) -> dict:
        return dict(self.sets)

    def config(self) -> dict:
        from .accel import get

        return get(self.accel).configure(self.overrides)

    def reads_activations(self) -> bool:
        """Whether the design's cycles depend on captured input activations."""
        from .accel import get

        return get(self.accel).reads_activations(self.config(), formats.get(self.fmt))

    @property
    def reads_weights(self) -> bool:
        return self.accel in READS_WEIGHTS

    def numerics(self) -> Numerics:
        """The transform this design applies to the model as it computes (module docstring)."""
        c = self.config()
        f = formats.get(self.fmt)
        fmt = f.name[:-2] if (not f.is_float and f.twos) else f.name  # same integers, sign-magnitude reading
        nb, k = formats.get(fmt).nbits, c.get("keep", 1)
        by_construction = (f"speed-up near {nb}/{k} = {nb / k:.2f} by construction (plane-serial: a group costs "
                           f"its kept planes, and nearly every group has {k} non-empty ones); what the design "
                           f"earns is its accuracy at keep={k}")
        if self.accel == "bitx":
            return Numerics(fmt, (f"bitx:keep={c['keep']},score={c['score']},format={fmt},group={c['group']},"
                                  f"layout={c['layout']}",),
                            note=by_construction if c["model"] == "planeserial" else "")
        if self.accel == "bitxpro":
            return Numerics(fmt, (f"bitxpro:keep={c['keep']},tile={c['rows']},cap={c['cap']},"
                                  f"drop={str(c['drop']).lower()},score={c['score']},format={fmt},"
                                  f"group={c['group']},layout={c['layout']}",), note=by_construction)
        if self.accel == "bitlet" and f.is_float:
            grouping = {"flat": "flat", "channel": "tap", "auto": "auto"}.get(c["layout"], "auto")
            note = ("" if c["layout"] != "tap" else
                    "cycles group every layer's lanes along kernel taps; the emulated numerics do so only where "
                    "k^2 > c_w (the emulation's 'auto' grouping)")
            return Numerics("fp32", (), f"bitlet:prune={hex(c['prune'])},group={c['group']},grouping={grouping}", note)
        return Numerics(f.name)

    def method_steps(self, spec: str):
        """A software method's steps in this design's format, group and lane layout, or None when the method
        cannot run in that format. Values written in the spec win."""
        from . import methods

        c = self.config()
        ov = {"format": self.fmt, "group": c.get("group", c.get("lanes")), "layout": c.get("layout")}
        tries = [ov, {k: v for k, v in ov.items() if k != "group"}, {"format": self.fmt}]
        for t in tries:
            try:
                steps = methods.parse_specs(spec.split("+"), {k: v for k, v in t.items() if v is not None})
            except UserError:
                continue
            if all(s.method.kind == "weights" for s in steps) and all(
                    formats.get(s.params.get("format", self.fmt)).is_float == formats.get(self.fmt).is_float
                    for s in steps):
                return steps
        return None


def defaults(names=None, *, fmt: str = "auto", sets: dict | None = None) -> list[Design]:
    """The designs of ``names`` (default: every accelerator; dense once per format in use) at their defaults
    with ``sets`` ({accel: {param: value}}) applied."""
    from .accel import ACCELERATORS, get

    sets = sets or {}
    for a in sets:
        get(a)
    names = list(dict.fromkeys(names or ACCELERATORS))
    out = []
    for n in names:
        if n == "dense":
            continue
        out.append(Design.make(n, "" if fmt == "auto" else fmt, sets.get(n)))
    fmts = list(dict.fromkeys(["fp32" if fmt == "auto" else formats.get(fmt).name, *(d.fmt for d in out)]))
    dense = [Design.make("dense", f, sets.get("dense")) for f in fmts]
    return dense + out


def knob_designs(d: Design) -> list[Design]:
    """The design at every other value of its knob (``KNOBS``), for accuracy-versus-speed curves."""
    if d.accel not in KNOBS:
        return []
    k, values = KNOBS[d.accel]
    here = d.config()[k]
    out = []
    for v in values:
        other = Design.make(d.accel, d.fmt, {**d.overrides, k: v})
        if other.config()[k] != here:
            out.append(other)
    return out


# ---- running a design's numerics on a live model -------------------------------------------------------------
@contextlib.contextmanager
def computing(m, num: Numerics, steps=(), calib=None):
    """The model ``m`` (a loaded built-in) computing as a design does: software method ``steps`` first (in
    the design's format), then the design's format (weights per output channel on the original weights'
    grid, activations per layer scaled from ``calib`` batches), then its runtime weight selection, then its
    forward-pass emulation. Weights are restored on exit."""
    from . import evaluate, methods

    layers = [L for L in m.layers if L.kind in ("conv", "linear")]
    saved = [L.weight.copy() for L in layers]
    fmt = formats.get(num.fmt)
    try:
        ws = [L.weight for L in layers]
        if steps:
            ws = [r.weight for r in methods.apply_model(layers, list(steps))]
        if fmt.is_float:
            if fmt.name != "fp32":
                ws = [fmt.decode(fmt.encode(w)).astype(np.float32) for w in ws]
        else:
            ws = [evaluate._on_grid(np.asarray(w, np.float32), s, fmt) for w, s in zip(ws, saved)]
        for L, w in zip(layers, ws):
            L.weight[...] = np.asarray(w, np.float32).reshape(L.weight.shape)
        if num.weights:
            rt = methods.parse_specs(list(num.weights))
            for L, r in zip(layers, methods.apply_model(layers, rt)):
                L.weight[...] = r.weight.reshape(L.weight.shape)
        with contextlib.ExitStack() as stack:
            if num.fixed:
                stack.enter_context(evaluate.fixed_activations(m, fmt.name, calib))
            if num.forward:
                from .methods.bitlet_emulate import emulate as bitlet_emulate

                stack.enter_context(bitlet_emulate(methods.parse_spec(num.forward).params))
            yield m
    finally:
        for L, w in zip(layers, saved):
            L.weight[...] = w


@dataclass
class Entry:
    """One row of a comparison: a design, optionally with a software method composed before it."""

    design: Design
    method: str = ""  # the method spec as the user gave it ('' = the design at its own numerics)
    steps: list = field(default_factory=list)
    knob: bool = False  # a point of the design's knob curve, not a design the user asked for

    @property
    def label(self) -> str:
        return self.design.name + (f" + {self.method}" if self.method else "")

    def accuracy_key(self) -> tuple:
        return (self.design.numerics().key(), tuple(s.spec() for s in self.steps))
