"""Run a model's layers through accelerator models: cycles, speed-ups, energy and area, as tidy rows.

Streaming, layer by layer: each conv/linear layer becomes a ``tiling.Workload``; its weights (after any
``--method`` steps, applied with ``bitsieve.methods``) are packed once per (method, format, group,
alignment, layout) in the lanes each accelerator reads, its input activations (captured on real inputs by
``bitsieve.model.load(spec, activations=N)``) once per packing the activation-serial designs need; every
accelerator then costs the layer and the next layer replaces it.

Rows (``bitsieve.results`` table: model, layer, method, accel, format, group, metric, value), per layer and
for the whole model (layer '*'):

- ``cycles``: compute cycles; ``units``: the array's peak 1b x 1b products per cycle;
- ``speedup``: over ``dense`` at equal units (``accel.base`` docstring), same method;
  ``speedup_vs_<baseline>`` over ``--baseline`` likewise;
- ``work_bound``: the work-reduction bound B*B*MACs / effectual bit products (a speed-up never exceeds it on
  exactly tiled layers);
- ``energy_pj`` and ``energy_pj.compute|sram|dram``; ``dram_cycles``; ``area_mm2`` (whole model);
- ``bottleneck_share`` and ``bottleneck.<label>`` (value: that share) naming what set the time;
- ``latency_cycles`` (per inference) and ``speedup_memory``: the same with memory time (``memory_rows``).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import formats, lanes
from .accel import ACCELERATORS, PackSpec
from .accel import energy as energy_mod
from .accel import tiling
from .accel.base import LayerResult
from .errors import UserError
from .planes import Planes, pack
from .results import WHOLE, row


# ---- packing --------------------------------------------------------------------------------------------
def pack_weights(wl: tiling.Workload, spec: PackSpec, weight=None) -> Planes:
    """Weights (``weight`` overrides the layer's, e.g. after a method, quantised on the layer's own grid) in
    the lanes ``spec`` asks for, through the one grouping function every method also uses."""
    w = wl.weight if weight is None else np.asarray(weight, dtype=np.float32).reshape(wl.weight.shape)
    p, _ = lanes.pack_weight(w, spec.fmt, spec.group, spec.layout, spec.align,
                             reference=None if weight is None else wl.weight, round_to=spec.round_to)
    return p


def pack_acts(wl: tiling.Workload, spec: PackSpec) -> Planes:
    """Input activations as channel bricks of ``spec.group`` lanes ([Nb, Cg, Hp, Wp] grouped along Cg)."""
    fmt = formats.get(spec.fmt)
    a = tiling.act_grouped(wl, pad=spec.pad)
    return pack(a, fmt, group=spec.group, align="none" if not fmt.is_float else spec.align, axis=1,
                per_channel=False)


@dataclass
class Run:
    """What to simulate."""

    accels: list[str]
    fmt: str = "int16"
    methods: list[str] = field(default_factory=list)  # each entry: a spec, or several joined by '+'
    baseline: str | None = None
    sets: dict = field(default_factory=dict)  # {accel: {param: value}}
    seed: int = 0
    inferences: int = 1  # inputs in the simulated batch: energy rows are per inference


def _label(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


class Simulator:
    """Holds the configured accelerators for one run and costs layers one at a time."""

    def __init__(self, run: Run):
        self.run = run
        self.fmt = formats.get(run.fmt)
        names = list(dict.fromkeys(["dense", *run.accels, *([run.baseline] if run.baseline else [])]))
        for n in list(run.sets):
            if n not in ACCELERATORS:
                raise UserError(f"--set names unknown accelerator {n!r} (known: {', '.join(ACCELERATORS)})")
        self.accels = {n: ACCELERATORS[n] for n in names}
        self.labels: dict[str, str] = {}  # bottleneck slug -> readable label
        self.cfg = {}
        for n, a in self.accels.items():
            cfg = a.configure(run.sets.get(n))
            if "seed" in cfg and "seed" not in run.sets.get(n, {}):
                cfg["seed"] = run.seed
            cfg["format"] = self.fmt.name
            a.check_format(self.fmt, cfg)
            self.cfg[n] = cfg

    def layer(self, wl: tiling.Workload, weight=None) -> dict[str, LayerResult]:
        """Every accelerator on one layer (weights ``weight`` if given, e.g. after a method)."""
        return layer_results(self, wl, weight)

    def energy(self, name: str, wl, res: LayerResult) -> dict:
        """Energy per inference (the batch's over ``run.inferences`` inputs) and the batch's DRAM cycles."""
        return energy_mod.estimate(self.accels[name], self.cfg[name], self.fmt, wl, res,
                                   inferences=self.run.inferences)

    def area(self, name: str) -> float:
        return energy_mod.area_mm2(self.accels[name], self.cfg[name], self.fmt)


def layer_rows(sim: Simulator, model: str, method: str, wl, results: dict, group: int = 0) -> list[dict]:
    """Tidy rows of one layer for every accelerator (speed-ups against dense and the baseline)."""
    rows = []
    fmt = sim.fmt.name
    d = results["dense"]
    base = results.get(sim.run.baseline) if sim.run.baseline else None
    B = sim.accels["dense"].width(sim.fmt)
    for n, r in results.items():
        if n not in sim.run.accels and n != "dense":
            continue

        def add(metric, value, _n=n):
            rows.append(row(model, wl.name, metric, value, method=method, accel=_n, format=fmt, group=group))

        e = sim.energy(n, wl, r)
        add("cycles", r.cycles)
        add("units", r.units)
        add("macs", wl.macs)
        add("dense_cycles", r.dense_cycles)
        add("speedup", r.dense_cycles / r.cycles if r.cycles > 0 else float("inf"))
        add("speedup_iso", _speedup(d, r))
        if base is not None:
            add(f"speedup_vs_{sim.run.baseline}", _ratio(r, base))
        add("work_bound", (B * B * wl.macs / r.effectual) if r.effectual > 0 else float("inf"))
        add("effectual_bitops", r.effectual)
        add("energy_pj", e["total"])
        for part in ("compute", "sram", "dram"):
            add(f"energy_pj.{part}", e[part])
        add("dram_cycles", e["dram_cycles"])
        add("bottleneck_share", r.bottleneck_share)
        slug = _label(r.bottleneck)
        sim.labels[slug] = r.bottleneck
        add(f"bottleneck.{slug}", r.bottleneck_share)
    return rows


def _ratio(r: LayerResult, base: LayerResult) -> float:
    """Speed-up of r over base, each against its own same-dataflow dense reference."""
    sr = r.dense_cycles / r.cycles if r.cycles > 0 else float("inf")
    sb = base.dense_cycles / base.cycles if base.cycles > 0 else float("inf")
    return sr / sb


def _speedup(base: LayerResult, r: LayerResult) -> float:
    return (base.cycles * base.units) / (r.cycles * r.units) if r.cycles > 0 else float("inf")


def whole_rows(sim: Simulator, model: str, method: str, layer_rows_: list[dict], group: int = 0) -> list[dict]:
    """Whole-model rows from the per-layer rows of one method (sums; speed-ups from summed cycles)."""
    fmt = sim.fmt.name
    by = {}
    for r in layer_rows_:
        by.setdefault(r["accel"], {}).setdefault(r["metric"], []).append(r["value"])
    out = []
    dc = sum(by["dense"]["cycles"]) if "dense" in by else 0.0
    du = by["dense"]["units"][0] if "dense" in by else 1.0
    bname = sim.run.baseline
    for n, m in by.items():
        def add(metric, value, _n=n):
            out.append(row(model, WHOLE, metric, value, method=method, accel=_n, format=fmt, group=group))

        cyc = float(sum(m["cycles"]))
        units = m["units"][0]
        add("cycles", cyc)
        add("units", units)
        add("macs", float(sum(m["macs"])))
        dn = float(sum(m["dense_cycles"]))
        add("dense_cycles", dn)
        add("speedup", dn / cyc if cyc else float("inf"))
        add("speedup_iso", dc * du / (cyc * units) if cyc else float("inf"))
        if bname and bname in by:
            bsp = float(sum(by[bname]["dense_cycles"])) / float(sum(by[bname]["cycles"]))
            add(f"speedup_vs_{bname}", (dn / cyc) / bsp if cyc else float("inf"))
        eff = float(sum(m["effectual_bitops"]))
        B = sim.accels["dense"].width(sim.fmt)
        add("work_bound", B * B * float(sum(m["macs"])) / eff if eff else float("inf"))
        add("effectual_bitops", eff)
        for k in ("energy_pj", "energy_pj.compute", "energy_pj.sram", "energy_pj.dram", "dram_cycles"):
            add(k, float(sum(m[k])))
        add("area_mm2", sim.area(n))
        # bottleneck of the model: the label weighted by the cycles it governed
        labels = {}
        for r in layer_rows_:
            if r["accel"] == n and r["metric"].startswith("bottleneck."):
                labels.setdefault(r["metric"], []).append(r["value"])
        if labels:
            cyc_l = m["cycles"]
            score = {k: 0.0 for k in labels}
            i = 0
            for r in layer_rows_:
                if r["accel"] == n and r["metric"].startswith("bottleneck."):
                    score[r["metric"]] += cyc_l[i]
                    i += 1
            top = max(score, key=score.get)
            share = float(np.average(m["bottleneck_share"], weights=np.maximum(cyc_l, 1e-9)))
            add("bottleneck_share", share)
            add(top, score[top] / max(cyc, 1e-9))
    return out


# ---- whole models ---------------------------------------------------------------------------------------
def _method_steps(spec: str, fmt: str):
    from . import methods

    parts = [s for s in spec.split("+") if s.strip()]
    return methods.parse_specs(parts, {"format": fmt})


def simulate_model(model, run: Run, *, activations: int = 1, inputs=None, tokens: int | None = None,
                   input_shape: str | None = None, progress=None) -> dict:
    """Simulate every conv/linear layer of a model on every accelerator of ``run``, for the unmodified
    model ('') and every method spec. ``model``: a built-in name or a path (``inputs``: the user's data to run
    it on, see ``bitsieve.capture``), or a loaded ``bitsieve.model.Model``. ``tokens`` / ``input_shape``: the
    GEMM and conv input sizes a weights file lacks. Returns {"rows": [...], "layers": [per-layer info],
    "seconds": {...}, "notes": [...]}; rows include ``latency_cycles`` and ``speedup_memory`` (``memory_rows``)."""
    from . import methods
    from . import model as model_mod
    from .zoo import BUILTINS

    from .checkpoint import is_checkpoint

    sim = Simulator(run)
    needs_acts = any(a.reads_activations(sim.cfg[n], sim.fmt) for n, a in sim.accels.items())
    variants = {}
    for spec in run.methods:
        steps = _method_steps(spec, sim.fmt.name)
        variants["+".join(s.spec() for s in steps)] = steps
    if isinstance(model, model_mod.Model):
        m = model
    elif inputs is not None:
        m = model_mod.load(model, inputs=inputs)
    elif model not in BUILTINS and is_checkpoint(Path(model)) and Path(model).exists():
        m = None  # a safetensors checkpoint: streamed, one tensor in memory at a time
    else:
        # a weights file has no architecture to run: its layers have shapes only where the file says so (or
        # --tokens / --input-shape assume), and the designs that read activations say they need --inputs
        with_acts = needs_acts and model in BUILTINS
        m = model_mod.load(model, activations=activations if with_acts else 0, tokens=tokens,
                           input_shape=input_shape)
    if m is None:
        m, count, pairs = _streamed(model, variants, tokens, input_shape)
    else:
        layers = [layer for layer in m.layers if layer.kind in ("conv", "linear")]
        if not layers:
            raise UserError(f"{m.name} has no conv or linear layers to simulate")
        new = {key: [r.weight for r in methods.apply_model(layers, steps)] for key, steps in variants.items()}
        count, pairs = len(layers), ((L, {k: w[i] for k, w in new.items()}) for i, L in enumerate(layers))
        sim.run.inferences = next((int(L.activation.shape[0]) for L in layers if L.activation is not None), 1)
    rows, info = [], []
    per_method_rows = {k: [] for k in ["", *variants]}
    seconds = {n: 0.0 for n in sim.accels}
    for i, (layer, weights) in enumerate(pairs):
        wl = tiling.from_layer(layer)
        info.append({"name": wl.name, "kind": wl.kind, "shape": wl.describe(), "macs": wl.macs})
        acache: dict = {}
        for key in per_method_rows:
            res = layer_results(sim, wl, weights.get(key), acache, seconds=seconds)
            lr = layer_rows(sim, m.name, key, wl, res)
            per_method_rows[key].extend(lr)
            rows.extend(lr)
        if not isinstance(model, model_mod.Model):
            layer.activation = None  # streaming: this layer's activations are no longer needed
        if progress:
            progress(i + 1, count, layer.name)
    for key, lr in per_method_rows.items():
        rows.extend(memory_rows(m.name, key, lr, sim.run.inferences))
        rows.extend(whole_rows(sim, m.name, key, lr))
    return {"model": m.name, "format": sim.fmt.name, "rows": rows, "layers": info, "seconds": seconds,
            "labels": dict(sim.labels), "notes": list(m.notes), "inferences": sim.run.inferences,
            "accels": {n: {"source": a.source, "confidence": a.confidence, "config": {
                k: v for k, v in sim.cfg[n].items() if k != "format"}} for n, a in sim.accels.items()}}


def _streamed(path: str, variants: dict, tokens: int | None, input_shape: str | None):
    """A checkpoint's layers one at a time, each with its weights after every method variant: (Model shell,
    layer count, generator of (layer, {variant: weights})). BBS's beta ranks channels over the whole model as
    ``methods.apply_model`` does, from a first streamed pass (``checkpoint._global_channels``)."""
    import torch

    from . import checkpoint
    from . import model as model_mod
    from .methods import apply_tensor

    ck = checkpoint.Checkpoint(path)
    todo = {e.key: e for e in ck.layers()}

    def chunks(steps):
        def gen(e, upto: int, sens: dict):
            for start, stop in e.row_chunks():
                w, st = ck.read(e, start, stop).to(torch.float32).numpy(), []
                for k, step in enumerate(steps[:upto]):
                    w, more = apply_tensor(w, [step], sensitive=sens[k][e.key][start:stop] if k in sens else None)
                    st += more
                yield (start, stop), None, w, st, 0
        return gen

    sens = {key: checkpoint._global_channels(steps, todo, chunks(steps)) for key, steps in variants.items()}
    keys = {e.name: e.key for e in todo.values()}
    shell, count, layers = model_mod.stream_checkpoint(path, tokens, input_shape)

    def pairs():
        for layer in layers:
            out = {}
            for key, steps in variants.items():
                w = layer.weight
                for k, step in enumerate(steps):
                    w, _ = apply_tensor(w, [step], sensitive=sens[key][k][keys[layer.name]] if k in sens[key] else None,
                                        groups=layer.groups)
                out[key] = w
            yield layer, out

    return shell, count, pairs()


def memory_rows(model: str, method: str, layer_rows_: list[dict], inferences: int) -> list[dict]:
    """Latency with memory time, per layer and whole model, next to the compute-only figures.

    A layer takes max(compute cycles, DRAM cycles), its weights, inputs and outputs streamed once at the DRAM
    bandwidth of ``accel/data/memory.toml`` (a per-layer roofline, as ``compare``'s latency). ``latency_cycles``
    is per inference; ``speedup_memory`` is the same array's dense latency (its dense cycles against the dense
    design's DRAM cycles, weights uncompressed) over the design's: where a layer is memory-bound (a decoding
    GEMV) skipping bits that only cuts compute gains nothing, and this says so where ``speedup`` does not."""
    per: dict = {}
    for r in layer_rows_:
        per.setdefault((r["accel"], r["layer"]), {})[r["metric"]] = r["value"]
    if not per:
        return []
    fmt, group = layer_rows_[0]["format"], layer_rows_[0]["group"]
    n = max(int(inferences), 1)
    out, total = [], {}
    for (accel, layer), v in per.items():
        dram_dense = per.get(("dense", layer), v)["dram_cycles"]
        lat, ref = max(v["cycles"], v["dram_cycles"]), max(v["dense_cycles"], dram_dense)
        t = total.setdefault(accel, [0.0, 0.0])
        t[0], t[1] = t[0] + lat, t[1] + ref
        out.append(row(model, layer, "latency_cycles", lat / n, method=method, accel=accel, format=fmt, group=group))
        out.append(row(model, layer, "speedup_memory", ref / lat if lat else float("inf"), method=method,
                       accel=accel, format=fmt, group=group))
    for accel, (lat, ref) in total.items():
        out.append(row(model, WHOLE, "latency_cycles", lat / n, method=method, accel=accel, format=fmt, group=group))
        out.append(row(model, WHOLE, "speedup_memory", ref / lat if lat else float("inf"), method=method,
                       accel=accel, format=fmt, group=group))
    return out


def layer_results(sim: Simulator, wl, weight=None, acache: dict | None = None, seconds: dict | None = None) -> dict:
    """Every accelerator of ``sim`` on one layer (weights ``weight`` if given, e.g. after a method). Packed
    weights are shared by the designs that read the same lanes; ``acache`` shares packed activations between
    calls on the same layer (several methods); ``seconds`` accumulates time per accelerator."""
    wcache, out = {}, {}
    acache = {} if acache is None else acache
    for n, a in sim.accels.items():
        t0 = time.perf_counter()
        cfg = sim.cfg[n]
        ws = a.weight_spec(cfg, sim.fmt, wl)
        wp = None
        if ws is not None:
            if ws not in wcache:
                wcache[ws] = pack_weights(wl, ws, weight)
            wp = wcache[ws]
        as_ = a.act_spec(cfg, sim.fmt, wl)
        ap = None
        if as_ is not None:
            if wl.activation is None:
                raise UserError(f"{n} reads the input activations and layer {wl.name} has none captured "
                                "(run the model on your data with --inputs FILE (an .onnx file or a Hugging Face "
                                "folder), or choose weight-only accelerators such as bitx, bitwave, bitvert)")
            if as_ not in acache:
                acache[as_] = pack_acts(wl, as_)
            ap = acache[as_]
        out[n] = a.simulate(wl, wp, ap, cfg)
        if seconds is not None:
            seconds[n] = seconds.get(n, 0.0) + time.perf_counter() - t0
    return out
