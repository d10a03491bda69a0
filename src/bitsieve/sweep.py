"""Design-space sweeps: a sweep file (``bitsieve.study.sweepfile`` documents the format) cut into tasks, run by
the study engine (a local process pool or Ray), written to a resumable SQLite store (``results.Store``): a
task's rows go in together with its 'done' mark, so a killed sweep resumes where it stopped, without lost or
duplicated rows.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from . import results
from .errors import UserError
from .study import engine
from .study.pipeline import resolve, run_task
from .study.progress import TaskBar
from .study.sweepfile import DEFAULT_ACTIVATIONS, QUICK_LIMIT, Sweep, Task, parse, quick_limit

__all__ = ["DEFAULT_ACTIVATIONS", "QUICK_LIMIT", "Sweep", "Task", "open_store", "parse", "quick_limit", "resolve",
           "run", "run_task"]


def open_store(sw: Sweep, outdir, force: bool = False) -> results.Store:
    """The store of this sweep in ``outdir``: new, or the one a killed run of the same sweep left."""
    store = results.Store(outdir)
    fp = store.get_meta("fingerprint")
    keys = {t.key for t in sw.tasks}
    if fp is not None and fp != sw.fingerprint() and not force and store.done() <= keys:
        fp = sw.fingerprint()  # the same sweep, extended (more models, formats or groups): run only the new tasks
    if fp is not None and fp != sw.fingerprint():
        if not force:
            other = store.get_meta("sweep_file")
            store.close()
            raise UserError(f"{outdir} holds results of a different sweep (from {other}); "
                            "use another -o folder, or --force to start over")
        store.clear()
    if force and fp == sw.fingerprint():
        store.clear()
    store.set_meta("fingerprint", sw.fingerprint())
    store.set_meta("sweep_file", sw.path)
    store.set_meta("sweep_text", sw.text)
    return store


def _task_unit(task: Task, say) -> list[dict]:
    return run_task(task, lambda stage, f: say(f))


def run(sw: Sweep, outdir, *, backend: str = "local", workers: int | None = None, address: str | None = None,
        force: bool = False, console=None, on_done: Callable[[Task], None] | None = None) -> dict:
    """Run every task of the sweep not yet in the store. Returns counts and the wall time."""
    engine.check_options(backend, workers, address)
    store = open_store(sw, outdir, force)
    t0 = time.perf_counter()
    done = store.done()
    todo = [t for t in sw.tasks if t.key not in done]
    failed: list[tuple[Task, str]] = []
    progress = TaskBar(console, len(sw.tasks), len(sw.tasks) - len(todo))
    try:
        with progress:
            for d in engine.execute(todo, _task_unit, backend=backend, workers=workers, address=address):
                if d.error:
                    failed.append((d.unit, d.error))
                    continue
                store.commit_task(d.unit.key, d.result, d.unit.spec(), d.wall_s)
                progress.advance(d.unit, d.wall_s)
                if on_done:
                    on_done(d.unit)
    finally:
        n_rows = store.conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        store.close()
    wall = time.perf_counter() - t0
    if failed:
        lines = "; ".join(f"{t.model} {t.format} g{t.group}: {msg}" for t, msg in failed)
        raise UserError(f"{len(failed)} of {len(sw.tasks)} tasks failed ({lines}); the others are stored, and "
                        "running the same command again retries only the failed ones")
    return {"tasks": len(sw.tasks), "ran": len(todo), "skipped": len(sw.tasks) - len(todo), "rows": n_rows,
            "wall_s": wall, "backend": backend, "store": str(Path(outdir) / results.STORE_NAME)}
