"""What every command shows in the terminal: progress bars, result tables, and plain `key: value` facts."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.1f} ex/s")


class ProgressBars:
    """Rich progress bars made on first use; each method gives the callback a library function calls."""

    def __init__(self, progress: Progress):
        self.progress, self.ids = progress, {}

    def bar(self, name: str, total: int | None = None) -> Callable[..., None]:
        """Advances bar `name` by its first argument (later ones, such as a loss, are ignored)."""
        def advance(n: int = 1, *_ignored):
            if name not in self.ids:
                self.ids[name] = self.progress.add_task(name, total=total)
            self.progress.advance(self.ids[name], n)
        return advance

    def total(self, name: str) -> Callable[[int], None]:
        """Sets bar `name`'s total once the library knows it."""
        return lambda n: self.ids.setdefault(name, self.progress.add_task(name, total=n))

    def note(self, name: str) -> Callable[..., None]:
        """Prints a line above the bars (an epoch and its validation loss)."""
        return lambda *values: self.progress.console.print(f"{name}: " + " ".join(map(str, values)))


class PlainProgress:
    """ProgressBars' callbacks as plain lines, for output that is not a terminal (a CI log, `make run | tee`): a
    line when a section starts, one every `every_s` seconds with the count, the elapsed time and an ETA, and one
    when it ends. Bars redrawn in place would print nothing there until the end."""

    def __init__(self, console, every_s: float = 30.0, clock=time.monotonic):
        self.console, self.every_s, self.clock = console, every_s, clock
        self.state: dict[str, dict] = {}
        self.totals: dict[str, int] = {}

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def bar(self, name: str, total: int | None = None) -> Callable[..., None]:
        def advance(n: int = 1, *_ignored):
            now = self.clock()
            state = self.state.get(name)
            if state is None:
                known = total or self.totals.get(name)
                state = self.state[name] = {"done": 0, "total": known, "started": now, "said": now}
                self._say(f"{name}: started" + (f" ({known:,} to do)" if known else ""))
            state["done"] += n
            elapsed = now - state["started"]
            if state["total"] and state["done"] >= state["total"]:
                self._say(f"{name}: done, {state['done']:,} in {elapsed:.0f} s")
                state["total"] = None  # said once
            elif now - state["said"] >= self.every_s:
                state["said"] = now
                left = state["total"] and elapsed / state["done"] * (state["total"] - state["done"])
                self._say(f"{name}: {state['done']:,}" + (f"/{state['total']:,}" if state["total"] else "")
                          + f", {elapsed:.0f} s elapsed" + (f", ETA {left:.0f} s" if left else ""))
        return advance

    def total(self, name: str) -> Callable[[int], None]:
        return lambda n: self.totals.__setitem__(name, n)

    def note(self, name: str) -> Callable[..., None]:
        return lambda *values: self._say(f"{name}: " + " ".join(map(str, values)))


class NoProgress:
    """ProgressBars' callbacks that say nothing: the other processes of a data-parallel job, whose rank 0 reports."""

    def bar(self, name: str, total: int | None = None) -> Callable[..., None]:
        return lambda *_ignored: None

    def total(self, name: str) -> Callable[[int], None]:
        return lambda n: None

    def note(self, name: str) -> Callable[..., None]:
        return lambda *values: None


@contextmanager
def heartbeat(console, describe: Callable[[], str], every_s: float = 30.0):
    """Where output is not a terminal, a line every `every_s` seconds from `describe()` while the block runs (a
    long step prints nothing else in between); nothing on a terminal, where bars show the same."""
    if console.is_terminal:
        yield
        return
    import threading

    stop = threading.Event()

    def beat():
        while not stop.wait(every_s):
            console.print(describe(), highlight=False, markup=False, soft_wrap=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def progress_bars(console, transient: bool = True):
    if not console.is_terminal:
        yield PlainProgress(console)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=transient) as progress:
        yield ProgressBars(progress)


_HEADERS = {"rung": "rung", "method": "method", "epochs_run": "epochs", "train_seconds": "train s",
            "peak_rss_mb": "peak MB", "shots": "K", "select": "select", "calibrate": "calib", "accuracy": "acc",
            "macro_f1": "F1", "micro_f1": "micro F1", "subset_accuracy": "exact", "mae": "MAE", "spearman": "rho",
            "examples_per_s": "ex/s", "params_total": "params", "params_trainable": "trainable"}


def results_table(results: list[dict], title: str) -> Table:
    """evaluate() results (one per row) as a table with the columns they have: quality, speed, parameters."""
    quality = (["mae", "spearman"] if "mae" in results[0] else ["micro_f1", "macro_f1", "subset_accuracy"]
               if "micro_f1" in results[0] else ["accuracy", "macro_f1"])
    columns = [c for c in ["rung", "method", "shots", "select", "calibrate", *dict.fromkeys(quality), "examples_per_s",
                           "params_total", "params_trainable", "epochs_run", "train_seconds", "peak_rss_mb"]
               if any(c in r for r in results)]
    table = Table(title=title)
    for column in columns:
        table.add_column(_HEADERS[column], justify="left" if column in ("rung", "method", "select") else "right")
    for result in results:
        table.add_row(*(with_interval(result.get(column), result.get("intervals", {}).get(column))
                        for column in columns))
    return table


def with_interval(value, bounds) -> str:
    """A figure and its 95% interval: `0.912 [0.880, 0.940]`."""
    return cell(value) if not bounds else f"{cell(value)} [{bounds[0]:.3f}, {bounds[1]:.3f}]"


def fact_lines(facts: dict) -> list[str]:
    """One `key: value` line per fact."""
    return [f"{key}: {cell(value)}" for key, value in facts.items()]


def cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


