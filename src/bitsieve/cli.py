"""The `bitsieve` command. Every user error becomes one line on stderr and exit code 2."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from contextlib import contextmanager
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import formats
from .errors import UserError, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Bit-level sparsity of DNNs: profile, prune, evaluate and simulate bit-serial accelerators.")
out = Console(width=None if sys.stdout.isatty() else 170)  # pipes and files get a full-width table
SPARK = " ▁▂▃▄▅▆▇█"


def _spark(fracs) -> str:
    """Occupancy per significance as a tiny bar chart, MSB on the left like a written number."""
    return "".join(SPARK[min(int(f * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for f in reversed(fracs))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


_interrupted: list[str] = []  # what an interrupted command left behind, for the Ctrl-C line


@contextmanager
def interrupt_note(text: str):
    """On Ctrl-C inside the block, the exit line says ``text`` (what was kept and how to go on)."""
    try:
        yield
    except KeyboardInterrupt:
        _interrupted.append(text)
        raise


def _interrupt() -> int:
    print(f"bitsieve: interrupted{': ' + one_line(_interrupted[-1]) if _interrupted else ''}", file=sys.stderr)
    return 130


@app.command()
def models(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the built-in real models."""
    from .zoo import BUILTINS

    rows = [{"name": b.name, "task": b.task, "params": b.params, "description": b.description}
            for b in BUILTINS.values()]
    if json_out:
        print(json.dumps(rows, indent=1))
        return
    t = Table("model", "task", "params", "description", title="built-in models")
    for r in rows:
        t.add_row(r["name"], r["task"], f"{r['params']:,}", r["description"])
    out.print(t)


@app.command()
def profile(
    model: str = typer.Argument(..., help="Built-in name or a .safetensors/.pt/.pth/.onnx file."),
    fmt: str = typer.Option("fp32", "--format", help="fp32, bf16, fp16, int8, int16, int<b>, int<b>tc, q<m>.<n>."),
    group: int = typer.Option(64, "--group", help="Values per group along the dot-product axis (1..64)."),
    align: str = typer.Option("weight", "--align", help="Float alignment: weight (to the group's max exponent) or none."),
    activations: int = typer.Option(0, "--activations", help="Also profile the input activations captured on N real samples."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="Also write the per-layer table to this CSV file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Zero and count NaN/Inf weights instead of refusing."),
):
    """Bit sparsity of every layer's weights (and activations), after grouping and alignment."""
    from . import model as model_mod
    from .io import check_writable, write_atomic
    from .profile import FIELDS, counts, merge, stats
    from .planes import pack

    f = formats.get(fmt)
    if not 1 <= group <= 64:
        raise UserError(f"--group must be 1..64, got {group}")
    if align not in ("weight", "none"):
        raise UserError(f"--align must be weight or none, got {align!r}")
    if csv_path:
        check_writable(csv_path, force)
    m = model_mod.load(model, activations=activations, allow_nonfinite=allow_nonfinite)
    rows, totals, act_totals = [], [], []
    for layer in m.layers:
        c = counts(pack(layer.weight, f, group, align))
        totals.append(c)
        rows.append({"name": layer.name, "tensor": "weight", "kind": layer.kind,
                     "shape": list(layer.weight.shape), "nonfinite": layer.nonfinite, **stats(c)})
        if activations and layer.activation is not None:
            a = counts(pack(layer.activation, f, group, align, axis=-1 if layer.kind == "linear" else 1,
                            per_channel=False))
            act_totals.append(a)
            rows.append({"name": layer.name, "tensor": "activation", "kind": layer.kind,
                         "shape": list(layer.activation.shape), "nonfinite": 0, **stats(a)})
    total = {"nonfinite": sum(layer.nonfinite for layer in m.layers), **stats(merge(totals))}
    result = {"model": m.name, "format": f.name, "group": group, "align": align, "layers": rows, "total": total}
    if act_totals:
        result["activation_total"] = stats(merge(act_totals))
    if csv_path:
        buf = io.StringIO()
        keys = ["name", "tensor", "kind", "shape", *FIELDS, "nonfinite"]
        w = csv.DictWriter(buf, keys, extrasaction="ignore")
        w.writeheader()
        for r in rows + [{"name": "TOTAL", "tensor": "weight", **total}]:
            w.writerow({**r, "shape": "x".join(map(str, r.get("shape", []))),
                        "plane_occupancy": " ".join(f"{x:.4f}" for x in r["plane_occupancy"])})
        write_atomic(csv_path, buf.getvalue(), force=force)
    if json_out:
        print(json.dumps(result))
        return
    t = Table(title=f"{m.name}: {f.name}, group {group}, align {align}  (percentages; occupancy MSB..LSB)")
    for col in ("layer", "tensor", "values", "zero val", "zero bit", "ess mean", "ess max",
                "zero planes", "densest mean", "densest max", "align lost", "occupancy"):
        t.add_column(col, justify="left" if col in ("layer", "tensor", "occupancy") else "right")

    def add(name, tensor, s, style=None):
        t.add_row(name, tensor, f"{s['values']:,}", _pct(s["zero_value_frac"]), _pct(s["zero_bit_frac"]),
                  f"{s['mean_essential_bits']:.2f}", str(s["max_essential_bits"]), _pct(s["zero_plane_frac"]),
                  f"{s['mean_max_plane_ones']:.1f}", str(s["max_max_plane_ones"]), _pct(s["align_lost_frac"]),
                  _spark(s["plane_occupancy"]), style=style)

    for r in rows:
        add(r["name"], r["tensor"][:3], r)
    add("TOTAL", "wgt", total, style="bold")
    if act_totals:
        add("TOTAL", "act", result["activation_total"], style="bold")
    out.print(t)
    if total["nonfinite"]:
        out.print(f"[yellow]{total['nonfinite']} non-finite weights were zeroed (--allow-nonfinite)[/]")


# Commands that live in their own modules register themselves on `app` when imported.
from . import cli_methods, cli_accel, cli_study, cli_train  # noqa: E402,F401


def _error(msg: str) -> int:
    print(f"bitsieve: error: {one_line(msg)}", file=sys.stderr)
    return 2


def _quiet_stdout() -> None:
    """After stdout failed (a full device, a closed pipe) send the rest to /dev/null, so the interpreter's
    final flush does not print a second error."""
    try:
        sys.stdout = open(os.devnull, "w")
    except OSError:
        pass


def main(argv=None) -> int:
    """Entry point: run the app and turn user errors and bad options into one line and exit code 2,
    Ctrl-C into exit code 130."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _interrupted.clear()
    try:
        rv = typer.main.get_command(app).main(args=argv, prog_name="bitsieve", standalone_mode=False)
        sys.stdout.flush()  # a write error on stdout (e.g. /dev/full) shows up here, not after we returned 0
    except UserError as e:
        return _error(str(e))
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("bitsieve: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as e:  # typer's own click: bad options, unknown commands
        if type(e).__name__ == "NoArgsIsHelpError":  # typer has already printed the help
            return 0
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        return _error(" ".join(msg.split()))
    except KeyboardInterrupt:
        return _interrupt()
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except RecursionError:
        return _error("input nested too deeply to read")
    except MemoryError:
        return _error("out of memory")
    except OSError as e:  # the environment, not bitsieve: a full disk, stdout on /dev/full, a read-only folder
        _quiet_stdout()
        return _error(f"{e.filename}: {e.strerror or e}" if e.filename else f"cannot write output: {e.strerror or e}")
    if rv == 130:  # typer turns Ctrl-C inside a command into a return value of 130
        return _interrupt()
    return rv if isinstance(rv, int) else 0
