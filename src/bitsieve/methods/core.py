"""What every method shares: its metadata and parameters, the spec parser, and the one helper that applies
a method (or a composed list of methods) to a tensor or to a whole model.

A method is a pure function ``fn(planes, *, <params>, acts=None, sensitive=None) -> planes`` over the packed
planes of one weight tensor, plus a ``layout`` that says how to pack a tensor for it (format, group size,
alignment). ``apply_tensor`` packs the weights the method's way, calls the function, and turns the new planes
back into float32 weights; it also counts the bits that changed (word XOR + popcount).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import formats, lanes
from ..errors import UserError
from ..planes import Planes, pack, pack_raw

CONFIDENCE = ("exact (RTL)", "reference code", "reconstructed (patent/abstract)", "baseline")


@dataclass(frozen=True)
class Param:
    """One documented method parameter. ``kind`` is int, float, str, bool or 'mask' (int, any base)."""

    name: str
    kind: str
    default: Any
    doc: str
    choices: tuple | None = None
    lo: float | None = None
    hi: float | None = None

    def parse(self, text: str, method: str) -> Any:
        """Text from a spec -> a checked value (UserError with the method and parameter named)."""
        where = f"{method}:{self.name}"
        t = str(text).strip()
        try:
            if self.kind == "int":
                v = int(t, 10)
            elif self.kind == "mask":
                v = int(t, 0)
            elif self.kind == "float":
                v = float(t)
                if not math.isfinite(v):
                    raise ValueError
            elif self.kind == "bool":
                low = t.lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                v = low in ("1", "true", "yes", "on")
            else:
                v = t.lower()
        except ValueError:
            raise UserError(f"{where}: {text!r} is not a valid {self.kind}") from None
        return self.check(v, method)

    def check(self, v: Any, method: str) -> Any:
        where = f"{method}:{self.name}"
        if self.choices is not None and v not in self.choices:
            raise UserError(f"{where}: {v!r} is not one of {', '.join(map(str, self.choices))}")
        if self.lo is not None and v < self.lo:
            raise UserError(f"{where}: {v} is below the minimum {self.lo:g}")
        if self.hi is not None and v > self.hi:
            raise UserError(f"{where}: {v} is above the maximum {self.hi:g}")
        return v


@dataclass(frozen=True)
class Method:
    """A bit-level method: the function, how to pack a tensor for it, and where it comes from."""

    name: str
    fn: Callable | None  # None for forward-pass methods (bitlet)
    source: str
    confidence: str
    description: str
    params: tuple[Param, ...]
    layout: Callable[[dict], tuple] | None = None  # params -> (format, group, align[, per_channel])
    kind: str = "weights"  # 'weights' (a weight rewrite) or 'forward' (an emulated forward pass)
    needs_activations: Callable[[dict], bool] = field(default=lambda p: False)
    validate: Callable[[dict], None] | None = None  # cross-parameter checks (UserError)
    lanes: Callable[[dict], str] | None = None  # params -> lane layout (bitsieve.lanes) of a design it targets
    uses_groups: bool = False  # fn takes the layer's conv ``groups`` (tiles never span conv groups)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise UserError(f"{self.name}: unknown parameter {name!r} (known: {', '.join(p.name for p in self.params)})")

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}


@dataclass(frozen=True)
class Step:
    """A method with all its parameters resolved."""

    method: Method
    params: dict

    @property
    def name(self) -> str:
        return self.method.name

    def spec(self) -> str:
        """Canonical text form, e.g. ``bitx:keep=5,score=l2,format=fp32,group=64``."""
        parts = []
        for p in self.method.params:
            v = self.params[p.name]
            parts.append(f"{p.name}={hex(v) if p.kind == 'mask' else str(v).lower() if p.kind == 'bool' else v}")
        return self.method.name + (":" + ",".join(parts) if parts else "")


LAYOUT = Param("layout", "str", "auto", "lane layout of the groups, shared with the design the method targets "
               "(bitsieve.lanes): auto = BitSim's rule (kernel taps when k^2 > c_w, else input channels per tap, "
               "methods.md decision 1), channel, tap or flat", choices=lanes.MODES)


_SPEC = re.compile(r"^\s*([A-Za-z][\w-]*)\s*(?::(.*))?$")


def parse_spec(spec: str, registry: dict, overrides: dict | None = None) -> Step:
    """``"bitx:keep=5,score=l1"`` -> Step. ``overrides`` (e.g. ``{"format": "int16"}`` from ``--format``)
    replace defaults for methods that have such a parameter, but not values given in the spec."""
    m = _SPEC.match(str(spec))
    if not m:
        raise UserError(f"bad method spec {spec!r} (expected NAME or NAME:key=value,...)")
    name = m.group(1).lower()
    if name not in registry:
        raise UserError(f"unknown method {name!r} (known: {', '.join(registry)})")
    method = registry[name]
    params = method.defaults()
    names = {p.name for p in method.params}
    for k, v in (overrides or {}).items():
        if v is not None and k in names:
            params[k] = method.param(k).parse(str(v), name)
    given = set()
    body = m.group(2)
    if body is not None and body.strip():
        for item in body.split(","):
            if "=" not in item:
                raise UserError(f"{name}: parameter {item.strip()!r} needs a value (key=value)")
            k, v = (s.strip() for s in item.split("=", 1))
            k = k.lower()
            if k in given:
                raise UserError(f"{name}: parameter {k!r} given twice")
            given.add(k)
            params[k] = method.param(k).parse(v, name)
    if method.validate:
        method.validate(params)
    return Step(method, params)


# ---- packing for a method ---------------------------------------------------------------------------------
def check_format(name: str, method: str, *, floats: bool = True, ints: bool = True, twos: bool = False):
    """Parse a format parameter and check that this method can read it."""
    f = formats.get(name)
    if f.is_float and not floats:
        raise UserError(f"{method}: needs an integer format (int<b>), got {f.name}")
    if not f.is_float and not ints:
        raise UserError(f"{method}: needs a float format (fp32, bf16, fp16), got {f.name}")
    if not f.is_float and f.twos and not twos:
        raise UserError(f"{method}: reads sign-magnitude integers; use int<b>, not {f.name}")
    return f


def pack_for(weight: np.ndarray, fmt: formats.Format, group: int, align: str, per_channel: bool = True) -> Planes:
    """Pack a float weight tensor: floats are cast (and aligned), integers are quantised with the symmetric
    rule of decision 2 (one scale per output channel, or per tensor), fixed point uses its own scale."""
    return pack(np.asarray(weight, dtype=np.float32), fmt, group, align, per_channel=per_channel)


def group_view(a: np.ndarray, p: Planes) -> np.ndarray:
    """An array shaped like the tensor -> float64 [n_groups, G] in the planes' group order (padding 0)."""
    a = np.broadcast_to(np.asarray(a, dtype=np.float64), p.shape)
    rows = np.moveaxis(a, p.axis, -1).reshape(p.rows, p.row_len)
    out = np.zeros((p.rows, p.groups_per_row * p.group))
    out[:, : p.row_len] = rows
    return out.reshape(p.n_groups, p.group)


