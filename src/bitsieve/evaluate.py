"""Accuracy on real data, for the original model and for each bit-level method (``bitsieve eval``).

Tasks (each built-in model has one, ``Builtin.task``):

- ``imagenet``: top-1 / top-5 % on the ILSVRC2012 validation subset (default ``../shared/data/imagenet-val-1300``)
  for efficientnet-lite0/1/2 and mobilenet-v2;
- ``mnist``: top-1 % on the full 10k MNIST test set for lenet-mnist;
- ``faces``: % of the 200 LFW-subset crops (100 faces, 100 not) whose face probability > 0.5 agrees with the
  label, for mtcnn-rnet / mtcnn-onet (and pnet, whose probability map is max-pooled);
- ``stsb``: Spearman x 100 between the cosine similarity of the two sentence embeddings and the gold score on
  the STS-B test set, for minilm-l6 (published reference 82.03).

A *variant* is one method or a composition (``"bbs:k=2+bitx:keep=5"``), or a ``Numerics`` (a hardware
design's own arithmetic, e.g. ``fixed_weights`` + ``fixed_activations``). Weight methods rewrite the
conv/linear weights in place (restored afterwards); ``bitlet`` (last in a composition) runs the forward pass
through the Bitlet PE emulation. Each variant reports its metric, the change against the original, the share
of effectual weight bits removed and the changed-bit count (see ``bitsieve.methods``).

Every model's per-sample outcomes are kept (``Records``), so each variant is compared with the original
*paired*, on the same samples in the same order: a 95 % interval of the metric, a paired-bootstrap interval
of the change, agreement with the original's predictions and McNemar's test (``bitsieve.stats``). On 200 or
1300 samples a change of a few tenths of a point is usually inside these intervals.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch

from . import data, formats, lanes, methods, stats
from . import model as model_mod
from .errors import UserError
from .methods.bitlet_emulate import emulate as bitlet_emulate

TASKS = ("imagenet", "mnist", "faces", "stsb")
METRIC = {"imagenet": "top1", "mnist": "top1", "faces": "accuracy", "stsb": "spearman"}
BATCH = {"imagenet": 16, "mnist": 1000, "faces": 200, "stsb": 64}
ACT_SAMPLES = 8  # real samples whose activations feed the score=exact methods
BOOT, SEED = 2000, 0  # bootstrap resamples and their fixed seed: reruns give the same intervals


@dataclass(frozen=True)
class Numerics:
    """A variant that is not a method spec: ``enter(model)`` returns a context manager under which the loaded
    model computes as some hardware design does (fixed-point operands, an emulated PE, ...). The design layer
    builds these; ``evaluate`` runs them like method variants, paired with the original on the same batches,
    and restores the weights afterwards whatever the context did."""

    label: str
    enter: Callable[[model_mod.Model], ContextManager]


@dataclass
class Variant:
    """One evaluated configuration: its spec, per-sample records and bit counts."""

    spec: str  # canonical spec ('' for the original model, the label for Numerics)
    records: Records
    seconds: float
    steps: list = field(default_factory=list)  # (effectual bits before, after) of every weight step
    changed_bits: int = 0
    layers: list = field(default_factory=list)

    @property
    def bits_removed_frac(self) -> float | None:
        """Share of effectual weight bits removed, compounded over the steps (each step counts bits in its
        own representation, see methods.core.effectual_bits); None without weight steps."""
        if not self.steps or any(b == 0 for b, _ in self.steps):
            return None
        return 1.0 - float(np.prod([a / b for b, a in self.steps]))

    @property
    def metrics(self) -> dict:
        return self.records.metrics()


# ---- data and metrics per task ----------------------------------------------------------------------------
def _batches(task: str, builtin, root, limit):
    """Yield (input batch for the module, labels or gold scores) for a task, preprocessed for the model."""
    from .zoo import efficientnet, lenet, minilm, mobilenet, mtcnn

    name = builtin.name
    if task == "imagenet":
        if name.startswith("efficientnet-"):
            prep = lambda ims: efficientnet.preprocess(ims, name.split("-", 1)[1])  # noqa: E731
        elif name == "mobilenet-v2":
            prep = mobilenet.preprocess
        else:
            raise UserError(f"no ImageNet preprocessing known for {name}")
        buf, labels = [], []
        for image, label in data.imagenet_subset(root, limit):
            buf.append(image)
            labels.append(label)
            if len(buf) == BATCH[task]:
                yield prep(buf), np.array(labels)
                buf, labels = [], []
        if buf:
            yield prep(buf), np.array(labels)
    elif task == "mnist":
        images, labels = data.mnist("test")
        images, labels = images[:limit], labels[:limit]
        for i in range(0, len(images), BATCH[task]):
            yield lenet.preprocess(images[i:i + BATCH[task]]), labels[i:i + BATCH[task]]
    elif task == "faces":
        images, labels = data.faces()
        order = np.argsort(np.arange(len(labels)) % (len(labels) // 2), kind="stable")  # face, non-face, ...
        images, labels = images[order][:limit], labels[order][:limit]
        stage = name.split("-", 1)[1]
        for i in range(0, len(images), BATCH[task]):
            yield mtcnn.preprocess(images[i:i + BATCH[task]], stage), labels[i:i + BATCH[task]]
    elif task == "stsb":
        pairs, scores = data.stsb("test", root)
        pairs, scores = pairs[:limit], scores[:limit]
        for i in range(0, len(pairs), BATCH[task]):
            chunk = pairs[i:i + BATCH[task]]
            pair = (minilm.tokenize([a for a, _ in chunk]), minilm.tokenize([b for _, b in chunk]))
            yield pair, scores[i:i + BATCH[task]]


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return sums[inv] / counts[inv]
    return stats.pearson(ranks(x), ranks(y))


def _spearman100(pairs: np.ndarray) -> float:
    """The STS-B metric of [n, 2] (similarity, gold) rows: what the bootstrap resamples."""
    return 100.0 * spearman(pairs[:, 0], pairs[:, 1])


@dataclass
class Records:
    """Per-sample outcomes of one model on the evaluation samples, in evaluation order. Keeping them (not
    just the totals) is what lets two models be compared paired, sample by sample.

    ``pred``: predicted class (imagenet, mnist), predicted label 0/1 (faces) or cosine similarity of the pair
    (stsb); ``truth``: the label or gold score (also identifies the samples); ``top5``: label among the five
    best classes (imagenet, mnist). ``str()`` stays short, so a JSON dump with ``default=str`` stays small."""

    model: str
    task: str
    pred: np.ndarray = field(repr=False)
    truth: np.ndarray = field(repr=False)
    top5: np.ndarray | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return len(self.truth)

    @property
    def correct(self) -> np.ndarray | None:
        """bool per sample for classification tasks; None for stsb (no right or wrong per pair)."""
        return None if self.task == "stsb" else self.pred == self.truth

    def metrics(self) -> dict:
        """The task's metrics: percent, or Spearman x 100."""
        if self.task == "stsb":
            return {"spearman": 100.0 * spearman(self.pred, self.truth), "n": self.n}
        out = {METRIC[self.task]: 100.0 * int(self.correct.sum()) / self.n}
        if self.top5 is not None:
            out["top5"] = 100.0 * int(self.top5.sum()) / self.n
        return {**out, "n": self.n}


