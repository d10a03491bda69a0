"""`bitsieve train MODEL --method bitpruner|scflp`: the training-time methods (reconstructions from abstracts)."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import List, Optional

import typer
from rich.table import Table

from . import formats
from .cli import app, interrupt_note, out
from .errors import UserError

METHODS = ("bitpruner", "scflp")


def _parse_set(items: list[str], cls) -> dict:
    """--set key=value pairs -> typed config fields of ``cls`` (UserError for unknown keys or bad values)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    vals = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set wants key=value, got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        k = k.replace("-", "_")
        if k not in fields:
            raise UserError(f"unknown {cls.__name__} parameter {k!r} (known: {', '.join(fields)})")
        f = fields[k]
        default = f.default
        try:
            if isinstance(default, bool):
                if v.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(v)
                vals[k] = v.lower() in ("1", "true", "yes", "on")
            elif isinstance(default, tuple):
                vals[k] = tuple(type(default[0])(x) for x in v.split(",") if x.strip())
            elif isinstance(default, int):
                vals[k] = int(v)
            elif isinstance(default, float):
                vals[k] = float(v)
            else:
                vals[k] = v
        except ValueError:
            raise UserError(f"--set {k}: bad value {v!r}") from None
    return vals


#: lower bounds of the training options the configs' own checks leave open (a NaN or negative epoch count would
#: train on NaN losses); ``True`` marks a strict bound. Every float must also be finite.
LOWER = {"tolerance": (0, False), "epochs": (0, True), "lr": (0, True), "batch": (1, False),
         "act_samples": (1, False), "steps": (0, False), "count_every": (1, False), "threshold": (0, False),
         "max_channel_frac": (0, False), "distill": (-1, False)}
UPPER = {"threshold": 1, "max_channel_frac": 1}