def output_channel_of_group(p: Planes) -> np.ndarray:
    """Output channel (axis 0) of each group; rows of a conv are (O, KH, KW) in order."""
    if len(p.shape) < 2 or p.axis == 0:
        return np.zeros(p.n_groups, dtype=np.int64)
    per_o = p.rows // int(p.shape[0])
    return (np.arange(p.n_groups) // p.groups_per_row) // per_o


def valid_count(p: Planes) -> np.ndarray:
    return np.bitwise_count(p.valid).astype(np.int64)


def effectual_bits(p: Planes) -> int:
    """One-bits a bit-serial PE must process: ones of the magnitude/significand planes (sign-magnitude and
    floats). Two's complement (BBS): min(ones, zeros) per plane and group (bi-directional sparsity), where
    the leading planes that only repeat the sign plane are free (the BBS encoding drops them)."""
    v = p.valid
    ones = np.bitwise_count(p.words & v[:, None]).astype(np.int64)
    if p.fmt.is_float or not p.fmt.twos:
        return int(ones.sum())
    eff = np.minimum(ones, valid_count(p)[:, None] - ones)
    sign = p.words[:, -1] & v
    redundant = np.ones(p.n_groups, dtype=bool)
    for s in range(p.nbits - 2, -1, -1):  # below the sign plane, from the top
        redundant &= ((p.words[:, s] & v) ^ sign) == 0
        eff[:, s] = np.where(redundant, 0, eff[:, s])
    return int(eff.sum())


def changed_bits(before: Planes, after: Planes) -> int:
    """Bits that differ between two packings of the same tensor (planes and, sign-magnitude, signs)."""
    if before.words.shape != after.words.shape:
        before = repack_as(before, after.fmt)
    v = before.valid
    n = int(np.bitwise_count((before.words ^ after.words) & v[:, None]).sum())
    if after.fmt.is_float or not after.fmt.twos:  # sign-magnitude: a sign counts where a value is non-zero
        live = _nonzero_mask(before) | _nonzero_mask(after)
        n += int(np.bitwise_count((before.signs ^ after.signs) & v & live).sum())
    return n


def _nonzero_mask(p: Planes) -> np.ndarray:
    """uint64 [n_groups]: bit g set where value g's magnitude is non-zero now."""
    acc = np.zeros(p.n_groups, dtype=np.uint64)
    for s in range(p.nbits):
        acc |= p.words[:, s]
    return acc


def ints_of(p: Planes) -> np.ndarray:
    """int64 [n_groups, G] signed integers of an integer packing (sign-magnitude or two's complement)."""
    m = p.magnitudes().astype(np.int64)
    sign = ((p.signs[:, None] >> np.arange(p.group, dtype=np.uint64)) & np.uint64(1)).astype(bool)
    if p.fmt.twos:
        return np.where(sign, m - (1 << p.fmt.width), m)
    return np.where(sign, -m, m)


def from_ints(p: Planes, q: np.ndarray, fmt: formats.Format | None = None) -> Planes:
    """Same tensor and geometry, new signed integers [n_groups, G] (in ``fmt``, default p's format)."""
    fmt = fmt or p.fmt
    q = np.asarray(q, dtype=np.int64)
    raw = fmt.encode(q)
    np_ = pack_raw(raw.reshape(p.n_groups, p.group), fmt, p.group, "none", axis=1)
    from dataclasses import replace

    return replace(p, fmt=fmt, words=np_.words, signs=np_.signs, nonzero=np_.nonzero, _cache={})


def repack_as(p: Planes, fmt: formats.Format) -> Planes:
    """An integer packing re-encoded in another integer format of enough width (same integers)."""
    return from_ints(p, ints_of(p), fmt)


def magnitudes_to_words(p: Planes, mags: np.ndarray) -> np.ndarray:
    """uint [n_groups, G] new magnitudes -> plane words [n_groups, nbits] through the planes core."""
    width = p.nbits + 1  # int<width> sign-magnitude has exactly nbits magnitude planes
    raw = np.asarray(mags, dtype=np.uint32)
    return pack_raw(raw, formats.get(f"int{width}"), p.group, "none", axis=1).words


# ---- applying methods -----------------------------------------------------------------------------------
@dataclass
class StepStats:
    """Counts of one method step on one tensor."""

    method: str
    spec: str
    format: str
    bits_before: int  # effectual bits (see effectual_bits) in the method's representation
    bits_after: int
    changed_bits: int  # XOR popcount between the packings before and after
    changed_values: int
    align_lost_bits: int  # one-bits already lost by float alignment before the method ran

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def apply_tensor(weight, steps: list[Step], *, act_mean=None, sensitive=None,
                 groups: int = 1) -> tuple[np.ndarray, list[StepStats]]:
    """Apply weight methods in order to one tensor. Returns float32 weights and per-step counts.

    A method that targets a design (``Method.lanes``) packs the weight through ``bitsieve.lanes.pack_weight``,
    the grouping its design's simulator reads; the others group along the default dot-product axis.
    ``act_mean``: mean |input activation| broadcastable to the weight (e.g. [O, I, 1, 1] for a conv), for
    methods that score with activations. ``sensitive``: bool [O] per output channel (BBS beta), or None
    to let the method choose within this tensor. ``groups``: the layer's conv groups.
    """
    w = np.asarray(weight, dtype=np.float32)
    stats = []
    for step in steps:
        if step.method.kind != "weights":
            raise UserError(f"{step.name} changes the forward pass, not the weights: use it with `bitsieve eval`")
        spec = step.method.layout(step.params)
        lay = None
        if step.method.lanes is not None and w.ndim in (2, 3, 4):
            p, lay = lanes.pack_weight(w, spec[0], spec[1], step.method.lanes(step.params), spec[2])
        else:
            p = pack_for(w, *spec)
        acts = None
        if step.method.needs_activations(step.params):
            if act_mean is None:
                raise UserError(f"{step.spec()} needs captured activations (none were given for this tensor)")
            a = np.broadcast_to(np.asarray(act_mean, np.float64), w.shape)
            acts = lanes.to_lanes(a, lay).reshape(p.n_groups, p.group) if lay else group_view(a, p)
        extra = {"groups": groups} if step.method.uses_groups else {}
        q = step.method.fn(p, **step.params, acts=acts, sensitive=sensitive, **extra)
        vals = q.values()
        new = (lanes.from_lanes(vals, lay, w.shape) if lay else vals).astype(np.float32)
        before = p if q.fmt == p.fmt else repack_as(p, q.fmt)  # count both in the same representation
        stats.append(StepStats(step.name, step.spec(), q.fmt.name, effectual_bits(before),
                               effectual_bits(q), changed_bits(p, q), int(np.count_nonzero(new != w)),
                               int(p.lost.sum())))
        w = new
    return w, stats


def activation_mean(layer) -> np.ndarray | None:
    """Mean |input activation| of a layer, shaped to broadcast against its weight ([O, I(, 1, 1)]),
    or None if the layer carries no captured activation."""
    a = getattr(layer, "activation", None)
    if a is None:
        return None
    a = np.abs(np.asarray(a, dtype=np.float64))
    w = layer.weight
    if w.ndim >= 3:  # conv: activation [N, C, H, W] -> channel means; grouped convs take their slice
        c = a.reshape(a.shape[0], a.shape[1], -1).mean(axis=(0, 2))
        groups = int(getattr(layer, "groups", 1) or 1)
        o, ipg = w.shape[0], w.shape[1]
        idx = (np.arange(o)[:, None] // (o // groups)) * ipg + np.arange(ipg)[None, :]
        return c[idx].reshape(o, ipg, *([1] * (w.ndim - 2)))
    c = a.reshape(-1, a.shape[-1]).mean(axis=0)
    return np.broadcast_to(c[None, :], w.shape)
