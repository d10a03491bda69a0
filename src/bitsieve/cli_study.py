"""Commands that study a model as a whole: `compare` (the main job), `sweep` and `report`."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from .cli import app, interrupt_note, out
from .errors import UserError


@app.command()
def sweep(
    sweep_file: str = typer.Argument(..., metavar="SWEEP.toml", help="The grid: models, formats, groups, methods, "
                                     "accelerators (see `bitsieve.sweep` for the format)."),
    outdir: Optional[str] = typer.Option(None, "-o", "--output", help="Output folder (default: <sweep name>-results). "
                                         "Running again resumes an interrupted sweep there."),
    backend: str = typer.Option("local", "--backend", help="local (a process pool) or ray."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: a local Ray)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parallel tasks (default: one per core)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="ACCEL.PARAM=VALUE for every variant of that "
                                             "design (repeatable; values in a [designs] table win)."),
    force: bool = typer.Option(False, "--force", help="Start over, discarding results already in the folder."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object with the counts and wall time."),
):
    """Run a design-space sweep; results go to OUT/results.sqlite (resumable) and OUT/results.csv."""
    from . import results
    from . import sweep as sweep_mod
    from .accel import parse_sets
    from .io import check_writable, folder_lock, write_atomic

    from .study.engine import check_options

    check_options(backend, workers, address)  # before the output folder is made
    sw = sweep_mod.parse(sweep_file, sets=parse_sets(sets))
    d = Path(outdir or f"{Path(sweep_file).stem}-results")
    if d.exists() and not d.is_dir():
        raise UserError(f"{d} exists and is not a folder")
    if not d.parent.is_dir():
        raise UserError(f"{d.parent} is not a folder" if d.parent.exists() else f"folder {d.parent} does not exist")
    try:
        d.mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {d}: {e.strerror}") from None
    check_writable(d / "results.csv", force=True)  # the CSV is the sweep's own, rewritten on every run
    if not json_out:
        out.print(f"[bold]{sw.name}[/]: {len(sw.models)} models x {len(sw.formats)} formats x {len(sw.groups)} groups"
                  f" = {len(sw.tasks)} tasks, each {len(sw.methods) + 1} method settings (original included) x "
                  f"{len(sw.accels)} accelerators -> {d}")
    with folder_lock(d, "sweep"), interrupt_note(f"finished tasks are stored in {d}; run the same command "
                                                 "again to resume (results.csv is not updated)"):
        for tmp in d.glob(".results.csv.*.tmp"):  # under the lock no other run writes here: a killed run's
            tmp.unlink(missing_ok=True)
        summary = sweep_mod.run(sw, d, backend=backend, workers=workers, address=address, force=force,
                                console=None if json_out else out)
        with results.Store(d) as st:
            write_atomic(d / "results.csv", results.to_csv(st.rows()), force=True)
    summary["csv"] = str(d / "results.csv")
    if json_out:
        print(json.dumps(summary))
        return
    out.print(f"{summary['ran']} tasks run, {summary['skipped']} already done; {summary['rows']:,} rows in "
              f"{summary['store']} ({summary['wall_s']:.1f} s, {backend}). Next: bitsieve report {d} -o report.html")


@app.command()
def report(
    results_path: str = typer.Argument(..., metavar="RESULTS", help="A sweep output folder, or a CSV/JSON of rows."),
    output: str = typer.Option("report.html", "-o", "--output", help="The HTML file to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
    title: Optional[str] = typer.Option(None, "--title", help="Title of the report."),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="Also write every row to this CSV file."),
    json_out: bool = typer.Option(False, "--json", help="Print the whole-model summary as JSON."),
):
    """One self-contained HTML report (plots and sortable tables) from sweep or compare results."""
    from . import report as report_mod
    from . import results
    from .io import check_outputs, write_atomic

    check_outputs([output, csv_path], force)
    rows = results.load(results_path)
    if not rows:
        raise UserError(f"{results_path} holds no result rows")
    report_mod.write(rows, output, force=force, title=title, source=str(results_path))
    if csv_path:
        write_atomic(csv_path, results.to_csv(rows), force=force)
    if json_out:
        recs = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                for r in report_mod.summary(rows)]
        print(json.dumps({"report": output, "rows": len(rows), "summary": recs}))
        return
    out.print(f"wrote {output} ({Path(output).stat().st_size / 1e6:.1f} MB) from {len(rows):,} rows")


@app.command()
def compare(
    model: str = typer.Argument("efficientnet-lite0", help="Built-in name or a model file (default: "
                                "efficientnet-lite0)."),
    full: bool = typer.Option(False, "--full", help="Accuracy on the whole evaluation set (default: a quick "
                              "subset)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Accuracy on the first N samples; 0 skips accuracy."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="HTML report (default: "
                                         "compare-<model>.html, never overwriting an existing file)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing report (or --csv file)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    method: Optional[list[str]] = typer.Option(None, "--method", help="A software method variant run before the "
                                               "designs it can change: NAME[:key=value,...], several composed "
                                               "with '+'; repeat for more variants (default: bitwave, bbs at "
                                               "their defaults)."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="Run a user model (an .onnx file or a Hugging "
                                         "Face folder) on this data (.npy, .npz, .txt) so the designs that "
                                         "read activations are compared too (no labels: no accuracy)."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="A weights file's linear layers as GEMMs of N "
                                         "tokens (1: decoding, a GEMV: latency is the weights' DRAM time)."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="A weights file's convs see this input, "
                                              "NxCxHxW (e.g. 1x3x224x224)."),
    accel: Optional[str] = typer.Option(None, "--accel", help="Only these designs, comma-separated "
                                        "(default: all; the dense baseline is always there)."),
    fmt: str = typer.Option("auto", "--format", help="Data format of the designs: auto (each on its published "
                            "format) or one format for all."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="ACCEL.PARAM=VALUE: a design parameter "
                                             "(repeatable), e.g. bitx.keep=4; it changes the design's cycles "
                                             "and its numerics alike."),
    curves: str = typer.Option("weights", "--curves", help="Accuracy-versus-speed curves: weights (BitX, BitXpro "
                               "over keep), all (also Bitlet over its prune mask: an emulated forward pass per "
                               "point) or none."),
    sensitivity: int = typer.Option(4, "--sensitivity", help="Per-layer sensitivity: accuracy change when only one "
                                    "layer runs the first pruning design's numerics, for this many layers (half "
                                    "with the most MACs, half with the most weight bits removed), on at most 500 "
                                    "samples; 0 skips it."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parallel processes (default: one per core)."),
    backend: str = typer.Option("local", "--backend", help="local (a process pool) or ray (the sweep engine)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: a local Ray)."),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="Also write every result row to this CSV file."),
):
    """The main job: every design (an accelerator with its own numerics) on a model's real weights and
    activations, its accuracy as it computes on the model's real task, speed, latency, energy and area; one
    table and one HTML report."""
    from . import compare as cmp
    from . import report as report_mod
    from . import results
    from .accel import parse_sets
    from .io import check_writable, write_atomic
    from .study.engine import default_workers

    if full and limit is not None:
        raise UserError("--full and --limit exclude each other")
    if limit is not None and limit < 0:
        raise UserError(f"--limit must be >= 0, got {limit}")
    if sensitivity < 0:
        raise UserError(f"--sensitivity must be >= 0, got {sensitivity}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    path = output or cmp.default_output(model)
    check_writable(path, force)
    if csv_path:
        check_writable(csv_path, force)
    if not Path(model).exists():
        if Path(model).suffix:
            raise UserError(f"cannot read {model}: no such file")
        from .zoo import get

        get(model)  # an unknown name fails now, not in a worker
    accels = [a.strip() for a in accel.split(",") if a.strip()] if accel else None
    lim = None if full else ("quick" if limit is None else limit)
    nw = workers or default_workers()
    p = cmp.plan(model, methods=method or None, accels=accels, fmt=fmt, limit=lim, accuracy=lim != 0,
                 sets=parse_sets(sets), curves=curves, workers=nw, sensitivity=sensitivity, inputs=inputs,
                 tokens=tokens, input_shape=input_shape)
    if p.skipped and not json_out:
        out.print(f"[yellow]left out: {', '.join(p.skipped)} (their cycles read input activations, which a weights "
                  "file cannot give: run an .onnx file or a Hugging Face folder on your data with --inputs FILE)[/]")
    if not json_out:
        for note in p.notes:
            out.print(f"note: {note}", highlight=False)
        acc = ("no accuracy" if p.limit == 0 else "accuracy on the whole evaluation set" if p.limit is None
               else f"accuracy on {p.limit} samples")
        out.print(f"[bold]{model}[/]: {len(p.designs)} designs, {len(p.entries)} rows, {acc}")
    res = cmp.run(p, workers=nw, console=None if json_out else _bar_console(), backend=backend, address=address)
    rows = res["rows"]
    report_mod.write(rows, path, force=force, title=f"bitsieve compare: {model}", source="bitsieve compare",
                     provenance=provenance(model, p, res))
    if csv_path:
        write_atomic(csv_path, results.to_csv(rows), force=force)
    data = cmp.table_data(rows, p)
    orig = cmp.original_accuracy(rows)
    if json_out:
        def clean(x):
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, list):
                return [clean(v) for v in x]
            return None if isinstance(x, float) and not math.isfinite(x) else x

        print(json.dumps(clean({"model": model, "report": path, "limit": p.limit, "original": orig,
                                "left_out": p.skipped, "notes": p.notes,
                                "designs": data, "published": res["published"], "warnings": res["warnings"],
                                "wall_s": res["wall_s"],
                                "unit_seconds": res["seconds"], "rows": len(rows)})))
        return
    main_rows = [r for r in data if not r["knob"]]
    out.print(cmp.rich_table(main_rows, p, cmp.metric_label(model), orig))
    notes = {r["design"]: r["note"] for r in main_rows if r["note"]}
    from rich.markup import escape

    for name, note in notes.items():
        out.print(f"[dim]{escape(name)}: {escape(note)}[/]")
    out.print("[dim]speed-up same array: over the dense reference of the same array and schedule; iso-area: "
              "latency (per-layer max of compute and DRAM) over the dense design in the same format scaled to "
              "equal area; energy per inference; TOPS/W at the design's energy, GOPS/mm2 at "
              f"{cmp.CLOCK_GHZ:g} GHz.[/]")
    if res["published"]:
        out.print(cmp.published_table(res["published"]))
    for w in res["warnings"]:
        out.print(f"[yellow]{w}[/]")
    out.print(f"report: {path}   ({res['wall_s']:.0f} s, {res['workers']} workers)")


def _bar_console():
    """Progress bars go to stderr, and only to a terminal: pipes and files get the table alone."""
    from rich.console import Console

    err = Console(stderr=True)
    return err if err.is_terminal else None


def provenance(model: str, p, res) -> dict:
    """What the report says about how its numbers were made."""
    import platform
    import sys

    from importlib.metadata import version

    def v(pkg):
        try:
            return version(pkg)
        except Exception:
            return "?"

    return {"command": "bitsieve " + " ".join(sys.argv[1:]) if sys.argv and "bitsieve" in sys.argv[0] else "bitsieve compare",
            "model": model, "samples": p.limit if p.limit is not None else "full set",
            "activations simulated": p.activations, "seed": 0,
            "versions": f"bitsieve {v('bitsieve')}, numpy {v('numpy')}, torch {v('torch')}, python {platform.python_version()}",
            "formats": "; ".join(f"{e.label}: {e.design.numerics().describe()}" +
                                 (f", method in {e.steps[0].params.get('format', e.design.fmt)}" if e.steps else "")
                                 for e in p.entries if not e.knob),
            "wall seconds": round(res["wall_s"], 1)}