def _run(task: str, m: model_mod.Model, batches) -> Records:
    """Per-sample records of ``m``'s module over cached or fresh batches."""
    module = m.module
    preds, truth, top5 = [], [], []
    with torch.no_grad():
        for x, y in batches:
            if task in ("imagenet", "mnist"):
                t5 = torch.topk(module(x), 5, dim=1).indices.numpy()
                preds.append(t5[:, 0])
                top5.append((t5 == y[:, None]).any(axis=1))
            elif task == "faces":
                prob = module(x)[-1][:, 1]
                prob = prob.flatten(1).amax(1) if prob.ndim > 1 else prob
                preds.append((prob.numpy() > 0.5).astype(np.int64))
            else:
                ea, eb = module(x[0]).numpy(), module(x[1]).numpy()
                preds.append((ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1)))
            truth.append(np.asarray(y))
    return Records(m.name, task, np.concatenate(preds), np.concatenate(truth),
                   np.concatenate(top5) if top5 else None)


# ---- loading ----------------------------------------------------------------------------------------------
def load_model(spec: str) -> model_mod.Model:
    """A runnable model: a built-in name, or a weights file written by ``bitsieve prune`` for a built-in
    (its JSON sidecar names the model; the file's weights replace the built-in's)."""
    from .zoo import BUILTINS

    if spec in BUILTINS:
        return model_mod.load(spec)
    path = Path(spec)
    side = path.with_suffix(".json")
    if path.is_file() and side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read the sidecar {side}: {e}") from None
        base = meta.get("model") if isinstance(meta, dict) else None
        if base in BUILTINS:
            m = model_mod.load(base)
            _load_weights(m, path)
            return m
    if path.exists():
        raise UserError(f"{spec}: eval needs a built-in model (or a file written by `bitsieve prune` from one, "
                        "with its .json sidecar): a weights file alone has no architecture to run")
    return model_mod.load(spec)  # unknown name: the loader's error lists the built-ins


