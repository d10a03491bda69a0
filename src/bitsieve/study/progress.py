"""Progress on the terminal: one Rich bar per unit (compare) or one bar over a sweep's tasks; silent without a
console (``--json``, tests)."""
from __future__ import annotations


class UnitBars:
    """One bar per unit, labelled with the unit's ``label``."""

    def __init__(self, console, units):
        self.console, self.units, self.p = console, units, None

    def __enter__(self):
        if self.console is not None:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self.p = Progress(TextColumn("{task.description}", style="bold"), BarColumn(), TaskProgressColumn(),
                              TimeElapsedColumn(), console=self.console, transient=False)
            self.p.__enter__()
            self.ids = {id(u): self.p.add_task(u.label, total=1.0) for u in self.units}
        return self

    def update(self, unit, frac):
        if self.p is not None:
            self.p.update(self.ids[id(unit)], completed=min(1.0, frac))

    def __exit__(self, *exc):
        if self.p is not None:
            self.p.__exit__(*exc)


class TaskBar:
    """One bar over a sweep's tasks (those already in the store count as done)."""

    def __init__(self, console, total: int, already: int):
        self.console, self.total, self.already = console, total, already
        self.bar = None

    def __enter__(self):
        if self.console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]sweep[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.description}"), console=self.console, transient=False)
            self.bar.__enter__()
            self.tid = self.bar.add_task("", total=self.total, completed=self.already)
        return self

    def advance(self, task, wall: float):
        if self.bar is not None:
            self.bar.update(self.tid, advance=1, description=f"{task.model} {task.format} g{task.group} ({wall:.1f} s)")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
