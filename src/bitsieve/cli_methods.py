"""Commands registered on the bitsieve app (see cli.py): ``methods``, ``prune`` and ``eval``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.table import Table

from .cli import app, out
from .errors import UserError


def _overrides(fmt: Optional[str], group: Optional[int]) -> dict:
    return {"format": fmt, "group": group}


@app.command("methods")
def methods_cmd(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List every bit-level method and every accelerator model, with its source and confidence."""
    from .accel import ACCELERATORS
    from .methods import REGISTRY
    from .train import bitpruner, scflp

    rows = []
    for m in REGISTRY.values():
        rows.append({"kind": "method", "name": m.name, "confidence": m.confidence, "source": m.source,
                     "description": m.description, "applies": m.kind,
                     "params": [{"name": p.name, "type": p.kind, "default": p.default, "doc": p.doc,
                                 **({"choices": list(p.choices)} if p.choices else {})} for p in m.params]})
    for mod, name, what in ((bitpruner, "bitpruner", "training: progressive, load-balanced pruning of weight bits"),
                            (scflp, "scflp", "training: stochastic coarse-fine pruning + adaptive zero skipping")):
        rows.append({"kind": "training", "name": name, "confidence": "reconstructed (patent/abstract)",
                     "source": mod.SOURCE, "description": what + " (bitsieve train)"})
    from .designs import Design

    for name, acc in ACCELERATORS.items():
        d = Design.make(name)
        num = d.numerics()
        rows.append({"kind": "accelerator", "name": name, "confidence": str(acc.confidence),
                     "source": " ".join(str(acc.source).split()), "description": " ".join(str(acc.doc).split()),
                     "design": {"format": d.fmt, "computes": num.describe(), "note": num.note}})
    if json_out:
        print(json.dumps(rows, indent=1, default=str))
        return
    t = Table("kind", "name", "confidence", "source", "description", title="bit-level methods and accelerators")
    for r in rows:
        desc = r["description"] + (f" As a design it runs {r['design']['computes']}." if r.get("design") else "")
        t.add_row(r["kind"], r["name"], r["confidence"], r["source"], desc)
    out.print(t)
    for r in rows:
        if r.get("params"):
            ps = ", ".join(f"{p['name']}={p['default']}" for p in r["params"])
            out.print(f"[bold]{r['name']}[/] parameters: {ps}")


def _steps(specs: list[str], fmt, group):
    from .evaluate import split_variants
    from .methods import parse_specs

    if not specs:
        raise UserError("give at least one --method NAME[:key=value,...]")
    flat = [s for v in split_variants(specs) for s in v]
    return parse_specs(flat, _overrides(fmt, group))


def _file_tensors(path: Path) -> dict:
    """The original flat tensors of a .safetensors / .pt file (to write back with the new weights)."""
    from . import model as model_mod

    if path.suffix.lower() == ".safetensors":
        return {k: v.detach().cpu() for k, v in model_mod._safetensors(path)}
    if path.suffix.lower() in (".pt", ".pth"):
        return {k: v.detach().cpu() for k, v in model_mod._torch_file(path)}
    return {}


