"""Commands registered on the bitsieve app (see cli.py): ``models``, ``profile``, ``methods``, ``prune`` and
``eval``. Nothing heavy is imported at module level: ``bitsieve models`` and ``--help`` never load torch."""
from __future__ import annotations

import csv
import io
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .cli import app, out
from .errors import UserError

SPARK = " ▁▂▃▄▅▆▇█"
# The built-in models as `bitsieve models` prints them: a static table, so listing them does not import torch
# (bitsieve.zoo loads torch); tests check it against bitsieve.zoo.BUILTINS.
MODELS = (
    ("efficientnet-lite0", "imagenet", 4_652_008, "EfficientNet-Lite0 ImageNet classifier (224px, ReLU6)"),
    ("efficientnet-lite1", "imagenet", 5_416_680, "EfficientNet-Lite1 ImageNet classifier (240px, ReLU6)"),
    ("efficientnet-lite2", "imagenet", 6_092_072, "EfficientNet-Lite2 ImageNet classifier (260px, ReLU6)"),
    ("mobilenet-v2", "imagenet", 3_504_872, "MobileNetV2 ImageNet classifier (torchvision IMAGENET1K_V1 weights)"),
    ("mtcnn-pnet", "faces", 6_632, "MTCNN proposal stage, face/non-face on 12x12 crops (PReLU CNN)"),
    ("mtcnn-rnet", "faces", 100_178, "MTCNN refinement stage, face/non-face on 24x24 crops (PReLU CNN)"),
    ("mtcnn-onet", "faces", 389_040, "MTCNN output stage, face/non-face on 48x48 crops (PReLU CNN)"),
    ("minilm-l6", "stsb", 22_713_216,
     "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384-d mean-pooled embeddings)"),
    ("lenet-mnist", "mnist", 61_706, "LeNet-5-style CNN trained on MNIST by scripts/train_lenet.py"),
)


