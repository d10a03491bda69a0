"""The `bitsieve` command. Every user error becomes one line on stderr and exit code 2."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import typer
from rich.console import Console

from .errors import UserError, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Bit-level sparsity of DNNs: profile, prune, evaluate and simulate bit-serial accelerators.")
out = Console(width=None if sys.stdout.isatty() else 170)  # pipes and files get a full-width table


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


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"bitsieve {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")):
    pass


# Commands that live in their own modules register themselves on `app` when imported.
from . import cli_methods, cli_accel, cli_study, cli_train  # noqa: E402,F401


@app.command("formats")
def formats_cmd(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the number formats that --format takes."""
    import json

    from rich.table import Table

    from .formats import CATALOGUE

    if json_out:
        print(json.dumps([{"name": n, "description": d} for n, d in CATALOGUE], indent=1))
        return
    t = Table("format", "description", title="number formats")
    for n, d in CATALOGUE:
        t.add_row(n, d)
    out.print(t)


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
