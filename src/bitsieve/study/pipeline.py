"""What the units of a study do: the shared pipeline of sweep tasks (load a model once, apply every method once,
profile, simulate layer by layer, measure accuracy) and the pieces ``compare`` units run (accuracy records of a
design's numerics, one design simulated with its methods, the activation profile)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import results
from ..errors import UserError
from .sweepfile import Task


def run_task(task: Task, progress: Callable[[str, float], None] | None = None) -> list[dict]:
    """Every row of one sweep task (model, format, group): load the model once (activations captured once),
    apply every method once (in the task's format and group where it can), measure the methods' accuracy and
    each design's accuracy as it computes, decompose every tensor once for the profile, and run the
    accelerators layer by layer (activations packed once per layer for all methods)."""
    from .. import formats
    from .. import model as model_mod

    say = progress or (lambda stage, frac: None)
    s = Setting(task.format, task.group, task.align, tuple(applicable_accels(task.accels, formats.get(task.format))),
                tuple(task.designs))
    steps = {spec: resolve(spec, task.format, task.group) for spec in task.methods}
    need_acts = any(_needs_acts(st) for st in steps.values()) or _accels_need_acts(s.accels)
    say("loading model", 0.0)
    m = model_mod.load(task.model, activations=task.activations if need_acts else 0)
    layers = [L for L in m.layers if L.kind in ("conv", "linear")]
    if not layers:
        raise UserError(f"{task.model} has no conv or linear layers")
    weights: dict[str, list | None] = {"": None}  # new weights once per method (emulations change none)
    for i, (spec, st) in enumerate(steps.items()):
        say(f"method {spec}", 0.05 + 0.1 * i / max(len(steps), 1))
        if all(x.method.kind == "weights" for x in st):
            weights[spec] = apply(layers, st)
    rows: list[dict] = []
    recs: dict = {}
    if task.eval_limit != 0:
        items = {}
        for d in setting_designs(s):
            num = d.numerics()
            items.setdefault(num.key(), (num.key(), num, d, ""))
        recs = accuracy_records(task.model, list(items.values()), task.eval_limit,
                                lambda f: say("design accuracy", 0.15 + 0.15 * f))
        rows += accuracy_rows(task.model, steps, task.eval_limit, [s], lambda f: say("accuracy", 0.3 + 0.2 * f),
                              original=recs["original"])  # the original is run once for designs and methods
    say(f"profile {s.format} g{s.group}", 0.5)
    rows += profile_setting(m.name, layers, weights, s)
    if s.accels:
        sim = simulate_setting(m.name, layers, weights, s, task.seed,
                               lambda f: say(f"accelerators {s.format}", 0.5 + 0.5 * f))
        rows += sim + design_rows(m.name, s, sim, recs, weights, task.activations if need_acts else 1)
    say("done", 1.0)
    return rows


def setting_designs(s: "Setting") -> list:
    """The designs a sweep setting runs: each accelerator at its defaults, or its [designs] variants."""
    from ..designs import Design

    varied = {a for a, _ in s.designs}
    return [Design(a, s.format) for a in s.accels if a not in varied] + \
        [Design(a, s.format, tuple(ov)) for a, ov in s.designs if a in s.accels]


def design_rows(model: str, s: "Setting", sim_rows, recs: dict, weights: dict, inferences: int) -> list[dict]:
    """Design rows of a sweep setting, as compare writes them: accuracy as the design computes (method ''),
    latency, iso-area speed-up, TOPS/W, GOPS/mm2 (every method). Dense is named 'dense' in sweeps."""
    whole, per_layer = sim_index(sim_rows)
    base = recs.get("original")
    out = []
    for d in setting_designs(s):
        name = "dense" if d.accel == "dense" and not d.sets else d.name
        for method in weights:
            mt = performance_metrics(whole, per_layer, name, method, "dense", inferences)
            rec = recs.get(d.numerics().key()) if method == "" and base is not None else None
            if rec is not None:
                mt = {**accuracy_metrics(base, rec), **mt}
            out += [results.row(model, results.WHOLE, k, v, method=method, accel=name, format=s.format,
                                group=s.group) for k, v in mt.items()]
    if base is not None:
        out += [results.row(model, results.WHOLE, k, v, accel="original", format=s.format, group=s.group)
                for k, v in original_metrics(base).items()]
    return out


@dataclass(frozen=True)
class Setting:
    """Data format, group size and alignment that the profile and the accelerators read, and the accelerators."""

    format: str
    group: int = 64
    align: str = "weight"
    accels: tuple[str, ...] = ()
    designs: tuple = ()  # design variants ((accel, ((param, value), ...)), ...), see sweepfile.Task


def applicable_accels(names, fmt) -> list[str]:
    """The accelerators of ``names`` whose design takes data in ``fmt`` (an fp32 sweep skips integer-only
    designs such as Stripes; dense is always there as the baseline when any accelerator runs)."""
    if not names:
        return []
    from ..accel import ACCELERATORS

    ok = []
    for n in names:
        a = ACCELERATORS[n]
        try:
            a.check_format(fmt, a.configure())
        except UserError:
            continue
        ok.append(n)
    return ok


def _needs_acts(steps) -> bool:
    return any(x.method.kind != "weights" or x.method.needs_activations(x.params) for x in steps)


def _accels_need_acts(names) -> bool:
    if not names:
        return False
    from ..accel import ACCELERATORS

    return any(ACCELERATORS[n].needs_activations for n in ["dense", *names])


def accuracy_rows(model_spec: str, steps: dict, limit, settings, say=None, original=None) -> list[dict]:
    """``accuracy`` (the task's metric: top-1 %, Spearman x100...), ``accuracy_delta`` against the original and,
    where the task has it, ``accuracy_top5``, for the original model ('') and every method; layer '*', accel ''.
    Repeated for each setting, so every (format, group) section of a report has them. ``original``: the
    original model's records on the same samples, already measured."""
    from .. import evaluate

    labels = list(steps)
    specs = ["+".join(x.spec() for x in st) for st in steps.values()]
    n = len(specs) + 1
    done = [0]

    def tick(_v):
        done[0] += 1
        if say:
            say(done[0] / n)

    res = evaluate.evaluate(model_spec, specs, limit=limit, progress=tick, original=original)
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


def profile_setting(model: str, layers, weights: dict, s: Setting) -> list[dict]:
    from .. import formats
    from ..planes import pack

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


def simulate_setting(model: str, layers, weights: dict, s: Setting, seed: int, say) -> list[dict]:
    """Every accelerator on every layer for the original weights and each method's, streaming layer by layer.
    Design variants (``s.designs``) get a simulator each, their rows named after the design (``bitx[keep=4]``)."""
    from .. import simulate as sim_mod
    from ..accel import tiling
    from ..designs import Design

    n = next((int(L.activation.shape[0]) for L in layers if getattr(L, "activation", None) is not None), 1)
    varied = {a for a, _ in s.designs}
    runs = [(sim_mod.Simulator(sim_mod.Run(accels=[a for a in s.accels if a not in varied], fmt=s.format,
                                           seed=seed, inferences=n)), {})]
    for a, ov in s.designs:
        if a in s.accels:
            sim = sim_mod.Simulator(sim_mod.Run(accels=[a], fmt=s.format, seed=seed, inferences=n, sets={a: dict(ov)}))
            runs.append((sim, {a: Design(a, s.format, tuple(ov)).name}))
    per_label: dict = {(k, i): [] for k in weights for i in range(len(runs))}
    for li, L in enumerate(layers):
        wl = tiling.from_layer(L)
        acache: dict = {}
        for label, ws in weights.items():
            for i, (sim, _) in enumerate(runs):
                res = sim_mod.layer_results(sim, wl, None if ws is None else ws[li], acache)
                per_label[(label, i)] += sim_mod.layer_rows(sim, model, label, wl, res, group=s.group)
        say((li + 1) / len(layers))
    rows = []
    for (label, i), lr in per_label.items():
        sim, names = runs[i]
        out = lr + sim_mod.whole_rows(sim, model, label, lr, group=s.group)
        if i:  # the dense baseline once, from the first simulator
            out = [r for r in out if r["accel"] != "dense"]
        for r in out:
            r["accel"] = names.get(r["accel"], r["accel"])
        rows += out
    return rows


def resolve(spec: str, fmt: str | None, group: int | None):
    """The method steps of a spec for data in ``fmt`` with groups of ``group``: a method reads the sweep's
    format and group where it can, else its own defaults (e.g. BitWave, an integer method, in an fp32 sweep).
    Values written in the spec always win. ``fmt=None``: the method's own defaults throughout."""
    from .. import methods

    parts = spec.split("+")
    tries = [{"format": fmt, "group": group}, {"group": group}, {"format": fmt}, {}] if fmt else [{}]
    err = None
    for ov in tries:
        try:
            return methods.parse_specs(parts, overrides=ov)
        except UserError as e:
            err = err or e
    raise err


def apply(layers, steps) -> list:
    from .. import methods

    return [r.weight for r in methods.apply_model(layers, steps)]


def pack_like(weight, base):
    """Pack transformed weights exactly as ``base`` was packed. Integer formats keep the original
    per-channel scale: re-deriving it from pruned weights would re-quantise them and undo the pruning."""
    from ..planes import pack, pack_raw

    if base.scale is None:
        return pack(weight, base.fmt, base.group, base.align, base.axis)
    w = np.asarray(weight, dtype=np.float64)
    sc = np.asarray(base.scale, dtype=np.float64).reshape([-1] + [1] * (w.ndim - 1))
    q = np.clip(np.rint(w / sc), -base.fmt.qmax, base.fmt.qmax).astype(np.int64)
    return pack_raw(base.fmt.encode(q), base.fmt, base.group, base.align, base.axis, scale=base.scale)


def profile_rows(task: Task, model: str, layers, planes: dict, method: str, base: dict | None) -> list[dict]:
    """Bit-sparsity rows of a model's weights (per layer and whole model) in the task's format and group."""

    from ..profile import counts, merge, stats

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


# ---- compare units --------------------------------------------------------------------------------------------
def accuracy_records(model: str, items, limit, say) -> dict:
    """{numerics key: evaluate.Records} of the original ('original') and of every design numerics (with its
    software method, if any) on the same samples in the same order, so every change can be paired."""
    from .. import designs, evaluate

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


def simulate_design(model: str, layers, d, methods: tuple, activations: int, seed: int,
                    say) -> list[dict]:
    """Per-layer and whole-model rows of design ``d`` (method '') and of each method composed before it."""
    from .. import methods as methods_mod
    from .. import simulate as sim_mod
    from ..accel import tiling

    sim = sim_mod.Simulator(sim_mod.Run(accels=[d.accel], fmt=d.fmt, sets={d.accel: d.overrides} if d.sets else {},
                                        seed=seed, inferences=max(activations, 1)))
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


def activation_profile_rows(model: str, layers) -> list[dict]:
    """Per-layer bit profile of the captured input activations (int16, per-layer scale), whole model too."""
    from .. import formats
    from ..planes import pack
    from ..profile import counts, merge, stats

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


def sensitivity_records(model: str, d, layers: int, limit, say) -> dict:
    """Per-layer sensitivity of design ``d``'s runtime weight numerics: {layer name: Records} with only that
    layer computed as the design does, and the original under 'original', on the same samples. The layers: half
    with the most MACs (where the cycles are), half with the largest share of their weight bits removed by the
    design (where the damage is likely)."""
    from .. import evaluate, methods
    from .. import model as model_mod
    from ..accel import tiling

    m = evaluate.load_model(model)
    model_mod.capture_activations(m, 1)  # the layers' input shapes, for their MACs
    conv = [L for L in m.layers if L.kind in ("conv", "linear")]
    macs = {L.name: tiling.from_layer(L).macs for L in conv}
    for L in conv:
        L.activation = None
    steps = methods.parse_specs(list(d.numerics().weights))
    removed = {L.name: 1.0 - r.stats[0].bits_after / max(r.stats[0].bits_before, 1)
               for L, r in zip(conv, methods.apply_model(conv, steps))}
    top = sorted(conv, key=lambda L: -macs[L.name])[:(layers + 1) // 2]
    top += [L for L in sorted(conv, key=lambda L: -removed[L.name]) if L not in top][:layers - len(top)]
    task = m.builtin.task
    batches = list(evaluate._batches(task, m.builtin, None, limit))
    if not batches:
        raise UserError(f"no {task} data to evaluate")
    out = {"original": evaluate._run(task, m, batches)}
    for i, L in enumerate(top):
        saved = L.weight.copy()
        try:
            L.weight[...] = methods.apply_model([L], steps)[0].weight.reshape(L.weight.shape)
            out[L.name] = evaluate._run(task, m, batches)
        finally:
            L.weight[...] = saved
        say((i + 1) / len(top))
    return out


# ---- design rows (compare and sweep alike) -------------------------------------------------------------------
CLOCK_GHZ = 1.0  # for GOPS/mm2 when a design states no clock: every design at the same 1 GHz


def accuracy_metrics(base, rec) -> dict:
    """A design's accuracy against the original on the same samples: the metric with its interval and sample
    count, the paired change with its interval, agreement with the original's predictions."""
    from .. import evaluate

    key = evaluate.METRIC[rec.task]
    c = evaluate._compare(base, rec)
    v = rec.metrics()[key]
    return {"accuracy": v, "accuracy_ci_low": c["ci_low"], "accuracy_ci_high": c["ci_high"], "n_samples": rec.n,
            "accuracy_delta": v - base.metrics()[key], "accuracy_delta_ci_low": c["delta_ci_low"],
            "accuracy_delta_ci_high": c["delta_ci_high"], "agreement": c["agreement"]}


def original_metrics(base) -> dict:
    from .. import evaluate

    c = evaluate._compare(base, base)
    out = {"accuracy": base.metrics()[evaluate.METRIC[base.task]], "accuracy_ci_low": c["ci_low"],
           "accuracy_ci_high": c["ci_high"], "n_samples": base.n}
    out["saturated"] = float(out["accuracy_ci_high"] >= 99.5 or (base.correct is not None and bool(base.correct.all())))
    return out


def sim_index(rows) -> tuple[dict, dict]:
    """Whole-model values {(accel, method, metric): value} and per-layer {(accel, method): {layer: {metric}}}
    (cycles, DRAM cycles, dense cycles) of simulator rows."""
    whole = {(r["accel"], r["method"], r["metric"]): r["value"] for r in rows if r["layer"] == results.WHOLE}
    per_layer: dict = {}
    for r in rows:
        if r["layer"] != results.WHOLE and r["metric"] in ("cycles", "dram_cycles", "dense_cycles"):
            per_layer.setdefault((r["accel"], r["method"]), {}).setdefault(r["layer"], {})[r["metric"]] = r["value"]
    return whole, per_layer


def latency(layers: dict) -> float:
    """Per-layer roofline: a layer takes max(compute cycles, DRAM cycles); the model the sum."""
    return float(sum(max(v.get("cycles", 0.0), v.get("dram_cycles", 0.0)) for v in layers.values()))


def performance_metrics(whole: dict, per_layer: dict, name: str, method: str, dense: str, inferences: int) -> dict:
    """Latency per inference (per-layer roofline), its speed-up over the dense design ``dense``, the same scaled
    to equal area, TOPS/W (energy rows are per inference) and GOPS/mm2 at CLOCK_GHZ."""
    out = {}
    lat = latency(per_layer.get((name, method), {}))
    if not lat:
        return out
    n = max(int(inferences), 1)
    out["latency_cycles"] = lat / n
    lat_d = latency(per_layer.get((dense, ""), {}))
    a, ad = whole.get((name, method, "area_mm2")), whole.get((dense, "", "area_mm2"))
    if lat_d and a and ad:
        out["speedup_latency"] = lat_d / lat
        out["speedup_iso_area"] = (lat_d / lat) * (ad / a)
    en, macs = whole.get((name, method, "energy_pj")), whole.get((name, method, "macs"))
    if en and macs:
        out["tops_per_w"] = 2.0 * macs / n / en  # ops per pJ = TOPS/W; a MAC is 2 ops
        if a:
            out["gops_per_mm2"] = 2.0 * macs / (lat / CLOCK_GHZ) / a
    return out