def _spark(fracs) -> str:
    """Occupancy per significance as a tiny bar chart, MSB on the left like a written number."""
    return "".join(SPARK[min(int(f * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for f in reversed(fracs))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


@contextmanager
def _progress(label: str, quiet: bool):
    """A Rich bar on stderr for long reads (none with --json or when stderr is not a terminal); yields the
    ``progress(done, total, name)`` callback that profile/prune call."""
    from rich.console import Console

    err = Console(stderr=True)
    if quiet or not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    with Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.description}"), console=err, transient=True) as bar:
        task = bar.add_task("", total=None)

        def update(done, total, name):
            bar.update(task, completed=done, total=total, description=name)

        yield update


@app.command()
def models(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the built-in real models."""
    rows = [{"name": n, "task": t, "params": p, "description": d} for n, t, p, d in MODELS]
    if json_out:
        print(json.dumps(rows, indent=1))
        return
    t = Table("model", "task", "params", "description", title="built-in models")
    for r in rows:
        t.add_row(r["name"], r["task"], f"{r['params']:,}", r["description"])
    out.print(t)


@app.command()
def profile(
    model: str = typer.Argument(..., help="Built-in name, a .safetensors/.pt/.pth/.onnx file, or a checkpoint "
                                          "folder (config.json + *.safetensors) or its .safetensors.index.json."),
    fmt: Optional[str] = typer.Option(None, "--format", help="fp32, bf16, fp16, fp8e4m3, mxfp4, int8, int<b>, "
                                                             "... (all: bitsieve formats; default: the format the "
                                                             "weights are stored in)."),
    group: int = typer.Option(64, "--group", help="Values per group along the dot-product axis (1..64)."),
    align: str = typer.Option("weight", "--align", help="Float alignment: weight (to the group's max exponent) or none."),
    activations: int = typer.Option(0, "--activations", help="Also profile the input activations captured on N real samples."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="Also profile the activations of a user model (an "
                                         ".onnx file or a Hugging Face folder) run on this data (.npy, .npz, "
                                         ".txt)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="Also write the per-layer table to this CSV file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Zero and count NaN/Inf weights instead of refusing."),
):
    """Bit sparsity of every layer's weights (and activations), after grouping and alignment. Safetensors
    checkpoints are streamed tensor by tensor, so their size is not bounded by memory."""
    from .io import check_writable, write_atomic
    from .profile import FIELDS, profile as run_profile

    if csv_path:
        check_writable(csv_path, force)
    if inputs is not None:
        from . import model as model_mod

        model = model_mod.load(model, inputs=inputs, allow_nonfinite=allow_nonfinite)
        activations = max(activations, 1)
    with _progress("profile", json_out) as progress:
        result = run_profile(model, fmt, group, align, activations, allow_nonfinite, progress)
    rows, total = result["layers"], result["total"]
    if csv_path:
        buf = io.StringIO()
        keys = ["name", "tensor", "kind", "role", "dtype", "shape", *FIELDS, "nonfinite"]
        w = csv.DictWriter(buf, keys, extrasaction="ignore")
        w.writeheader()
        for r in rows + [{"name": "TOTAL", "tensor": "weight", **total}]:
            w.writerow({**r, "shape": "x".join(map(str, r.get("shape", []))),
                        "plane_occupancy": " ".join(f"{x:.4f}" for x in r["plane_occupancy"])})
        write_atomic(csv_path, buf.getvalue(), force=force)
    if json_out:
        print(json.dumps(result))
        return
    f = result["format"]
    t = Table(title=f"{result['model']}: {f}, group {group}, align {align}  (percentages; occupancy MSB..LSB)")
    for col in ("layer", "role", "tensor", "values", "zero val", "zero bit", "ess mean", "ess max",
                "zero planes", "densest mean", "densest max", "align lost", "occupancy"):
        t.add_column(col, justify="left" if col in ("layer", "role", "tensor", "occupancy") else "right")

    def add(name, role, tensor, s, style=None):
        t.add_row(name, role, tensor, f"{s['values']:,}", _pct(s["zero_value_frac"]), _pct(s["zero_bit_frac"]),
                  f"{s['mean_essential_bits']:.2f}", str(s["max_essential_bits"]), _pct(s["zero_plane_frac"]),
                  f"{s['mean_max_plane_ones']:.1f}", str(s["max_max_plane_ones"]), _pct(s["align_lost_frac"]),
                  _spark(s["plane_occupancy"]), style=style)

    for r in rows:
        add(r["name"], r.get("role") or r["kind"], r["tensor"][:3], r)
    add("TOTAL", "", "wgt", total, style="bold")
    if "activation_total" in result:
        add("TOTAL", "", "act", result["activation_total"], style="bold")
    out.print(t)
    for note in result["notes"]:
        out.print(f"note: {note}", highlight=False)
    if total["nonfinite"]:
        out.print(f"[yellow]{total['nonfinite']} non-finite weights were zeroed (--allow-nonfinite)[/]")


def _overrides(fmt: Optional[str], group: Optional[int]) -> dict:
    return {"format": fmt, "group": group}


@app.command("methods")
def methods_cmd(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List every bit-level method and every accelerator model, with its source and confidence."""
    from .accel import ACCELERATORS
    from .methods import REGISTRY
    from .train import SOURCES

    rows = []
    for m in REGISTRY.values():
        rows.append({"kind": "method", "name": m.name, "confidence": m.confidence, "source": m.source,
                     "description": m.description, "applies": m.kind,
                     "params": [{"name": p.name, "type": p.kind, "default": p.default, "doc": p.doc,
                                 **({"choices": list(p.choices)} if p.choices else {})} for p in m.params]})
    for name, (source, what) in SOURCES.items():
        rows.append({"kind": "training", "name": name, "confidence": "reconstructed (patent/abstract)",
                     "source": source, "description": what + " (bitsieve train)"})
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


def _steps(specs: list[str], fmt, group, stored: str | None = None):
    """Parsed method steps. Without --format, a method that reads a float format reads the one the weights
    are ``stored`` in (a bf16 checkpoint pruned in fp32 planes would prune bits that are not there)."""
    from . import formats
    from .evaluate import split_variants
    from .methods import parse_spec, parse_specs

    if not specs:
        raise UserError("give at least one --method NAME[:key=value,...]")
    if len(specs) > 1:
        raise UserError(f"prune writes one model: compose the methods with '+' in one --method "
                        f"({'+'.join(specs)}); a repeated --method means separate variants (simulate, eval, compare)")
    flat = split_variants(specs)[0]
    steps = parse_specs(flat, _overrides(fmt, group))
    if fmt is None and stored is not None:
        steps = [parse_spec(spec, _overrides(stored, group))
                 if "format=" not in spec and formats.get(step.params.get("format", "int8")).is_float else step
                 for spec, step in zip(flat, steps)]
    return steps


def _check_weight_steps(steps) -> None:
    if any(s.method.kind != "weights" for s in steps):
        raise UserError("bitlet changes the forward pass, not the weights: use it with `bitsieve eval`")


def _prune_checkpoint(model: str, method, fmt, group, output, force, json_out, allow_nonfinite) -> tuple:
    """Stream a safetensors checkpoint through the methods (see bitsieve.checkpoint.prune)."""
    from . import checkpoint
    from .io import atomic_file, atomic_folder, check_outputs, write_atomic

    ck = checkpoint.Checkpoint(model)
    steps = _steps(method, fmt, group, ck.dtype())
    _check_weight_steps(steps)
    if any(s.method.needs_activations(s.params) for s in steps):
        raise UserError(f"cannot capture activations of {model}: a weights file has no architecture to run")
    outp = Path(output)
    single = len(ck.files) == 1 and ck.index is None and not Path(model).is_dir()
    if single:
        if outp.suffix.lower() != ".safetensors":
            raise UserError(f"-o must name a .safetensors file, got {output}")
        side = outp.with_suffix(".json")
        check_outputs([outp, side], force)
        target = atomic_file(outp, force)
    else:
        if outp.suffix.lower() == ".safetensors":
            raise UserError(f"-o must name a folder for a checkpoint of {len(ck.files)} shard(s), got {output}")
        if outp.resolve() == ck.root.resolve() or ck.root.resolve() in outp.resolve().parents:
            raise UserError(f"-o {output} is inside the checkpoint being read: give another folder")
        side = None
        target = atomic_folder(outp, force)
    with _progress("prune", json_out) as progress, target as dest:
        sidecar = checkpoint.prune(ck, steps, dest, single, allow_nonfinite, progress)
        sidecar = {"model": ck.name, "source": str(model), **sidecar}
        sidecar["total"] = {k: sum(r[k] for r in sidecar["layers"]) for k in
                            ("changed_bits", "bits_before", "bits_after", "rounded", "nonfinite")}
        sidecar["total"]["weights"] = sum(math.prod(r["shape"]) for r in sidecar["layers"])
        text = json.dumps(sidecar, indent=1, default=str)
        if not single:
            (dest / "bitsieve-prune.json").write_text(text)
    if single:
        write_atomic(side, text, force=force)
    rows = [(r["name"], r["shape"], r["changed_bits"], r["bits_before"], r["bits_after"]) for r in sidecar["layers"]]
    return sidecar, rows, [outp, side or outp / "bitsieve-prune.json"], steps


@app.command()
def prune(
    model: str = typer.Argument(..., help="Built-in name, a .safetensors/.pt/.pth/.onnx file, or a checkpoint "
                                          "folder or its .safetensors.index.json."),
    method: List[str] = typer.Option(..., "--method", help="NAME[:key=value,...]; several composed in order "
                                                           "with '+' (bbs:k=2+bitx:keep=4). One model is "
                                                           "written, so give --method once."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Default number format for methods that read one "
                                                             "(a checkpoint: the format it is stored in)."),
    group: Optional[int] = typer.Option(None, "--group", help="Default group size for methods that have one."),
    output: str = typer.Option(..., "-o", "--output", help="Output .safetensors (a .json sidecar goes beside it); "
                                                           "for a sharded checkpoint, an output folder."),
    activations: int = typer.Option(8, "--activations", help="Samples captured for methods that score with "
                                                              "activations (bitx/bitxpro score=exact)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files."),
    json_out: bool = typer.Option(False, "--json", help="Print the sidecar JSON."),
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Zero and count NaN/Inf weights."),
):
    """Rewrite a model's conv/linear weights with bit-level methods and save them (+ a JSON sidecar). A
    safetensors checkpoint is streamed: each tensor keeps its dtype, shards are written one tensor at a time,
    config.json and the index are kept, and the methods are recorded in the shards' metadata."""
    from . import checkpoint

    if activations < 0:
        raise UserError(f"--activations must be >= 0, got {activations}")
    if model not in {m[0] for m in MODELS} and checkpoint.is_checkpoint(Path(model)) and Path(model).exists():
        sidecar, rows, written, steps = _prune_checkpoint(model, method, fmt, group, output, force, json_out,
                                                          allow_nonfinite)
        name = sidecar["model"]
    else:
        sidecar, rows, written, steps, name = _prune_loaded(model, method, fmt, group, output, activations, force,
                                                            allow_nonfinite)
    if json_out:
        print(json.dumps(sidecar, default=str))
        return
    t = Table("layer", "shape", "changed bits", "bits before", "bits after",
              title=f"{name}: {' then '.join(s.spec() for s in steps)}")
    for layer, shape, changed, before, after in rows:
        t.add_row(layer, "x".join(map(str, shape)), f"{changed:,}", f"{before:,}", f"{after:,}")
    tt = sidecar["total"]
    t.add_row("TOTAL", "", f"{tt['changed_bits']:,}", f"{tt['bits_before']:,}", f"{tt['bits_after']:,}", style="bold")
    out.print(t)
    if tt.get("rounded"):
        out.print(f"note: {tt['rounded']:,} values did not fit the stored dtype and were rounded to it", highlight=False)
    out.print(f"wrote {written[0]} and {written[1]}")


def _prune_loaded(model, method, fmt, group, output, activations, force, allow_nonfinite) -> tuple:
    """A built-in, .pt/.pth or .onnx model, pruned in memory; written as one .safetensors file."""
    import numpy as np
    import torch
    from safetensors.torch import save

    from . import methods as methods_mod
    from . import model as model_mod
    from .io import check_outputs, write_atomic

    steps = _steps(method, fmt, group)
    _check_weight_steps(steps)
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
        tensors = {k: v.detach().cpu() for k, v in model_mod._torch_file(Path(model))} \
            if Path(model).suffix.lower() in (".pt", ".pth") else {}
        for r in res:
            names = (f"{r.name}.weight", r.name)
            key = next((k for k in names if k in tensors and tensors[k].numel() == r.weight.size), names[0])
            shape = tuple(tensors[key].shape) if key in tensors else r.weight.shape
            dtype = tensors[key].dtype if key in tensors else torch.float32
            tensors[key] = torch.from_numpy(np.ascontiguousarray(r.weight.reshape(shape))).to(dtype)
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
    meta = {"bitsieve.methods": " then ".join(sidecar["methods"]), "bitsieve.parameters":
            json.dumps(sidecar["parameters"], default=str)}
    write_atomic(outp, save(tensors, metadata=meta), force=force)
    write_atomic(side, json.dumps(sidecar, indent=1, default=str), force=force)
    rows = [(r.name, r.weight.shape, r.changed_bits, r.stats[0].bits_before, r.stats[-1].bits_after) for r in res]
    return sidecar, rows, [outp, side], steps, m.name


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="Built-in name (or a file written by `bitsieve prune` from one), or a "
                                          "user model run on --inputs: an .onnx file or a Hugging Face folder."),
    method: List[str] = typer.Option([], "--method", help="A variant to evaluate: NAME[:key=value,...], several "
                                                          "composed with '+'. Repeat for more variants."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="A user model's data: .npy/.npz (token ids for a "
                                         "language model) or .txt (text, with the folder's tokenizer)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="With --inputs: .npy of integer classes, one per "
                                         "input (top-1). A language model without labels: next-token top-1."),
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
    if labels is not None and inputs is None:
        raise UserError("--labels go with --inputs (a user model's data)")
    if inputs is not None:
        from .evaluate import evaluate_user

        if task or data_dir or limit:
            raise UserError("--task, --data and --limit are for built-in models; a user model runs on --inputs")
        _eval_table(evaluate_user(model, method, inputs, labels, _overrides(fmt, group)), json_out)
        return
    with _progress("eval", json_out) as progress:
        done: list = []

        def tick(variant):  # called as each variant (the original first) finishes
            done.append(variant)
            progress(len(done), len(method) + 1, variant.spec or "original")

        result = evaluate(model, method, task=task, data_dir=data_dir, limit=limit, overrides=_overrides(fmt, group),
                          progress=tick if progress else None)
    if json_out:
        print(json.dumps({**result, "rows": tidy_rows(result)}, default=str))
        return
    _eval_table(result, False)


def _eval_table(result: dict, json_out: bool) -> None:
    if json_out:
        print(json.dumps(result, default=str))
        return
    unit = {"top1": "top-1 %", "accuracy": "accuracy %", "spearman": "Spearman x100",
            "next-token top1": "next-token top-1 %"}[result["metric"]]
    t = Table("method", unit, "95% CI", "change", "95% CI (paired)", "n", "bits removed %", "changed bits",
              "seconds", title=f"{result['model']} on {result['task']} ({result['samples']} samples)")
    for v in result["variants"]:
        br = "" if v["bits_removed_frac"] is None else f"{100 * v['bits_removed_frac']:.1f}"
        dci = "" if not v["method"] else f"[{v['delta_ci_low']:+.2f}, {v['delta_ci_high']:+.2f}]"
        t.add_row(v["method"] or "(original)", f"{v['value']:.2f}", f"[{v['ci_low']:.2f}, {v['ci_high']:.2f}]",
                  f"{v['delta']:+.2f}", dci, str(v["n"]), br, f"{v['changed_bits']:,}", f"{v['seconds']:.1f}")
    out.print(t)
    if result.get("saturated"):
        out.print("the original's interval reaches the top of the scale: a change near zero says little here")