@app.command()
def prune(
    model: str = typer.Argument(..., help="Built-in name or a .safetensors/.pt/.pth/.onnx file."),
    method: List[str] = typer.Option(..., "--method", help="NAME[:key=value,...]; repeat (or join with '+') "
                                                           "to compose in order."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Default number format for methods that read one."),
    group: Optional[int] = typer.Option(None, "--group", help="Default group size for methods that have one."),
    output: str = typer.Option(..., "-o", "--output", help="Output .safetensors (a .json sidecar goes beside it)."),
    activations: int = typer.Option(8, "--activations", help="Samples captured for methods that score with "
                                                              "activations (bitx/bitxpro score=exact)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files."),
    json_out: bool = typer.Option(False, "--json", help="Print the sidecar JSON."),
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Zero and count NaN/Inf weights."),
):
    """Rewrite a model's conv/linear weights with bit-level methods and save them (+ a JSON sidecar)."""
    import torch
    from safetensors.torch import save

    from . import methods as methods_mod
    from . import model as model_mod
    from .io import check_outputs, write_atomic

    if activations < 0:
        raise UserError(f"--activations must be >= 0, got {activations}")
    steps = _steps(method, fmt, group)
    if any(s.method.kind != "weights" for s in steps):
        raise UserError("bitlet changes the forward pass, not the weights: use it with `bitsieve eval`")
    outp = Path(output)
    if outp.suffix.lower() != ".safetensors":
        raise UserError(f"-o must name a .safetensors file, got {output}")
    side = outp.with_suffix(".json")
    check_outputs([outp, side], force)
    need_acts = any(s.method.needs_activations(s.params) for s in steps)
    m = model_mod.load(model, activations=activations if need_acts else 0, allow_nonfinite=allow_nonfinite)
    layers = [layer for layer in m.layers if layer.kind != "other"]
    res = methods_mod.apply_model(layers, steps)
    if m.module is not None:  # a built-in: the whole state dict with the new weights (layer weights are views)
        for layer, r in zip(layers, res):
            layer.weight[...] = r.weight.reshape(layer.weight.shape)
        tensors = {k: v.detach().cpu().contiguous() for k, v in m.module.state_dict().items()}
    else:
        tensors = _file_tensors(Path(model))
        for r in res:
            names = (f"{r.name}.weight", r.name)
            key = next((k for k in names if k in tensors and tensors[k].numel() == r.weight.size), names[0])
            shape = tuple(tensors[key].shape) if key in tensors else r.weight.shape
            tensors[key] = torch.from_numpy(np.ascontiguousarray(r.weight.reshape(shape)))
    total_before = sum(r.stats[0].bits_before for r in res)
    sidecar = {
        "model": m.name if m.builtin is not None else str(model),
        "source": str(model),
        "methods": [s.spec() for s in steps],
        "parameters": [{"method": s.name, **s.params} for s in steps],
        "layers": [r.as_dict() for r in res],
        "total": {"changed_bits": sum(r.changed_bits for r in res), "bits_before": total_before,
                  "bits_after": sum(r.stats[-1].bits_after for r in res),
                  "weights": int(sum(r.weight.size for r in res))},
    }
    write_atomic(outp, save(tensors), force=force)
    write_atomic(side, json.dumps(sidecar, indent=1, default=str), force=force)
    if json_out:
        print(json.dumps(sidecar, default=str))
        return
    t = Table("layer", "shape", "changed bits", "bits before", "bits after",
              title=f"{m.name}: {' then '.join(s.spec() for s in steps)}")
    for r in res:
        t.add_row(r.name, "x".join(map(str, r.weight.shape)), f"{r.changed_bits:,}", f"{r.stats[0].bits_before:,}",
                  f"{r.stats[-1].bits_after:,}")
    tt = sidecar["total"]
    t.add_row("TOTAL", "", f"{tt['changed_bits']:,}", f"{tt['bits_before']:,}", f"{tt['bits_after']:,}", style="bold")
    out.print(t)
    out.print(f"wrote {outp} and {side}")


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="Built-in name (or a file written by `bitsieve prune` from one)."),
    method: List[str] = typer.Option([], "--method", help="A variant to evaluate: NAME[:key=value,...], several "
                                                          "composed with '+'. Repeat for more variants."),
    task: Optional[str] = typer.Option(None, "--task", help="imagenet, mnist, faces or stsb (default: the model's)."),
    data_dir: Optional[str] = typer.Option(None, "--data", help="Data folder (ImageNet subset / STS-B)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N samples."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Default number format for methods that read one."),
    group: Optional[int] = typer.Option(None, "--group", help="Default group size for methods that have one."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Accuracy of the original model and of each method variant on real data."""
    from .evaluate import evaluate, tidy_rows

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    result = evaluate(model, method, task=task, data_dir=data_dir, limit=limit, overrides=_overrides(fmt, group))
    if json_out:
        print(json.dumps({**result, "rows": tidy_rows(result)}, default=str))
        return
    unit = {"top1": "top-1 %", "accuracy": "accuracy %", "spearman": "Spearman x100"}[result["metric"]]
    t = Table("method", unit, "change", "bits removed %", "changed bits", "seconds",
              title=f"{result['model']} on {result['task']} ({result['samples']} samples)")
    for v in result["variants"]:
        br = "" if v["bits_removed_frac"] is None else f"{100 * v['bits_removed_frac']:.1f}"
        t.add_row(v["method"] or "(original)", f"{v['value']:.2f}", f"{v['delta']:+.2f}", br,
                  f"{v['changed_bits']:,}", f"{v['seconds']:.1f}")
    out.print(t)
