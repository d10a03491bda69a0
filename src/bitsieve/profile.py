"""Bit-sparsity statistics of a model, layer by layer, read off the packed planes.

Every figure is a sum or a max over groups, so layers add up to the whole-model total exactly.
Fractions are 0..1. Zero bits are counted over the significand (float, hidden bit included) or
magnitude (int) bits of real values, after alignment; padding is never counted. Because the counts add up,
a tensor can be packed a chunk of rows at a time: a checkpoint of any size streams in bounded memory.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import formats
from .errors import UserError
from .planes import Planes, pack, pack_raw

FIELDS = ("values", "zero_value_frac", "zero_bit_frac", "mean_essential_bits", "max_essential_bits",
          "plane_occupancy", "zero_plane_frac", "mean_max_plane_ones", "max_max_plane_ones",
          "align_lost_bits", "align_lost_frac")


def counts(p: Planes) -> dict:
    """Additive counts of one tensor's planes (the raw material of every statistic)."""
    ones = p.ones()
    ess = np.bitwise_count(p.magnitudes())
    return {
        "values": p.count,
        "zero_values": p.count - int(np.bitwise_count(p.nonzero & p.valid).sum()),
        "bits": p.count * p.nbits,
        "plane_ones": ones.sum(axis=0),
        "essential_sum": int(ess.sum()),
        "essential_max": int(ess.max(initial=0)),
        "planes": ones.size,
        "zero_planes": int((ones == 0).sum()),
        "groups": p.n_groups,
        "max_plane_ones_sum": int(ones.max(axis=1, initial=0).sum()),
        "max_plane_ones_max": int(ones.max(initial=0)),
        "lost": int(p.lost.sum()),
    }


def merge(cs: list[dict]) -> dict:
    """Counts of several tensors as if they were one."""
    out = {}
    for k in cs[0]:
        vals = [c[k] for c in cs]
        if k.endswith("_max"):
            out[k] = max(vals)
        elif k == "plane_ones":  # planes of different widths: pad at the top
            n = max(len(v) for v in vals)
            out[k] = sum(np.pad(v, (0, n - len(v))) for v in vals)
        else:
            out[k] = sum(vals)
    return out


def stats(c: dict) -> dict:
    """Counts -> the reported statistics."""
    n = max(c["values"], 1)
    ones = int(np.sum(c["plane_ones"]))
    return {
        "values": c["values"],
        "zero_value_frac": c["zero_values"] / n,
        "zero_bit_frac": 1.0 - ones / max(c["bits"], 1),
        "mean_essential_bits": c["essential_sum"] / n,
        "max_essential_bits": c["essential_max"],
        "plane_occupancy": [float(x) / n for x in c["plane_ones"]],
        "zero_plane_frac": c["zero_planes"] / max(c["planes"], 1),
        "mean_max_plane_ones": c["max_plane_ones_sum"] / max(c["groups"], 1),
        "max_max_plane_ones": c["max_plane_ones_max"],
        "align_lost_bits": c["lost"],
        "align_lost_frac": c["lost"] / max(ones + c["lost"], 1),
    }


class ProfileResult(dict):
    """A profile: ``model``, ``format``, ``group``, ``align``, ``layers`` (one row per tensor), ``total``,
    ``notes``; a dict (so ``json.dumps`` works) with table conversions for notebooks."""

    def to_pandas(self):
        """One row per tensor, the statistics as columns (pandas is imported only here: not a dependency)."""
        try:
            import pandas as pd
        except ImportError:
            raise UserError("to_pandas() needs pandas (pip install pandas); to_json() and the dict need nothing")

        return pd.DataFrame(self["layers"])

    def to_json(self) -> str:
        return json.dumps(self, default=str)


def _finite(t, name: str, allow: bool):
    """(tensor with NaN/Inf zeroed, how many) or a UserError when not allowed."""
    import torch

    bad = ~torch.isfinite(t)
    n = int(bad.sum())
    if n and not allow:
        raise UserError(f"layer {name} has {n} non-finite weights (use --allow-nonfinite to zero and count them)")
    if n:
        t = t.masked_fill(bad, 0)
    return t, n


def _pack_torch(t, f: formats.Format, group: int, align: str) -> Planes:
    """A torch chunk in its stored dtype -> Planes. In the stored format the raw bits are read directly (no
    widening, no rounding); any other format goes through float32, which holds fp16/bf16 exactly."""
    import torch

    raw = {("bf16", torch.bfloat16): torch.int16, ("fp16", torch.float16): torch.int16,
           ("fp32", torch.float32): torch.int32}.get((f.name, t.dtype))
    if raw is not None:
        bits = t.contiguous().view(raw).numpy()
        bits = bits.view(np.uint16 if raw == torch.int16 else np.uint32).astype(np.uint32)
        return pack_raw(bits, f, group, align)
    return pack(t.to(torch.float32).numpy(), f, group, align)