def _load_weights(m: model_mod.Model, path: Path) -> None:
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a bad file
        raise UserError(f"cannot read {path}: {e}") from None
    state = m.module.state_dict()
    for key, value in tensors.items():
        if key in state and tuple(state[key].shape) == value.shape:
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise UserError(f"{path}: tensor {key!r} holds NaN or Inf values")
            with torch.no_grad():
                state[key].copy_(torch.from_numpy(np.ascontiguousarray(value)))
        else:
            raise UserError(f"{path}: tensor {key!r} does not match {m.name}")


# ---- evaluation -------------------------------------------------------------------------------------------
def split_variants(specs: list[str]) -> list[list[str]]:
    """``["bitx:keep=5", "bbs:k=2+bitx:keep=5"]`` -> one list of method specs per variant."""
    out = []
    for s in specs:
        parts = [p.strip() for p in str(s).split("+")]
        if not all(parts):
            raise UserError(f"bad method composition {s!r} (join methods with '+')")
        out.append(parts)
    return out


@contextlib.contextmanager
def applied(m: model_mod.Model, steps: list, counts: dict):
    """Weights of ``m`` rewritten by the weight steps (restored on exit); a Bitlet step runs the module
    under the emulation. ``counts`` receives the bit counts."""
    weight_steps = [s for s in steps if s.method.kind == "weights"]
    fwd = [s for s in steps if s.method.kind == "forward"]
    layers = [layer for layer in m.layers if layer.kind != "other"]
    saved = [layer.weight.copy() for layer in layers]
    try:
        if weight_steps:
            res = methods.apply_model(layers, weight_steps)
            for layer, r in zip(layers, res):
                model_mod.set_weight(m, layer, r.weight)
            counts["steps"] = [(sum(r.stats[i].bits_before for r in res), sum(r.stats[i].bits_after for r in res))
                               for i in range(len(weight_steps))]
            counts["changed_bits"] = sum(r.changed_bits for r in res)
            counts["layers"] = [r.as_dict() for r in res]
        if fwd:
            with bitlet_emulate(fwd[0].params):
                yield
        else:
            yield
    finally:
        for layer, w in zip(layers, saved):
            model_mod.set_weight(m, layer, w)


# ---- fixed-point numerics ---------------------------------------------------------------------------------
def _int_format(fmt_name: str) -> formats.Format:
    fmt = formats.get(fmt_name)
    if fmt.is_float:
        raise UserError(f"fixed-point numerics need an integer format (int<b>, q<m>.<n>), not {fmt.name}")
    return fmt


def _compute_modules(m: model_mod.Model) -> list:
    """The torch module of every conv/linear layer (a built-in's layers are named after their modules)."""
    modules = dict(m.module.named_modules())
    return [modules[layer.name] for layer in m.layers if layer.kind != "other"]


def _module_inputs(batches) -> list:
    """What the module is called with, from evaluation batches (``(input, labels)`` pairs as ``evaluate``
    makes them; an STS-B input holds both sides of its pairs) or from a list of plain module inputs."""
    out = []
    for b in batches:
        x = b[0] if isinstance(b, tuple) else b
        out.extend(x if isinstance(x, tuple) else [x])
    return out


def calibration_inputs(m: model_mod.Model, n_batches: int = 1, data_dir=None) -> list:
    """Module inputs of the first ``n_batches`` evaluation batches of the model's task, preprocessed as
    ``evaluate`` does: the default calibration data of ``fixed_activations``."""
    return _module_inputs(islice(_batches(m.builtin.task, m.builtin, data_dir, None), n_batches))


def _record_amax(amax: list, i: int, module, args) -> None:
    if args[0].numel():
        amax[i] = max(amax[i], float(args[0].detach().abs().max()))


