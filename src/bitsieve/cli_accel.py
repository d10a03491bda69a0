"""Commands registered on the bitsieve app (see cli.py): ``simulate`` and ``export-traces``."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.table import Table

from .cli import app, out  # noqa: F401
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
    model: str = typer.Argument(..., help="Built-in name or a .safetensors/.pt/.pth/.onnx file."),
    accel: str = typer.Option("all", "--accel", help="Accelerators, comma-separated, or 'all' (those that "
                              "apply to the format). See `bitsieve accelerators`."),
    method: List[str] = typer.Option([], "--method", help="Method spec (bitx:keep=5, bbs:k=4, ...); several "
                                     "compose in order. The unmodified model is always simulated too."),
    fmt: str = typer.Option("int16", "--format", help="Data format: int16, int8, int<b>, fp32, bf16, fp16."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Also report speed-ups over this accelerator."),
    sets: List[str] = typer.Option([], "--set", help="Override a parameter: ACCEL.PARAM=VALUE "
                                   "(e.g. pragmatic.bits_first_stage=2)."),
    activations: int = typer.Option(1, "--activations", help="Real input samples whose activations drive the "
                                    "activation-serial designs."),
    seed: int = typer.Option(0, "--seed", help="Seed of every sampled estimate (bitlet product alignment)."),
    layers: bool = typer.Option(False, "--layers", help="Also print the per-layer table."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (rows, summary, layers)."),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="Also write the tidy rows to this CSV file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --csv file."),
):
    """Cycles, speed-ups, energy, area and the bottleneck of a model's layers on bit-serial accelerators."""
    from . import formats, results
    from .accel import ACCELERATORS, names, parse_sets
    from .io import check_writable, write_atomic
    from .simulate import Run, simulate_model

    f = formats.get(fmt)
    kind = "int" if not f.is_float else f.name
    if accel.strip().lower() == "all":
        chosen = [n for n, a in ACCELERATORS.items() if kind in a.formats]
    else:
        chosen = names(accel)
    if baseline is not None:
        baseline = names(baseline)[0]
    if activations < 1:
        raise UserError("--activations must be at least 1")
    if csv_path:
        check_writable(csv_path, force)
    run = Run(accels=chosen, fmt=f.name, methods=["+".join(method)] if method else [], baseline=baseline,
              sets=parse_sets(sets), seed=seed)
    res = simulate_model(model, run, activations=activations)
    rows = res["rows"]
    summary = _summary(rows, res["labels"])
    if csv_path:
        write_atomic(csv_path, results.to_csv(rows), force=force)
    if json_out:
        payload = {k: res[k] for k in ("model", "format", "layers", "accels")}
        payload.update(summary=summary, rows=json.loads(results.to_json(rows)))
        print(json.dumps(payload))
        return
    if layers:
        _print_layers(res, chosen)
    for m in dict.fromkeys(s["method"] for s in summary):
        t = Table(title=f"{res['model']}: {res['format']}{', method ' + m if m else ''} (speed-up: over the "
                        "same array run dense, equal units)")
        cols = ["accel", "cycles", "speed-up"] + ([f"vs {baseline}"] if baseline else []) + [
            "iso vs dense", "work bound", "energy pJ", "area mm2", "bottleneck (share)"]
        for c in cols:
            t.add_column(c, justify="left" if c in ("accel", "bottleneck (share)") else "right")
        for s in summary:
            if s["method"] != m:
                continue
            cells = [s["accel"], _fmt_num(s["cycles"]), f"{s['speedup']:.2f}"]
            if baseline:
                cells.append(f"{s.get('speedup_vs_' + baseline, float('nan')):.2f}")
            cells += [f"{s['speedup_iso']:.2f}", f"{s['work_bound']:.2f}", f"{s['energy_pj']:.3e}",
                      f"{s['area_mm2']:.3f}", f"{s.get('bottleneck', '')} ({100 * s.get('bottleneck_share', 0):.0f}%)"]
            t.add_row(*cells)
        out.print(t)
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


def _safe(name: str) -> str:
    """DNNsim's layer-name sanitation ('/' -> '-') plus anything a file name cannot hold."""
    return "".join(c if (c.isalnum() or c in "._-") else "-" for c in name.replace("/", "-"))


@app.command("export-traces")
def export_traces(
    model: str = typer.Argument(..., help="Built-in name or a model file."),
    dnnsim: str = typer.Option(..., "--dnnsim", help="Output folder (created; its parent must exist)."),
    activations: int = typer.Option(1, "--activations", help="Real input samples to capture (N)."),
    force: bool = typer.Option(False, "--force", help="Overwrite files of an earlier export."),
):
    """Write a model in DNNsim's input layout: model.csv (name, type conv/fc, stride, padding),
    wgt-<layer>.npy ([K,C,R,S] or [K,C]) and act-<layer>-0.npy ([N,C,H,W] float32 input activations)."""
    from . import model as model_mod
    from .io import write_atomic

    d = Path(dnnsim)
    if d.exists() and not d.is_dir():
        raise UserError(f"{d} exists and is not a folder")
    if not d.parent.exists():
        raise UserError(f"folder {d.parent} does not exist")
    if (d / "model.csv").exists() and not force:
        raise UserError(f"{d / 'model.csv'} exists (use --force to overwrite)")
    if activations < 1:
        raise UserError("--activations must be at least 1")
    m = model_mod.load(model, activations=activations)
    layers = [layer for layer in m.layers if layer.kind in ("conv", "linear")]
    if any(layer.activation is None for layer in layers):
        raise UserError(f"{model}: activations could not be captured (DNNsim needs them; use a built-in model)")
    d.mkdir(exist_ok=True)
    csv_lines, params, seen = [], [], set()
    for layer in layers:
        name = _safe(layer.name)
        if name in seen:
            raise UserError(f"two layers map to the same DNNsim name {name!r}")
        seen.add(name)
        w = np.asarray(layer.weight, dtype=np.float32)
        a = np.asarray(layer.activation, dtype=np.float32)
        if layer.kind == "conv":
            sh, sw = layer.stride
            ph, pw = layer.padding
            if sh != sw or ph != pw:
                raise UserError(f"{layer.name}: DNNsim takes one stride and one padding per layer "
                                f"(got stride {layer.stride}, padding {layer.padding})")
            kind, stride, pad = "conv", sh, ph
            params.append(f"{name},{w.shape[0]},{w.shape[3]},{w.shape[2]},{stride},{pad}")
        else:
            kind, stride, pad = "fc", 1, 0
            a = a.reshape(-1, a.shape[-1])
            params.append(f"{name},{w.shape[0]},1,1,1,0")
        csv_lines.append(f"{name},{kind},{stride},{pad}")
        for fname, arr in ((f"wgt-{name}.npy", w), (f"act-{name}-0.npy", a)):
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(arr))
            write_atomic(d / fname, buf.getvalue(), force=True)
    write_atomic(d / "model.csv", "\n".join(csv_lines) + "\n", force=True)
    write_atomic(d / "trace_params.csv", "\n".join(params) + "\n", force=True)
    out.print(f"wrote {len(layers)} layers of {m.name} to {d} (model.csv, trace_params.csv, wgt-*.npy, act-*-0.npy)")