def _check_ranges(cfg) -> None:
    """Refuse non-finite numbers and values outside LOWER/UPPER before any training starts (a 0 in a field the
    config resolves per task, ``AUTO_ZERO``, means "the task's default")."""
    auto = getattr(cfg, "AUTO_ZERO", ())
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        for x in v if isinstance(v, tuple) else (v,):
            if isinstance(x, float) and not math.isfinite(x):
                raise UserError(f"{f.name} must be a finite number, got {x}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (f.name in auto and v == 0):
            continue
        low, strict = LOWER.get(f.name, (None, False))
        if low is not None and (v < low or (strict and v == low)):
            raise UserError(f"{f.name} must be {'>' if strict else '>='} {low}, got {v}")
        if f.name in UPPER and v > UPPER[f.name]:
            raise UserError(f"{f.name} must be <= {UPPER[f.name]}, got {v}")


def _num(x, fmt="{:.2f}"):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


@app.command()
def train(
    model: str = typer.Argument(..., help="Built-in model: lenet-mnist (MNIST), mtcnn-rnet / mtcnn-onet (faces), "
                                          "mobilenet-v2 (ImageNet subset; bitpruner)."),
    method: str = typer.Option(..., "--method", help="bitpruner or scflp (both reconstructions from abstracts)."),
    target: Optional[str] = typer.Option(None, "--target",
                                         help="bitpruner: design to balance for: pragmatic-ws, laconic, bitlet, bitwave."),
    fmts: Optional[str] = typer.Option(None, "--formats", help="bitpruner: fixed-point formats, int8,int16 (both)."),
    start: Optional[int] = typer.Option(None, "--start",
                                        help="bitpruner: first bit budget (default: chosen from the weights)."),
    rounding: Optional[bool] = typer.Option(None, "--rounding/--truncate",
                                            help="bitpruner: nearest k-term value instead of the top k bits."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance",
                                              help="bitpruner: accuracy points a kept round may lose against the "
                                                   "non-pruned model fine-tuned as long (0.5)."),
    epochs: Optional[float] = typer.Option(None, "--epochs",
                                           help="bitpruner: fine-tuning epochs per round; scflp: fine-tuning epochs "
                                                "from the pretrained start (2)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="bitpruner: fine-tuning steps per round (overrides epochs)."),
    sparsity: Optional[float] = typer.Option(None, "--sparsity", help="scflp: final weight sparsity (0.9)."),
    interval: Optional[int] = typer.Option(None, "--interval", help="scflp: prune every P iterations (20)."),
    clp: Optional[str] = typer.Option(None, "--clp", help="scflp: headline coarse step, stochastic, exhaustive or "
                                                          "none (the others also run unless --set compare=false)."),
    sets: List[str] = typer.Option([], "--set", help="Any other parameter: --set balance_drop=0.1 (repeatable)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice: same seed, same numbers."),
    train_limit: Optional[int] = typer.Option(None, "--train-limit", help="Train on the first N training samples."),
    test_limit: Optional[int] = typer.Option(None, "--test-limit", help="Report on the first N test samples."),
    out_dir: Optional[str] = typer.Option(None, "-o", "--output",
                                          help="Checkpoint folder (manifest, weights, result.json)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output, skipping finished rounds."),
    force: bool = typer.Option(False, "--force", help="Start over in an existing --output folder."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (no progress bars)."),
):
    """Train with a training-time method and compare with its baselines on an accelerator model."""
    from .train import bitpruner, scflp
    from .zoo import BUILTINS

    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if model not in BUILTINS:
        raise UserError(f"unknown built-in model {model!r} (train needs a built-in: lenet-mnist, mtcnn-rnet, ...)")
    if resume and not out_dir:
        raise UserError("--resume needs --output DIR (the folder of the run to continue)")
    if resume and force:
        raise UserError("--resume and --force contradict each other")
    for name, v in (("--train-limit", train_limit), ("--test-limit", test_limit), ("--steps", steps),
                    ("--interval", interval)):
        if v is not None and v < 1:
            raise UserError(f"{name} must be >= 1")
    given = {"seed": seed}
    if method == "bitpruner":
        for opt, v in (("--sparsity", sparsity), ("--interval", interval), ("--clp", clp)):
            if v is not None:
                raise UserError(f"{opt} is an scflp option")
        cls = bitpruner.BitPrunerConfig
        if start is not None and start < 1:
            raise UserError("--start must be >= 1")
        given.update({k: v for k, v in (("target", target), ("start", start), ("rounding", rounding),
                                         ("tolerance", tolerance), ("epochs", epochs), ("steps", steps))
                      if v is not None})
        if fmts is not None:
            given["formats"] = tuple(x.strip() for x in fmts.split(",") if x.strip())
    else:
        for opt, v in (("--target", target), ("--formats", fmts), ("--start", start), ("--rounding", rounding),
                       ("--tolerance", tolerance), ("--steps", steps)):
            if v is not None:
                raise UserError(f"{opt} is a bitpruner option")
        cls = scflp.SCFLPConfig
        if epochs is not None and epochs != int(epochs):
            raise UserError("scflp --epochs must be a whole number")
        given.update({k: v for k, v in (("sparsity", sparsity), ("interval", interval), ("clp", clp),
                                         ("epochs", None if epochs is None else int(epochs))) if v is not None})
    given.update(_parse_set(sets, cls))
    try:
        cfg = cls(**given)
    except TypeError as e:
        raise UserError(str(e)) from None
    _check_ranges(cfg)
    runner = bitpruner.run if method == "bitpruner" else scflp.run
    note = (f"finished stages are saved in {out_dir}; run again with --resume to continue" if out_dir
            else "nothing was saved (no --output folder)")
    with interrupt_note(note):
        result = runner(model, cfg, out_dir=out_dir, resume=resume, force=force, progress=not json_out,
                        train_limit=train_limit, test_limit=test_limit)
    if json_out:
        print(json.dumps(result, default=float))
        return
    (_print_bitpruner if method == "bitpruner" else _print_scflp)(result)
    if out_dir:
        out.print(f"checkpoints and result.json in {out_dir}")


def _pct(x, fmt="{:.1f}"):
    return _num(None if x is None else 100 * x, fmt)


def _print_bitpruner(r: dict):
    c = r["claims"]
    out.print(f"[bold]BitPruner on {r['model']}[/] -- reconstruction from the abstract; {r['data']}")
    for fmt, f in r["formats"].items():
        designs = list(f["designs"])
        t = Table(title=f"{fmt}: budgets from {f['start_budget']} down while val stays within "
                        f"{r['config']['tolerance']} points of the non-pruned model fine-tuned as long; "
                        f"{r['target']} {r['style']} cap over {'/'.join(map(str, f['groups']))}-lane groups")
        for col in ("variant", "budget", "steps", "acc %", "95% CI", "n", "chg vs FT", "95% CI ", "zero bits %",
                    "zero wts %", "ess bits/w"):
            t.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
        c2 = Table(title=f"{fmt}: speed-up over the non-pruned FT / over the magnitude FT model (same {fmt}; "
                         "registry cycles)")
        c2.add_column("variant", no_wrap=True)
        for d in designs:
            c2.add_column(d, justify="right", no_wrap=True)
        for v in f["variants"]:
            st = v["stats"]["total"]
            chg = ("-", "") if "change" not in v else \
                (f"{v['change']:+.2f}", f"[{v['change_ci'][0]:+.2f}, {v['change_ci'][1]:+.2f}]")
            t.add_row(v["name"], "-" if v["budget"] is None else f"k={v['budget']}{'' if v['balanced'] else ' nb'}",
                      str(v["steps"]), f"{v['accuracy']:.2f}", f"[{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]", str(v["n"]),
                      *chg, _pct(st["bit_sparsity"]), _pct(st["weight_sparsity"], "{:.2f}"),
                      _num(st["mean_essential_bits"], "{:.3f}"))
            c2.add_row(v["name"], *(f"{_num(v['speedup_vs_nonpruned'][d], '{:.2f}x')} / "
                                    f"{_num(v['speedup_vs_magnitude'][d], '{:.2f}x')}" for d in designs))
        out.print(t)
        out.print(c2)
        kept = [x for x in f["rounds"] if x["kept"]]
        still = [d for d, x in f["designs"].items() if not x["reads_weights"]]
        out.print(f"{', '.join(still) or 'no design'}: activation-serial, cycles independent of the weights (1.00x "
                  f"by design). 'nb': no load balance. Steps: every trained variant gets BitPruner's whole budget, "
                  f"kept and rejected rounds ({len(kept)} kept of {len(f['rounds'])}); the magnitude model is masked "
                  f"to BitPruner's zero weights per layer (zero wts % is after its fine-tuning).")
        if f["budget"] is None:
            out.print(f"no round was kept at {fmt}: BitPruner returns the original model unchanged (its row); the "
                      f"rejected round's steps still count in the baselines' budget.")
        p, bp = f["paper"], next(v for v in f["variants"] if v["name"] == "bitpruner")
        ws = [d for d, x in f["designs"].items() if x["reads_weights"]]
        spn = ", ".join(f"{d} {_num(p['speedup_vs_nonpruned'][d], '{:.2f}x')}" for d in ws)
        spm = ", ".join(f"{d} {_num(p['speedup_vs_magnitude'][d], '{:.2f}x')}" for d in ws)
        best_n = max((p["speedup_vs_nonpruned"][d] or 0) for d in ws) if ws else 0
        best_m = max((p["speedup_vs_magnitude"][d] or 0) for d in ws) if ws else 0

        byname = {v["name"]: v for v in f["variants"]}
        zw = {k: byname[k]["stats"]["total"]["weight_sparsity"] for k in ("non-pruned FT", "magnitude FT")}
        no_weight_pruning = zw["magnitude FT"] - zw["non-pruned FT"] < 0.01

        def verdict(x, claim, magnitude=False):
            if magnitude and no_weight_pruning:
                return (f"not a test: matched to BitPruner's zero weights, the magnitude model has "
                        f"{100 * zw['magnitude FT']:.2f}% zero weights, about as many as the non-pruned one")
            if x < claim:
                return "not reproduced"
            return "reproduced on the best" if p["within_tolerance"] else "speed-up reached, accuracy outside the tolerance"

        out.print(f"paper (abstract): bit sparsity up to {c['bit_sparsity_pct']}% with negligible loss; "
                  f"{c['speedup_vs_nonpruned']}x over non-pruned, {c['speedup_vs_weight_pruned']}x over weight-pruned")
        k, mag = f["budget"], formats.get(fmt).nbits  # the magnitude planes
        bound = "" if k is None else (f"; {k} of {mag} magnitude bits per weight puts it at >= "
                                      f"{100 * (1 - k / mag):.1f}% by construction")
        out.print(f"here ({fmt}): bit sparsity {p['bit_sparsity_pct']:.1f}% "
                  f"({'reproduced' if p['bit_sparsity_reproduced'] else 'not reproduced'}{bound}); accuracy change "
                  f"{_num(bp.get('change'), '{:+.2f}')} points ({'within' if p['within_tolerance'] else 'outside'} "
                  f"the tolerance); over non-pruned FT {spn} "
                  f"({verdict(best_n, c['speedup_vs_nonpruned'])}); "
                  f"over magnitude FT {spm} "
                  f"({verdict(best_m, c['speedup_vs_weight_pruned'], magnitude=True)})")
        ro = byname.get("rounding+balance")
        if ro is not None and bp["budget"] is not None and ws:
            same = all(abs(bp["speedup_vs_nonpruned"][d] - ro["speedup_vs_nonpruned"][d]) < 0.005 for d in ws)
            out.print(f"what training adds ({fmt}): {bp['accuracy'] - ro['accuracy']:+.2f} points over rounding to the "
                      f"same budget without training; speed-ups "
                      + ("the same: the budget, not the training, sets them" if same else
                         ", ".join(f"{d} {bp['speedup_vs_nonpruned'][d]:.2f}x vs {ro['speedup_vs_nonpruned'][d]:.2f}x"
                                   for d in ws)))


def _print_scflp(r: dict):
    from .train import scflp

    for part in scflp.render(r):
        out.print(part)