def _quantise_input(scale: float, qmax: int, module, args):
    """Forward pre-hook: the input rounded to the integer grid of ``scale`` (clipped), back in float."""
    return (torch.clamp(torch.round(args[0] / scale), -qmax, qmax) * scale, *args[1:])


@contextlib.contextmanager
def fixed_activations(m: model_mod.Model, fmt_name: str, calib_batches=None):
    """Inputs of every conv/linear module of ``m`` quantised to ``fmt_name`` while the context is open, as a
    fixed-point datapath would see them.

    Symmetric, one scale per layer = max|input| over the calibration data / qmax, round to nearest, clip,
    dequantise; a ``q<m>.<n>`` format uses its own fixed scale and saturates. ``calib_batches``: a few
    evaluation batches or plain module inputs (default: the first evaluation batch, ``calibration_inputs``).
    Calibration runs the model as it computes when the context is entered."""
    fmt = _int_format(fmt_name)
    inputs = calibration_inputs(m) if calib_batches is None else _module_inputs(calib_batches)
    modules = _compute_modules(m)
    amax = [0.0] * len(modules)
    hooks = [mod.register_forward_pre_hook(partial(_record_amax, amax, i)) for i, mod in enumerate(modules)]
    try:
        with torch.no_grad():
            for x in inputs:
                m.module(x)
    finally:
        for h in hooks:
            h.remove()
    # the format's own rule turns each layer's range into its scale (max/qmax; fixed point: 2^-n)
    scales = [float(fmt.quantize(np.float64(a), axis=None)[1]) for a in amax]
    hooks = [mod.register_forward_pre_hook(partial(_quantise_input, s, fmt.qmax)) for mod, s in zip(modules, scales)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _on_grid(w: np.ndarray, ref: np.ndarray, fmt: formats.Format) -> np.ndarray:
    """``w`` rounded to the per-output-channel grid of ``fmt`` whose scales come from ``ref`` (decision 2:
    max|ref| / qmax per channel; ``lanes.quantized``, the simulators' rule), clipped and dequantised as float32
    with ``w``'s sign, so that a -0.0 survives: weights already on this grid come back bit for bit."""
    sym = formats.get(fmt.name[:-2]) if fmt.twos else fmt  # symmetric range, two's complement or not
    q, scale = lanes.quantized(w, sym, ref)
    v = q * (float(fmt.scale_of()) if scale is None else scale.reshape([-1] + [1] * (q.ndim - 1)))
    return np.copysign(v, w).astype(np.float32)


@contextlib.contextmanager
def fixed_weights(m: model_mod.Model, fmt_name: str, reference: list | None = None):
    """Every conv/linear weight of ``m`` quantised per output channel to ``fmt_name`` while the context is
    open (restored on exit).

    The scales come from ``reference`` (one array per conv/linear layer, in ``m.layers`` order), else from the
    weights as they are on entry. Pass the original weights when a software method has already put pruned
    weights on the original's grid: scales re-derived from the pruned weights (whose channel maximum may have
    shrunk) would re-round them and undo part of the pruning; with the original scales they are unchanged."""
    fmt = _int_format(fmt_name)
    layers = [layer for layer in m.layers if layer.kind != "other"]
    saved = [layer.weight.copy() for layer in layers]
    refs = saved if reference is None else [np.asarray(r) for r in reference]
    if len(refs) != len(layers) or any(r.size != layer.weight.size for r, layer in zip(refs, layers)):
        raise UserError(f"fixed_weights: reference must hold one weight per conv/linear layer of {m.name}")
    try:
        for layer, ref in zip(layers, refs):
            layer.weight[...] = _on_grid(layer.weight, ref.reshape(layer.weight.shape), fmt)
        yield
    finally:
        for layer, w in zip(layers, saved):
            layer.weight[...] = w


def _variant(m: model_mod.Model, task: str, batches, plan) -> Variant:
    """Run one variant: method steps (a list) or a Numerics. Weights are restored after either."""
    numerics = isinstance(plan, Numerics)
    counts: dict = {}
    t0 = time.perf_counter()
    with applied(m, [] if numerics else plan, counts), (plan.enter(m) if numerics else contextlib.nullcontext()):
        records = _run(task, m, batches)
    return Variant(plan.label if numerics else "+".join(s.spec() for s in plan), records,
                   time.perf_counter() - t0, counts.get("steps", []), counts.get("changed_bits", 0),
                   counts.get("layers", []))


def _check_original(original, m: model_mod.Model, task: str, batches) -> None:
    """A cached original must be this model's records on exactly these samples, or pairing means nothing."""
    truth = np.concatenate([np.asarray(y) for _, y in batches])
    if not isinstance(original, Records) or original.model != m.name or original.task != task:
        raise UserError(f"original= must be the '_records' of an earlier {m.name} {task} evaluation")
    if original.n != len(truth) or not np.array_equal(original.truth, truth):
        raise UserError(f"original= holds records of {original.n} other samples than these {len(truth)} "
                        "(evaluate with the same data and --limit)")


def _compare(base: Records, v: Records) -> dict:
    """Interval of the variant's metric and paired statistics of its change against the original.

    Proportions get a Wilson interval and, for the change, a paired bootstrap of the mean correct flag plus
    an exact McNemar test; Spearman gets bootstrap intervals of itself and of the change (resampling the
    same pairs for both models), and agreement is the Pearson correlation of the two models' similarities."""
    if v.task == "stsb":
        pairs = np.column_stack([v.pred, v.truth])
        lo, hi = stats.bootstrap(pairs, _spearman100, BOOT, SEED)
        dlo, dhi = stats.paired_bootstrap(np.column_stack([base.pred, base.truth]), pairs, _spearman100,
                                          BOOT, SEED)
        return {"ci_low": lo, "ci_high": hi, "delta_ci_low": dlo, "delta_ci_high": dhi,
                "agreement": stats.pearson(v.pred, base.pred), "mcnemar_p": None}
    c0, c = base.correct, v.correct
    lo, hi = stats.wilson(int(c.sum()), v.n)
    dlo, dhi = stats.paired_bootstrap(c0, c, "mean", BOOT, SEED)
    return {"ci_low": 100.0 * lo, "ci_high": 100.0 * hi, "delta_ci_low": 100.0 * dlo,
            "delta_ci_high": 100.0 * dhi, "agreement": stats.agreement(v.pred, base.pred),
            "mcnemar_p": stats.mcnemar_p(int((c0 & ~c).sum()), int((~c0 & c).sum()))}


def evaluate(spec: str, variants: list | None = None, *, task: str | None = None, data_dir=None,
             limit: int | None = None, overrides: dict | None = None, progress=None,
             original: Records | None = None) -> dict:
    """Evaluate the original model and every variant (method specs or ``Numerics``), all paired on the same
    samples in the same order.

    Each row has the metric (``value``), its change (``delta``), ``n``, ``ci_low``/``ci_high`` (95 %),
    ``delta_ci_low``/``delta_ci_high`` (95 % paired bootstrap, fixed seed), ``agreement`` with the original,
    ``mcnemar_p`` (classification tasks, else None), ``saturated``, bit counts and ``seconds``.
    ``saturated`` is True when the original's interval reaches 99.5 or it gets every sample right: such a task
    has no room to show a small loss, so a near-zero change on it says little.

    ``original``: the ``_records`` of an earlier call on the same model and samples; the original is then not
    run again (its row's ``seconds`` is 0). The result returns the original's records under ``_records``."""
    m = load_model(spec)
    if m.module is None or m.builtin is None:
        raise UserError(f"{spec}: eval needs a built-in model")
    own = m.builtin.task
    task = task or own
    if task not in TASKS:
        raise UserError(f"unknown task {task!r} ({', '.join(TASKS)})")
    if task != own:
        raise UserError(f"{m.name} is evaluated on {own}, not {task}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UserError(f"--data {data_dir}: no such folder")
    plans = [(v.label, v) if isinstance(v, Numerics)
             else (str(v), methods.parse_specs(split_variants([v])[0], overrides)) for v in variants or []]
    if any(s.method.needs_activations(s.params) for _, p in plans if isinstance(p, list) for s in p):
        model_mod.capture_activations(m, ACT_SAMPLES)  # for scores that use the mean |activation|
    batches = list(_batches(task, m.builtin, data_dir, limit))  # preprocessed once, reused by every variant
    if not batches:
        raise UserError(f"no {task} data to evaluate")
    if original is None:
        results = [_variant(m, task, batches, [])]
    else:
        _check_original(original, m, task, batches)
        results = [Variant("", original, 0.0)]
    if progress:
        progress(results[0])
    for _, plan in plans:
        results.append(_variant(m, task, batches, plan))
        if progress:
            progress(results[-1])
    key = METRIC[task]
    base_records = results[0].records
    base = results[0].metrics[key]
    compared = [_compare(base_records, v.records) for v in results]
    correct = base_records.correct
    saturated = compared[0]["ci_high"] >= 99.5 or (correct is not None and bool(correct.all()))
    rows = []
    for label, v, cmp in zip([""] + [label for label, _ in plans], results, compared):
        metrics = v.metrics
        rows.append({"method": label, "spec": v.spec, "metric": key, "value": metrics[key],
                     "delta": metrics[key] - base, **{k: x for k, x in metrics.items() if k != key},
                     **cmp, "saturated": saturated,
                     "bits_removed_frac": v.bits_removed_frac, "changed_bits": v.changed_bits,
                     "seconds": v.seconds})
    return {"model": m.name, "task": task, "metric": key, "samples": base_records.n, "original": base,
            "saturated": saturated, "variants": rows, "_records": base_records}


def tidy_rows(result: dict) -> list[dict]:
    """The eval result as rows of the shared results table (``bitsieve.results``); a key a row lacks (no
    top-5 on this task, no weight steps) gives no row."""
    from .results import row

    names = {"value": "accuracy", "delta": "accuracy_delta", "top5": "accuracy_top5",
             "bits_removed_frac": "bits_removed_frac", "ci_low": "accuracy_ci_low", "ci_high": "accuracy_ci_high",
             "n": "n_samples", "delta_ci_low": "accuracy_delta_ci_low", "delta_ci_high": "accuracy_delta_ci_high",
             "agreement": "agreement"}
    return [row(result["model"], "*", metric, v[k], method=v["method"])
            for v in result["variants"] for k, metric in names.items() if v.get(k) is not None]


# ---- the Python API: a live module on the user's own data ------------------------------------------------------
class EvalResult(dict):
    """``bitsieve.evaluate``'s table: ``model``, ``metric``, ``samples``, ``variants`` (one row per variant, the
    original first); a dict (so ``json.dumps`` works) with table conversions for notebooks."""

    def to_pandas(self):
        """One row per variant (pandas is imported only here: not a dependency)."""
        try:
            import pandas as pd
        except ImportError:
            raise UserError("to_pandas() needs pandas (pip install pandas); to_json() and the dict need nothing")
        return pd.DataFrame(self["variants"])

    def to_json(self) -> str:
        return json.dumps(self, default=str)


def module_steps(m: model_mod.Model, spec: str, fmt: str | None, group: int | None) -> list:
    """The steps of one variant (methods composed with '+') for a live module. Without ``fmt`` a method that
    reads a float format reads the module's own dtype (pruning bf16 weights in fp32 planes would prune bits
    that are not there)."""
    specs = split_variants([spec])[0]
    steps = methods.parse_specs(specs, {"format": fmt, "group": group})
    if fmt is None:
        steps = [methods.parse_spec(p, {"format": m.dtype(), "group": group})
                 if "format=" not in p and formats.get(st.params.get("format", "int8")).is_float else st
                 for p, st in zip(specs, steps)]
    return steps


def _top1(output, target):
    """Per-sample correctness of the arg-max class, and the predictions (for agreement)."""
    logits = getattr(output, "logits", output)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if not isinstance(logits, torch.Tensor):
        raise UserError(f"metric='top1' needs the model to return logits, got {type(output).__name__}")
    pred = logits.argmax(-1).reshape(-1).cpu().numpy()
    truth = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target).reshape(-1)
    if pred.shape != truth.shape:
        raise UserError(f"metric='top1': {pred.size} predictions for {truth.size} labels")
    return pred == truth, pred


def _split(batch):
    """A DataLoader batch -> (positional args, keyword args, target): ``(inputs, target)`` pairs (inputs a tensor
    or a tuple of them) or dicts with a ``labels``/``label`` entry (the rest are the module's keyword args)."""
    if isinstance(batch, dict):
        key = next((k for k in ("labels", "label") if k in batch), None)
        if key is None:
            raise UserError("a dict batch needs a 'labels' entry")
        return (), {k: v for k, v in batch.items() if k != key}, batch[key]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        return (tuple(x) if isinstance(x, (tuple, list)) else (x,)), {}, y
    raise UserError("each batch must be (inputs, targets) or a dict with 'labels'")


def _module_scores(m: model_mod.Model, batches, score) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-sample scores (and predictions, where the metric has them) of the module over the cached batches."""
    scores, preds = [], []
    device = next(m.module.parameters()).device
    move = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x  # noqa: E731 (batches stay where they are)
    with torch.no_grad():
        for args, kwargs, target in batches:
            out = score(m.module(*map(move, args), **{k: move(v) for k, v in kwargs.items()}), target)
            s, p = out if isinstance(out, tuple) else (out, None)
            scores.append(np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s, dtype=np.float64).reshape(-1))
            if p is not None:
                preds.append(p)
    return np.concatenate(scores), (np.concatenate(preds) if preds else None)


def evaluate_module(model, dataloader, metric="top1", methods=(), format: str | None = None,
                    group: int | None = None) -> EvalResult:
    """The metric of a live ``nn.Module`` on the user's data for the original weights and for each method
    variant (``"bitx:keep=4"``; several composed with ``+``), all paired on the same samples in the same order
    (the batches are read once and reused; the weights are restored after each variant).

    ``metric``: ``"top1"`` (arg-max of the logits against integer labels, in %), ``"next-token top1"`` (a causal
    language model's logits against its next input token, batches of token ids as both input and target) or a
    callable ``(output, target) -> one value per sample`` (its mean is reported; 0/1 values are proportions). Each row has
    ``value``, ``n``, the 95 % interval ``ci_low``/``ci_high`` (Wilson for proportions, else bootstrap), the
    paired change ``delta`` with its 95 % paired-bootstrap interval, ``agreement`` with the original's
    predictions (top1) and McNemar's ``mcnemar_p`` (proportions), bit counts and ``seconds``."""
    if not isinstance(model, torch.nn.Module):
        raise UserError("bitsieve.evaluate takes a live torch.nn.Module (use `bitsieve eval` for a built-in)")
    if isinstance(metric, str) and metric in METRICS:
        (score, scale), name = METRICS[metric], metric
    elif callable(metric):
        score, scale, name = metric, 1.0, getattr(metric, "__name__", "metric")
    else:
        raise UserError(f"metric must be one of {', '.join(METRICS)} or a callable (output, target) -> per-sample "
                        f"values, got {metric!r}")
    m = model_mod.load(model)
    plans = [(spec, module_steps(m, spec, format, group)) for spec in ([methods] if isinstance(methods, str)
                                                                       else list(methods))]
    batches = [_split(b) for b in dataloader]
    if not batches:
        raise UserError("the dataloader yields no batches")
    training = model.training
    model.eval()
    runs = []
    try:
        for label, steps in [("", []), *plans]:
            counts: dict = {}
            t0 = time.perf_counter()
            with applied(m, steps, counts):
                scores, preds = _module_scores(m, batches, score)
            runs.append((label, steps, scores, preds, counts, time.perf_counter() - t0))
    finally:
        model.train(training)
    return _table(m.name, name, scale, runs)


def _table(model: str, name: str, scale: float, runs: list) -> EvalResult:
    """Rows of per-sample results ``runs`` = [(label, steps, scores, predictions, bit counts, seconds)], the
    original first: the metric with its interval and the change paired with the original."""
    base, base_pred = runs[0][2], runs[0][3]
    rows = []
    for label, steps, s, pred, counts, secs in runs:
        if s.shape != base.shape:
            raise UserError(f"variant {label!r} gave {s.size} per-sample values, the original {base.size}")
        binary = bool(np.isin(s, (0.0, 1.0)).all() and np.isin(base, (0.0, 1.0)).all())
        lo, hi = stats.wilson(int(s.sum()), s.size) if binary else stats.bootstrap(s, "mean", BOOT, SEED)
        dlo, dhi = stats.paired_bootstrap(base, s, "mean", BOOT, SEED)
        v = Variant("+".join(st.spec() for st in steps), None, secs, counts.get("steps", []),
                    counts.get("changed_bits", 0))
        rows.append({"method": label, "spec": v.spec, "metric": name, "value": scale * float(s.mean()),
                     "n": int(s.size), "ci_low": scale * lo, "ci_high": scale * hi,
                     "delta": scale * float(s.mean() - base.mean()), "delta_ci_low": scale * dlo,
                     "delta_ci_high": scale * dhi,
                     "agreement": stats.agreement(pred, base_pred) if pred is not None and base_pred is not None
                     else None,
                     "mcnemar_p": stats.mcnemar_p(int((base.astype(bool) & ~s.astype(bool)).sum()),
                                                  int((~base.astype(bool) & s.astype(bool)).sum())) if binary else None,
                     "bits_removed_frac": v.bits_removed_frac, "changed_bits": v.changed_bits, "seconds": secs})
    return EvalResult(model=model, metric=name, samples=int(base.size), original=rows[0]["value"], variants=rows)


def _next_token(output, ids):
    """A causal language model's next-token top-1 on its own input: the logits at each position against the
    token that follows (one sample per predicted token)."""
    logits = getattr(output, "logits", output)
    pred = logits[:, :-1].argmax(-1).reshape(-1).cpu().numpy()
    return pred == ids[:, 1:].reshape(-1).cpu().numpy(), pred


METRICS = {"top1": (_top1, 100.0), "next-token top1": (_next_token, 100.0)}  # per-sample scores, scale to report


def evaluate_user(spec: str, variants: list, inputs, labels=None, overrides: dict | None = None) -> EvalResult:
    """``bitsieve eval`` on a user model run on the user's data: a Hugging Face folder (built by transformers;
    without ``labels``, next-token top-1 of a language model on its input), or an ONNX file (the reference
    evaluator, with each variant's weights put in its graph) against ``labels`` (one class per input)."""
    from . import capture
    from .checkpoint import Checkpoint, is_checkpoint

    from .zoo import BUILTINS

    if spec in BUILTINS:
        raise UserError(f"{spec} runs on its own data: --inputs is for user models (.onnx, Hugging Face folders)")
    overrides = overrides or {}
    fmt, group = overrides.get("format"), overrides.get("group")
    path = Path(spec)
    if not path.exists():
        raise UserError(f"cannot read {spec}: no such file")
    data = capture.read_inputs(inputs)
    y = None if labels is None else capture.read_inputs(labels)
    if y is not None and (not isinstance(y, np.ndarray) or not np.issubdtype(y.dtype, np.integer)):
        raise UserError("--labels must be an .npy array of integer classes, one per input")
    if path.suffix.lower() == ".onnx":
        if y is None:
            raise UserError("an ONNX model is evaluated against --labels LABELS.npy (one class per input)")
        m = model_mod.load(path)
        layers = [layer for layer in m.layers if layer.kind != "other"]
        graph = capture.OnnxGraph(path, layers, data)
        runs = []
        for label in ["", *variants]:
            steps = module_steps(m, label, fmt, group) if label else []
            if any(st.method.kind != "weights" for st in steps):
                raise UserError(f"{label}: an ONNX model runs in the reference evaluator, so only weight methods apply")
            t0 = time.perf_counter()
            res = methods.apply_model(layers, steps) if steps else []
            out = graph.outputs({id(layer): r.weight for layer, r in zip(layers, res)})[0]
            scores, pred = _top1(torch.from_numpy(np.asarray(out)), y)
            counts = {"steps": [(sum(r.stats[i].bits_before for r in res), sum(r.stats[i].bits_after for r in res))
                                for i in range(len(steps))], "changed_bits": sum(r.changed_bits for r in res)}
            runs.append((label, steps, scores.astype(np.float64), pred, counts, time.perf_counter() - t0))
        result = _table(m.name, "top1", 100.0, runs)
    elif is_checkpoint(path) and (path if path.is_dir() else path.parent).joinpath("config.json").is_file():
        ck = Checkpoint(path)
        module = capture.hf_module(ck)
        kw = capture.hf_inputs(ck, module, data)
        if y is None:
            if "input_ids" not in kw:
                raise UserError("without --labels only a language model's next-token top-1 is scored: give "
                                "--labels LABELS.npy")
            result = evaluate_module(module, [{**kw, "labels": kw["input_ids"]}], "next-token top1", variants,
                                     fmt, group)
        else:
            result = evaluate_module(module, [{**kw, "labels": torch.as_tensor(y)}], "top1", variants, fmt, group)
        result["model"] = ck.name
    else:
        raise UserError(f"{spec} holds weights but no architecture, so it cannot run on --inputs (export the model "
                        "to ONNX or save it as a Hugging Face folder with config.json)")
    result["task"] = Path(str(inputs)).name if isinstance(inputs, (str, Path)) else "the given inputs"
    return result
