"""Commands registered on the bitsieve app (see cli.py): ``simulate`` and ``export-traces``."""
from __future__ import annotations

import json
import math
from typing import List, Optional

import typer
from rich.table import Table

from .cli import app, out  # noqa: F401
from .cli_methods import MODELS
from .errors import UserError


def _fmt_num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e6:
        return f"{x:.3e}"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"


def _summary(rows: list[dict], labels: dict) -> list[dict]:
    """Whole-model rows -> one record per (method, accel), the bottleneck as its readable label."""
    rec: dict = {}
    for r in rows:
        if r["layer"] != "*":
            continue
        d = rec.setdefault((r["method"], r["accel"]), {"method": r["method"], "accel": r["accel"]})
        if r["metric"].startswith("bottleneck."):
            slug = r["metric"][len("bottleneck."):]
            d["bottleneck"] = labels.get(slug, slug.replace("_", " "))
        else:
            d[r["metric"]] = r["value"]
    return list(rec.values())


@app.command()
def simulate(
    model: str = typer.Argument(..., help="Built-in name, a .safetensors/.pt/.pth/.onnx file, or a checkpoint "
                                "folder (config.json + *.safetensors) or its .safetensors.index.json."),
    accel: str = typer.Option("all", "--accel", help="Accelerators, comma-separated, or 'all' (those that "
                              "apply to the format). See `bitsieve accelerators`."),
    method: List[str] = typer.Option([], "--method", help="A variant: NAME[:key=value,...] (bitx:keep=5, "
                                     "bbs:k=4, ...), several composed in order with '+'. Repeat for more "
                                     "variants. The unmodified model is always simulated too."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="Run a user model on this data and simulate "
                                         "on the activations each layer sees: .npy (one input; token ids "
                                         "for a language model), .npz (named inputs) or .txt (text, with the "
                                         "folder's tokenizer). For an .onnx file or a Hugging Face folder."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="A weights file's linear layers as GEMMs of N "
                                         "tokens (1: decoding, a GEMV)."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="A weights file's convs see this "
                                              "input, NxCxHxW (e.g. 1x3x224x224); the output says what was "
                                              "assumed."),
    fmt: str = typer.Option("int16", "--format", help="Data format: int16, int8, int<b>, fp32, bf16, "
                                                           "fp16 (FP8/MX formats are profile/prune/eval only)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Also report speed-ups over this accelerator."),
    sets: List[str] = typer.Option([], "--set", help="Override a parameter: ACCEL.PARAM=VALUE "
                                   "(e.g. pragmatic.bits_first_stage=2)."),
    activations: int = typer.Option(1, "--activations", help="Real input samples of a built-in model whose "
                                    "activations drive the activation-serial designs."),
    seed: int = typer.Option(0, "--seed", help="Seed of every sampled estimate (bitlet product alignment)."),
    layers: bool = typer.Option(False, "--layers", help="Also print the per-layer table."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (rows, summary, layers)."),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="Also write the tidy rows to this CSV file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --csv file."),
):
    """Cycles, speed-ups (compute only, and with the DRAM time of streaming weights and activations), latency,
    energy, area and the bottleneck of a model's layers on bit-serial accelerators. A safetensors checkpoint is
    streamed one tensor at a time."""
    from . import formats, results
    from .accel import ACCELERATORS, names, parse_sets
    from .io import check_writable, write_atomic
    from .simulate import Run, simulate_model

    f = formats.get(fmt)
    kind = "int" if not f.is_float else f.name
    left_out = []
    if accel.strip().lower() == "all":
        chosen = [n for n, a in ACCELERATORS.items() if kind in a.formats]
        if inputs is None and model not in {m[0] for m in MODELS}:  # a weights file: no activations to read
            left_out = [n for n in chosen if ACCELERATORS[n].needs_activations]
            chosen = [n for n in chosen if n not in left_out]
    else:
        chosen = names(accel)
    if baseline is not None:
        baseline = names(baseline)[0]
    if activations < 1:
        raise UserError("--activations must be at least 1")
    if csv_path:
        check_writable(csv_path, force)
    run = Run(accels=chosen, fmt=f.name, methods=list(method), baseline=baseline, sets=parse_sets(sets), seed=seed)
    from .cli_methods import _progress

    with _progress("simulate", json_out) as progress:
        res = simulate_model(model, run, activations=activations, inputs=inputs, tokens=tokens,
                             input_shape=input_shape, progress=progress)
    if left_out:
        res["notes"].append(f"left out: {', '.join(left_out)} (they read input activations, which a weights file "
                            "cannot give: run an .onnx file or a Hugging Face folder on your data with --inputs)")
    rows = res["rows"]
    summary = _summary(rows, res["labels"])
    if csv_path:
        write_atomic(csv_path, results.to_csv(rows), force=force)
    if json_out:
        payload = {k: res[k] for k in ("model", "format", "layers", "accels", "notes", "inferences")}
        payload.update(summary=summary, rows=json.loads(results.to_json(rows)))
        print(json.dumps(payload))
        return
    if layers:
        _print_layers(res, chosen)
    for m in dict.fromkeys(s["method"] for s in summary):
        t = Table(title=f"{res['model']}: {res['format']}{', method ' + m if m else ''} (speed-up: over the "
                        "same array run dense, equal units; with memory: each layer max(compute, DRAM))")
        cols = ["accel", "cycles", "speed-up"] + ([f"vs {baseline}"] if baseline else []) + [
            "latency / inference", "speed-up with memory", "iso vs dense", "work bound", "energy pJ / inference",
            "area mm2", "bottleneck (share)"]
        for c in cols:
            t.add_column(c, justify="left" if c in ("accel", "bottleneck (share)") else "right")
        for s in summary:
            if s["method"] != m:
                continue
            cells = [s["accel"], _fmt_num(s["cycles"]), f"{s['speedup']:.2f}"]
            if baseline:
                cells.append(f"{s.get('speedup_vs_' + baseline, float('nan')):.2f}")
            cells += [_fmt_num(s["latency_cycles"]), f"{s['speedup_memory']:.2f}", f"{s['speedup_iso']:.2f}", f"{s['work_bound']:.2f}", f"{s['energy_pj']:.3e}",
                      f"{s['area_mm2']:.3f}", f"{s.get('bottleneck', '')} ({100 * s.get('bottleneck_share', 0):.0f}%)"]
            t.add_row(*cells)
        out.print(t)
    for note in res["notes"]:
        out.print(f"note: {note}", highlight=False)
    secs = res["seconds"]
    out.print("simulation time: " + ", ".join(f"{n} {secs[n]:.2f}s" for n in secs if n in chosen))


def _print_layers(res: dict, chosen: list[str]) -> None:
    sp, cyc = {}, {}
    for r in res["rows"]:
        if r["layer"] != "*" and r["method"] == "":
            if r["metric"] == "speedup":
                sp[(r["layer"], r["accel"])] = r["value"]
            elif r["metric"] == "cycles":
                cyc[(r["layer"], r["accel"])] = r["value"]
    t = Table(title=f"{res['model']}: per-layer cycles (speed-up), unmodified model")
    t.add_column("layer")
    t.add_column("shape")
    t.add_column("MACs", justify="right")
    for n in chosen:
        t.add_column(n, justify="right")
    for info in res["layers"]:
        t.add_row(info["name"], info["shape"], f"{info['macs']:,}",
                  *[f"{cyc.get((info['name'], n), float('nan')):.3g} ({sp.get((info['name'], n), float('nan')):.2f})"
                    for n in chosen])
    out.print(t)


@app.command()
def accelerators(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Every accelerator model with its source, confidence, formats and parameters (with citations)."""
    from .accel import ACCELERATORS

    rows = [a.describe() for a in ACCELERATORS.values()]
    if json_out:
        print(json.dumps(rows, indent=1))
        return
    t = Table("accel", "design", "confidence", "formats", "parameters (defaults)", title="accelerator models")
    for a in ACCELERATORS.values():
        t.add_row(a.name, a.title, a.confidence, ", ".join(a.formats),
                  ", ".join(f"{k}={v}" for k, v in a.params.items()))
    out.print(t)


DNNSIM_ACCELS = "dense,stripes,pragmatic,laconic,tactical"


@app.command("export-traces")
def export_traces(
    model: str = typer.Argument(..., help="Built-in name or a model file."),
    folder: Optional[str] = typer.Argument(None, help="DNNsim work folder to write (created; its parent must "
                                           "exist)."),
    dnnsim: Optional[str] = typer.Option(None, "--dnnsim", help="The work folder, as an option."),
    fmt: str = typer.Option("int16", "--format", help="Fixed-point format of the traces: int16, int8, int<b> "
                            "(b <= 16: DNNsim's traces are 16-bit)."),
    accel: str = typer.Option(DNNSIM_ACCELS, "--accel", help="Accelerators to put in the batch file, each "
                              "with its bitsieve parameters (dense, stripes, pragmatic, laconic, tactical)."),
    sets: List[str] = typer.Option([], "--set", help="Override a parameter: ACCEL.PARAM=VALUE."),
    activations: int = typer.Option(1, "--activations", help="Real input samples to capture (N)."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="A user model (an .onnx file or a Hugging Face "
                                         "folder) run on this data (.npy, .npz, .txt) instead."),
    force: bool = typer.Option(False, "--force", help="Overwrite files of an earlier export."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Write a ready DNNsim work folder: models/<net>/{model.csv, precision.txt}, net_traces/<net>/ with the
    integers bitsieve simulates (DNNsim's axis order, quantised: true), <net>.batch with bitsieve's parameters,
    README.txt (how to run; the two DNNsim bugs to patch)."""
    from . import formats
    from . import model as model_mod
    from .accel import ACCELERATORS, names, parse_sets
    from .accel import tiling
    from .accel.dnnsim import dnnsim_experiment, export_work_folder

    if (folder is None) == (dnnsim is None):
        raise UserError("give the work folder once: export-traces MODEL DIR (or --dnnsim DIR)")
    f = formats.get(fmt)
    if f.is_float or f.width > 16:
        raise UserError(f"DNNsim simulates fixed point of at most 16 bits, got {f.name}")
    if activations < 1:
        raise UserError("--activations must be at least 1")
    chosen = names(accel)
    overrides = parse_sets(sets)
    unknown = set(overrides) - set(chosen)
    if unknown:
        raise UserError(f"--set names {', '.join(sorted(unknown))}, which is not in --accel")
    experiments, cfgs = [], {}
    for n in chosen:
        a = ACCELERATORS[n]
        cfgs[n] = a.configure(overrides.get(n))
        a.check_format(f, cfgs[n])
        experiments.append(dnnsim_experiment(n, cfgs[n]))
    m = model_mod.load(model, inputs=inputs) if inputs is not None else model_mod.load(model, activations=activations)
    layers = [layer for layer in m.layers if layer.kind in ("conv", "linear")]
    if any(layer.activation is None for layer in layers):
        raise UserError(f"{model}: activations could not be captured (DNNsim needs them: use a built-in model, or "
                        "run an .onnx file or a Hugging Face folder on --inputs)")
    workloads = [tiling.from_layer(layer) for layer in layers]
    net = "".join(c if (c.isalnum() or c in "._-") else "-" for c in m.name)
    prec = cfgs["stripes"]["precision"] if "stripes" in cfgs else "data"
    summary = export_work_folder(net, workloads, f, experiments, folder or dnnsim, prec, force, cfgs)
    if json_out:
        print(json.dumps(summary))
        return
    out.print(f"wrote {len(workloads)} layers of {m.name} ({f.name}) to {summary['folder']}: models/{net}, "
              f"net_traces/{net}, {net}.batch ({', '.join(summary['experiments'])}); see README.txt")
    for note in summary["notes"]:
        out.print(f"note: {note}")
