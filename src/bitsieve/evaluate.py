"""Accuracy on real data, for the original model and for each bit-level method (``bitsieve eval``).

Tasks (each built-in model has one, ``Builtin.task``):

- ``imagenet``: top-1 / top-5 % on the ILSVRC2012 validation subset (default ``../shared/data/imagenet-val-1300``)
  for efficientnet-lite0/1/2 and mobilenet-v2;
- ``mnist``: top-1 % on the full 10k MNIST test set for lenet-mnist;
- ``faces``: % of the 200 LFW-subset crops (100 faces, 100 not) whose face probability > 0.5 agrees with the
  label, for mtcnn-rnet / mtcnn-onet (and pnet, whose probability map is max-pooled);
- ``stsb``: Spearman x 100 between the cosine similarity of the two sentence embeddings and the gold score on
  the STS-B test set, for minilm-l6 (published reference 82.03).

A *variant* is one method or a composition (``"bbs:k=2+bitx:keep=5"``). Weight methods rewrite the
conv/linear weights in place (restored afterwards); ``bitlet`` (last in a composition) runs the forward pass
through the Bitlet PE emulation. Each variant reports its metric, the change against the original, the share
of effectual weight bits removed and the changed-bit count (see ``bitsieve.methods``).
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import data, methods
from . import model as model_mod
from .errors import UserError
from .methods import bitlet as bitlet_mod

TASKS = ("imagenet", "mnist", "faces", "stsb")
METRIC = {"imagenet": "top1", "mnist": "top1", "faces": "accuracy", "stsb": "spearman"}
BATCH = {"imagenet": 16, "mnist": 1000, "faces": 200, "stsb": 64}
ACT_SAMPLES = 8  # real samples whose activations feed the score=exact methods


@dataclass
class Variant:
    """One evaluated configuration: its spec, metrics and bit counts."""

    spec: str  # canonical spec ('' for the original model)
    metrics: dict
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
    a, b = ranks(x), ranks(y)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den else float("nan")


def _run(task: str, module, batches) -> dict:
    """The task's metrics (percent, or Spearman x 100) of ``module`` over cached or fresh batches."""
    with torch.no_grad():
        if task in ("imagenet", "mnist"):
            n = top1 = top5 = 0
            for x, y in batches:
                logits = module(x)
                t5 = torch.topk(logits, 5, dim=1).indices.numpy()
                top1 += int((t5[:, 0] == y).sum())
                top5 += int((t5 == y[:, None]).any(axis=1).sum())
                n += len(y)
            return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": n}
        if task == "faces":
            n = ok = 0
            for x, y in batches:
                prob = module(x)[-1][:, 1]
                prob = prob.flatten(1).amax(1) if prob.ndim > 1 else prob
                ok += int(((prob.numpy() > 0.5).astype(np.int64) == y).sum())
                n += len(y)
            return {"accuracy": 100.0 * ok / n, "n": n}
        sims, gold = [], []
        for (a, b), s in batches:
            ea, eb = module(a).numpy(), module(b).numpy()
            sims.append((ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1)))
            gold.append(s)
        gold = np.concatenate(gold)
        return {"spearman": 100.0 * spearman(np.concatenate(sims), gold), "n": len(gold)}


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
        base = meta.get("model")
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
                layer.weight[...] = r.weight.reshape(layer.weight.shape)
            counts["steps"] = [(sum(r.stats[i].bits_before for r in res), sum(r.stats[i].bits_after for r in res))
                               for i in range(len(weight_steps))]
            counts["changed_bits"] = sum(r.changed_bits for r in res)
            counts["layers"] = [r.as_dict() for r in res]
        if fwd:
            with bitlet_mod.emulate(fwd[0].params):
                yield
        else:
            yield
    finally:
        for layer, w in zip(layers, saved):
            layer.weight[...] = w


def evaluate(spec: str, variants: list[str] | None = None, *, task: str | None = None, data_dir=None,
             limit: int | None = None, overrides: dict | None = None, progress=None) -> dict:
    """Evaluate the original model and every variant; returns a JSON-able dict (see module docstring)."""
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
    parsed = [methods.parse_specs(v, overrides) for v in split_variants(variants or [])]
    if any(s.method.needs_activations(s.params) for steps in parsed for s in steps):
        model_mod.capture_activations(m, ACT_SAMPLES)  # for scores that use the mean |activation|
    batches = list(_batches(task, m.builtin, data_dir, limit))  # preprocessed once, reused by every variant
    if not batches:
        raise UserError(f"no {task} data to evaluate")
    results = []
    labels = [""] + [str(v) for v in (variants or [])]
    for steps in [[]] + parsed:
        counts: dict = {}
        t0 = time.perf_counter()
        with applied(m, steps, counts):
            metrics = _run(task, m.module, batches)
        v = Variant("+".join(s.spec() for s in steps), metrics, time.perf_counter() - t0,
                    counts.get("steps", []), counts.get("changed_bits", 0), counts.get("layers", []))
        results.append(v)
        if progress:
            progress(v)
    key = METRIC[task]
    base = results[0].metrics[key]
    rows = []
    for label, v in zip(labels, results):
        rows.append({"method": label, "spec": v.spec, "metric": key, "value": v.metrics[key],
                     "delta": v.metrics[key] - base,
                     **{k: x for k, x in v.metrics.items() if k not in (key,)},
                     "bits_removed_frac": v.bits_removed_frac, "changed_bits": v.changed_bits,
                     "seconds": v.seconds})
    return {"model": m.name, "task": task, "metric": key, "samples": results[0].metrics["n"],
            "original": base, "variants": rows}


def tidy_rows(result: dict) -> list[dict]:
    """The eval result as rows of the shared results table (``bitsieve.results``)."""
    from .results import row

    out = []
    for v in result["variants"]:
        out.append(row(result["model"], "*", "accuracy", v["value"], method=v["method"]))
        out.append(row(result["model"], "*", "accuracy_delta", v["delta"], method=v["method"]))
        if "top5" in v:
            out.append(row(result["model"], "*", "accuracy_top5", v["top5"], method=v["method"]))
        if v["bits_removed_frac"] is not None:
            out.append(row(result["model"], "*", "bits_removed_frac", v["bits_removed_frac"], method=v["method"]))
    return out
