"""What every command shows in the terminal: progress bars, result tables, and plain `key: value` facts."""

from __future__ import annotations

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


@contextmanager
def progress_bars(console, transient: bool = True):
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=transient) as progress:
        yield ProgressBars(progress)


_HEADERS = {"rung": "rung", "method": "method", "epochs_run": "epochs", "train_seconds": "train s",
            "peak_rss_mb": "peak MB", "shots": "K", "select": "select", "calibrate": "calib", "accuracy": "acc",
            "macro_f1": "F1", "mae": "MAE", "spearman": "rho", "examples_per_s": "ex/s", "params_total": "params",
            "params_trainable": "trainable"}


def results_table(results: list[dict], title: str) -> Table:
    """evaluate() results (one per row) as a table with the columns they have: quality, speed, parameters."""
    quality = ["mae", "spearman"] if "mae" in results[0] else ["accuracy", "macro_f1"]
    columns = [c for c in ["rung", "method", "shots", "select", "calibrate", *quality, "examples_per_s",
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


