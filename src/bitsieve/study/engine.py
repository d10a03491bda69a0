"""The one executor of studies: units of work run in this process, in a local process pool or on Ray, and
their results come back as they finish. ``compare`` and ``sweep`` both plan units and hand them here.

A unit is any picklable object with a ``label``; the work is a module-level function ``fn(unit, say)`` whose
``say(fraction)`` reports progress (shown live in this process and the pool; Ray reports only completion).
A ``UserError`` inside a unit is that unit's failure (reported, the others go on); anything else stops the
study.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..errors import UserError

BACKENDS = ("local", "ray")


@dataclass
class Done:
    """A finished unit: its result, or the message of the user error that stopped it."""

    unit: Any
    result: Any = None
    error: str = ""
    wall_s: float = 0.0


def check_options(backend: str = "local", workers: int | None = None, address: str | None = None) -> None:
    """The engine's options, checked before a caller makes any output."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r} (local or ray)")
    if address and backend != "ray":
        raise UserError("--address needs --backend ray")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def execute(units: list, fn: Callable, *, backend: str = "local", workers: int | None = None,
            address: str | None = None, on_progress: Callable[[Any, float], None] | None = None) -> Iterator[Done]:
    """Run ``fn`` on every unit; yields ``Done`` in completion order."""
    check_options(backend, workers, address)
    say = on_progress or (lambda u, f: None)
    if not units:
        return
    if backend == "ray":
        yield from _ray(units, fn, workers, address)
    elif (workers or default_workers()) == 1 or len(units) == 1:
        keep_freed_memory()
        for u in units:
            yield _one(fn, u, lambda f, _u=u: say(_u, f))
    else:
        yield from _pool(units, fn, min(workers or default_workers(), len(units)), say)


def _one(fn, unit, say) -> Done:
    t0 = time.perf_counter()
    try:
        out = fn(unit, say)
    except UserError as e:
        return Done(unit, error=str(e), wall_s=time.perf_counter() - t0)
    return Done(unit, out, wall_s=time.perf_counter() - t0)


_QUEUE = None  # pool workers: where progress goes (set by worker_init)


def _reporting(fn, unit, index):
    """Pool side: run one unit, sending its progress to the driver (at most every 2 %)."""
    last = [0.0]

    def say(f):
        if _QUEUE is not None and (f - last[0] >= 0.02 or f >= 1.0):
            last[0] = f
            _QUEUE.put((index, f))

    return _one(fn, unit, say)


def _pool(units, fn, workers, say) -> Iterator[Done]:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
    keep_freed_memory()
    q = ctx.Queue()  # handed to the workers at start-up: no extra server process to outlive a killed driver
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker_init, initargs=(q,)) as pool:
        futs = {pool.submit(_reporting, fn, u, i): u for i, u in enumerate(units)}
        pending = set(futs)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                while True:
                    try:
                        i, f = q.get_nowait()
                    except queue_mod.Empty:
                        break
                    say(units[i], f)
                for fut in done:
                    d = fut.result()
                    d.unit = futs[fut]  # the caller's own object, not the worker's copy
                    yield d
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _ray(units, fn, workers, address) -> Iterator[Done]:
    try:
        import ray
    except ImportError:
        raise UserError("the Ray backend needs ray: pip install 'bitsieve[ray]'") from None
    started = False
    if not ray.is_initialized():
        env = {"env_vars": {"OMP_NUM_THREADS": "1"}}
        if address:
            _check_reachable(address)
        try:
            if address:
                ray.init(address=address, runtime_env=env, log_to_driver=False, logging_level="ERROR")
            else:
                ray.init(num_cpus=workers or default_workers(), runtime_env=env, include_dashboard=False,
                         log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot start or reach Ray{' at ' + address if address else ''}: {e}") from None
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=2)(_ray_unit)
        refs = {remote.remote(fn, u): u for u in units}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                d = ray.get(ref)
                d.unit = refs[ref]
                yield d
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail within seconds on a HOST:PORT (or ray://HOST:PORT) nobody listens on: ray.init would retry for
    minutes. Other forms ('auto', 'local') are Ray's to resolve."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"cannot reach Ray at {address}: {e.strerror or e}") from None


def _ray_unit(fn, unit) -> Done:
    """A Ray task: the same unit function, user errors returned as values (not retried)."""
    worker_threads()
    return _one(fn, unit, lambda f: None)


def worker_init(queue=None):
    """Pool workers: one thread each, progress to ``queue``, and die with the driving process even when it is
    SIGKILLed."""
    global _QUEUE
    _QUEUE = queue
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the pool's own shutdown still ends the workers
        pass
    worker_threads()


def worker_threads():
    os.environ["OMP_NUM_THREADS"] = "1"
    keep_freed_memory()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def keep_freed_memory():
    """glibc hands every large temporary array back to the kernel and faults fresh zeroed pages in for the next
    one; a task makes thousands of them (a third of a worker's time went to page faults). Keep freed blocks of up
    to 32 MiB in the heap instead (glibc only; harmless elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: trim the heap only when 1 GiB is free at its top
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD: blocks under 32 MiB come from the heap
    except Exception:
        pass
