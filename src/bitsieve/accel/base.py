"""The one interface every accelerator model implements, and the configuration machinery they share.

An accelerator model is a class with a name, a source, a confidence label and a data file
(``accel/data/<name>.toml``) that holds every parameter's default with a citation per number. Given a
layer (``tiling.Workload``: shape, stride, padding, groups, captured activations), the packed planes of its
weights in the accelerator's lane layout and, where the design looks at them, the packed planes of its
input activations, ``simulate`` returns a ``LayerResult``: cycles, the event counts the energy model needs,
and the bottleneck (which lane, plane, row or column set the time).

Speed-up convention (used by ``simulate.py`` and the CLI). Every model states ``units``: how many
1-bit x 1-bit products its configured array can perform per cycle at peak (a B x B bit-parallel MAC unit
counts B*B, a bit-serial lane that multiplies one weight bit by a B-bit activation counts B, a Laconic
term-pair lane counts 1). Speed-ups are taken at equal units, the iso-multiplier normalisation of the
BBS paper (MICRO'24 section V-A: "all compared accelerators normalised to equal bit-serial multiplier
count"): ``speedup = (cycles_base * units_base) / (cycles * units)``. So the array size in the data file
changes absolute cycles but not the speed-up (except through utilisation and synchronisation), and a
speed-up can never exceed the work-reduction bound ``B*B*MACs / effectual bit products`` on a layer that
tiles exactly (tests check this). Raw cycles are always reported too.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources

from .. import formats
from ..errors import UserError

CONFIDENCE = ("exact (RTL)", "reference code", "reconstructed (patent/abstract)")
FORMAT_KINDS = ("fp32", "bf16", "fp16", "int")


@dataclass
class LayerResult:
    """What one accelerator model says about one layer.

    ``cycles``: compute cycles of the layer (the papers' performance metric). ``units``: peak 1b x 1b
    products per cycle of the configured array (see the module docstring). ``effectual``: the bit products
    the design actually has to perform on these bits (its work, for the work-reduction bound).
    ``events``: counts for the energy model (``pe_cycles``, ``macs``, SRAM/DRAM bits, stalls...).
    ``bottleneck``: a short label of what set the time, ``bottleneck_share`` its share (0..1) of the cycles
    or of the tiles it describes. ``dense_cycles``: the cycles of the same tiling if every tile step ran at
    the speed of a bit-parallel array with the same units (tile step MAC slots x B^2 / units): the
    same-dataflow dense reference of ``speedup``.
    """

    cycles: float
    units: float
    effectual: float
    events: dict = field(default_factory=dict)
    bottleneck: str = ""
    bottleneck_share: float = 0.0
    detail: dict = field(default_factory=dict)
    dense_cycles: float = 0.0  # the same schedule with every tile step at bit-parallel speed, equal units


@dataclass(frozen=True)
class PackSpec:
    """How a tensor must be packed for an accelerator: format, group (lanes), float alignment, layout."""

    fmt: str
    group: int
    align: str = "none"
    layout: str = "channel"  # weights: channel | tap | flat | auto (tiling.layout); activations: 'act'
    pad: bool = True  # activations: spatial zero padding included (DNNsim dataflow reads padded inputs)
    round_to: str = ""  # round the values to this format first (e.g. bf16 data in an fp32 datapath)


def _data(name: str) -> dict:
    try:
        text = resources.files("bitsieve.accel").joinpath("data", f"{name}.toml").read_text()
    except FileNotFoundError:
        raise UserError(f"no data file for accelerator {name!r}") from None
    return tomllib.loads(text)


class Accelerator:
    """Base class. Subclasses set ``name`` and implement ``check_format``, ``weight_spec``, ``act_spec``,
    ``units`` and ``simulate``; everything else (defaults, citations, overrides) comes from the data file."""

    name: str = ""
    formats: tuple = FORMAT_KINDS  # which of FORMAT_KINDS the design accepts
    needs_activations: bool = False  # whether cycles depend on the input activations
    pe_name: str = "PE"

    def __init__(self):
        d = _data(self.name)
        self.title: str = d["title"]
        self.source: str = d["source"]
        self.confidence: str = d["confidence"]
        if self.confidence not in CONFIDENCE:
            raise ValueError(f"{self.name}: bad confidence {self.confidence!r}")
        self.params: dict = dict(d.get("params", {}))
        self.cite: dict = dict(d.get("cite", {}))
        self.choices: dict = {k: list(v) for k, v in d.get("choices", {}).items()}
        self.energy: dict = dict(d.get("energy", {}))
        self.area: dict = dict(d.get("area", {}))
        missing = [k for k in self.params if k not in self.cite]
        if missing:
            raise ValueError(f"{self.name}: parameters without a citation: {missing}")

    # ---- description ----------------------------------------------------------------------------------
    @property
    def doc(self) -> str:
        return (type(self).__doc__ or "").strip()

    def describe(self) -> dict:
        return {"name": self.name, "title": self.title, "source": self.source, "confidence": self.confidence,
                "formats": list(self.formats), "params": dict(self.params), "cite": dict(self.cite)}

    # ---- configuration ----------------------------------------------------------------------------------
    def configure(self, overrides: dict | None = None) -> dict:
        """Defaults with ``overrides`` applied; every key must exist and values keep the default's type."""
        cfg = dict(self.params)
        for k, v in (overrides or {}).items():
            if k not in cfg:
                raise UserError(f"{self.name} has no parameter {k!r} (known: {', '.join(sorted(cfg))})")
            cfg[k] = _cast(self.name, k, v, self.params[k])
            if k in self.choices and cfg[k] not in self.choices[k]:
                raise UserError(f"{self.name}.{k} must be one of {self.choices[k]}, got {cfg[k]!r}")
        self.validate(cfg)
        return cfg

    def validate(self, cfg: dict) -> None:
        """Reject impossible parameter values (subclasses extend)."""
        for k, v in cfg.items():
            if isinstance(v, int) and not isinstance(v, bool) and k in POSITIVE and v < 1:
                raise UserError(f"{self.name}.{k} must be >= 1, got {v}")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:  # counts, sizes, energies
                raise UserError(f"{self.name}.{k} must be >= 0, got {v}")

    # ---- formats ------------------------------------------------------------------------------------------
    def check_format(self, fmt: formats.Format | str, cfg: dict) -> None:
        """Raise a UserError saying clearly why ``fmt`` does not apply to this design."""
        fmt = formats.get(fmt) if isinstance(fmt, str) else fmt
        kind = "int" if not fmt.is_float else fmt.name
        if kind not in self.formats:
            allowed = ", ".join("fixed point (int<b>)" if k == "int" else k for k in self.formats)
            raise UserError(f"{self.name} does not apply to {fmt.name} data: the design works on {allowed}"
                            f" ({self.title})")

    @staticmethod
    def width(fmt: formats.Format) -> int:
        """B: the parallel operand width a B x B MAC of this format needs (significand bits for floats)."""
        return fmt.nbits if fmt.is_float else fmt.width

    # ---- to implement -------------------------------------------------------------------------------------
    def weight_spec(self, cfg: dict, fmt: formats.Format, wl) -> PackSpec | None:
        raise NotImplementedError

    def act_spec(self, cfg: dict, fmt: formats.Format, wl) -> PackSpec | None:
        return None

    def reads_activations(self, cfg: dict, fmt: formats.Format) -> bool:
        """Whether this configuration's cycles depend on the captured input activations."""
        return self.needs_activations

    def units(self, cfg: dict, fmt: formats.Format) -> float:
        raise NotImplementedError

    def n_pe(self, cfg: dict) -> int:
        raise NotImplementedError

    def simulate(self, layer, wplanes, aplanes, config: dict) -> LayerResult:
        raise NotImplementedError


POSITIVE = {"lanes", "rows", "columns", "tiles", "group", "pes", "window", "keep", "tile",
            "group_size", "pe_width", "channels", "lookahead", "lookaside", "cores"}


def _cast(acc: str, key: str, value, default):
    if isinstance(value, str):
        raw = value.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(value)
            return v
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{acc}.{key}: cannot use {value!r} (expected {type(default).__name__})") from None


def parse_sets(items) -> dict[str, dict]:
    """``['pragmatic.bits_first_stage=2', ...]`` -> ``{'pragmatic': {'bits_first_stage': '2'}}``."""
    out: dict[str, dict] = {}
    for item in items or ():
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"--set expects ACCEL.PARAM=VALUE, got {item!r}")
        lhs, value = item.split("=", 1)
        acc, key = lhs.strip().split(".", 1)
        out.setdefault(acc.strip(), {})[key.strip()] = value
    return out


def ceil_div(a, b):
    return -(-a // b)