def _tensor_row(name, tensor, kind, role, shape, dtype, c, nonfinite):
    return {"name": name, "tensor": tensor, "kind": kind, "role": role, "shape": list(shape), "dtype": dtype,
            "nonfinite": nonfinite, **stats(c)}


def profile(model, format: str | None = None, group: int = 64, align: str = "weight", activations: int = 0,
            allow_nonfinite: bool = False, progress=None) -> ProfileResult:
    """Bit sparsity of every conv/linear weight (and captured activations) of ``model``: a built-in name, a
    path (a safetensors checkpoint file, folder or index is streamed tensor by tensor in bounded memory), a
    live ``torch.nn.Module`` or a loaded ``bitsieve.model.Model``. ``format`` defaults to the format the
    weights are stored in (a bf16 checkpoint is profiled as bf16). ``progress(done, total, name)`` is called
    as values are counted."""
    from . import checkpoint, model as model_mod

    if not 1 <= group <= 64:
        raise UserError(f"--group must be 1..64, got {group}")
    if align not in ("weight", "none"):
        raise UserError(f"--align must be weight or none, got {align!r}")
    if format is not None:
        formats.get(format)  # a bad format fails before any reading
    if isinstance(model, (str, Path)) and str(model) not in _builtins() and checkpoint.is_checkpoint(Path(model)) \
            and Path(model).exists():
        if activations:
            raise UserError(f"cannot capture activations of {model}: a weights file has no architecture to run")
        return _profile_checkpoint(checkpoint.Checkpoint(model), format, group, align, allow_nonfinite, progress)
    m = model if isinstance(model, model_mod.Model) else model_mod.load(
        model, activations=activations, allow_nonfinite=allow_nonfinite)
    f = formats.get(format or m.dtype())
    rows, totals, act_totals = [], [], []
    total_values = sum(layer.weight.size for layer in m.layers)
    done = 0
    for layer in m.layers:
        c = counts(pack(layer.weight, f, group, align))
        totals.append(c)
        rows.append(_tensor_row(layer.name, "weight", layer.kind, layer.role, layer.weight.shape, layer.dtype, c,
                                layer.nonfinite))
        if activations and layer.activation is not None:
            a = counts(pack(layer.activation, f, group, align, axis=-1 if layer.kind == "linear" else 1,
                            per_channel=False))
            act_totals.append(a)
            rows.append(_tensor_row(layer.name, "activation", layer.kind, layer.role, layer.activation.shape,
                                    "fp32", a, 0))
        done += layer.weight.size
        if progress:
            progress(done, total_values, layer.name)
    result = ProfileResult(model=m.name, format=f.name, group=group, align=align, layers=rows,
                           total={"nonfinite": sum(layer.nonfinite for layer in m.layers), **stats(merge(totals))},
                           notes=list(m.notes))
    if act_totals:
        result["activation_total"] = stats(merge(act_totals))
    return result


def _builtins():
    from .zoo import BUILTINS

    return BUILTINS


def _profile_checkpoint(ck, format, group, align, allow_nonfinite, progress) -> ProfileResult:
    """Every conv/linear tensor of a checkpoint, read and packed CHUNK_VALUES values at a time."""
    f = formats.get(format or ck.dtype())
    layers = ck.layers()
    total_values = sum(e.size for e in layers)
    rows, totals, bad_total, done = [], [], 0, 0
    for e in layers:
        parts, bad = [], 0
        shape = e.weight_shape
        for start, stop in e.row_chunks():
            t, n = _finite(ck.read(e, start, stop), e.name, allow_nonfinite)
            bad += n
            parts.append(counts(_pack_torch(t, f, group, align)))
            done += t.numel()
            del t
            if progress:
                progress(done, total_values, e.name)
        c = merge(parts)
        totals.append(c)
        bad_total += bad
        rows.append(_tensor_row(e.name, "weight", e.kind, e.role, shape, checkpoint_format(e.dtype), c, bad))
    skipped = sorted({e.role for e in ck.entries if e.kind == "other"})
    notes = [ck.describe()]
    if skipped:
        notes.append(f"not matmuls, not profiled: {', '.join(skipped)}")
    if any(e.transposed for e in layers):
        notes.append("GPT-2 Conv1D weights are stored [in, out]: read transposed as linear layers")
    return ProfileResult(model=ck.name, format=f.name, group=group, align=align, layers=rows,
                         total={"nonfinite": bad_total, **stats(merge(totals))}, notes=notes)


def checkpoint_format(dtype: str) -> str:
    from .checkpoint import FORMAT_OF

    return FORMAT_OF.get(dtype, dtype.lower())
