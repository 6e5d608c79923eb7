"""How results are shown: console tables and lines for every command, and the ladder's report.json, report.md and
self-contained report.html. Rendering only: the rungs and ladder.run() measure and decide; this module shows.
"""

from __future__ import annotations

import base64
import html
import io
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from tunelab.evaluate import headline_quality
from tunelab.predictor import write_json_atomic


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
        table.add_row(*(cell(result.get(column)) for column in columns))
    return table


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


def _rows(report: dict) -> list[dict]:
    rows = []
    for rung, result in report["rungs"].items():
        metrics, bias = result["metrics"], result["bias"]
        rows.append({
            "rung": rung, "quality": headline_quality(metrics), "examples_per_s": metrics["examples_per_s"],
            "latency_ms": metrics["latency_ms_per_example"], "params_total": metrics["params_total"],
            "params_trainable": metrics["params_trainable"], "train_seconds": result.get("train_seconds", 0.0),
            "peak_rss_mb": result["peak_rss_mb"], "slice_gap": next(iter(bias["slices"]["largest_gap"].values())),
            "counterfactual_gap": bias["counterfactual"]["max_gap"], "verdict": bias["counterfactual"]["verdict"],
            "length": f"{metrics.get('n_truncated', 0)} cut / {metrics.get('max_length') or '-'}",
        })
    return rows


def _search_lines(report: dict) -> list[str]:
    few = report["rungs"].get("few", {})
    if "searched" not in few:
        return []
    return ["", f"The few rung is the prompt kept by a search over {few['configs_tried']} configurations on held-out "
                f"training examples: {few['searched']} (validation {few['validation']:.3f}; the zero-shot prompt is "
                "the search's first candidate, so on validation the few rung is never below it)."]


def _markdown(report: dict) -> str:
    metric = report["choice"]["metric"]
    lines = [f"# tunelab ladder: {report['task']} ({report['model']})", "",
             f"{report['n_train']} training and {report['n_test']} test examples. {report['split_note']}".strip(), "",
             f"| rung | {metric} | examples/s | latency ms | params total | params trainable | train s | peak RSS MB "
             f"(process, so far) | test texts cut / max tokens | largest slice gap | counterfactual gap "
             f"| probe verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in _rows(report):
        lines.append(f"| {row['rung']} | {row['quality']:.3f} | {row['examples_per_s']:.1f} | {row['latency_ms']:.1f} "
                     f"| {row['params_total']:,} | {row['params_trainable']:,} | {row['train_seconds']:.0f} "
                     f"| {row['peak_rss_mb']:,.0f} | {row['length']} | {row['slice_gap']:.3f} "
                     f"| {row['counterfactual_gap']:.3f} | {row['verdict']} |")
    lines += _search_lines(report)
    if report.get("sensitivity"):
        lines += ["", "Prompt sensitivity (validation quality over variants: min / median / max):", ""]
        lines += [f"- {r['factor']}, {'all K' if r['shots'] is None else 'K=' + str(r['shots'])}: {r['min']:.3f} / "
                  f"{r['median']:.3f} / {r['max']:.3f}" for r in report["sensitivity"]]
    lines += ["", "Parameter facts, checked on this run's artifacts:", ""]
    lines += [f"- {'holds' if f['holds'] else 'BROKEN'}: {f['fact']} ({f['evidence']})"
              for f in report["parameter_facts"]]
    choice = report["choice"]
    if choice["target"] is not None:
        lines += ["", f"Target {metric} >= {choice['target']}: cheapest rung to build "
                      f"**{choice['cheapest_to_build'] or 'none reaches it'}**, fastest to serve "
                      f"**{choice['fastest_to_serve'] or 'none'}**."]
    if report["few_shot_curve"]:
        lines += ["", "Few-shot curve: " + ", ".join(f"K={p['shots']}: {p['quality']:.3f}"
                                                    for p in report["few_shot_curve"])]
    lines += ["", f"Wall time: {report['wall_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def _plot_png(draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _plots(report: dict) -> dict[str, str]:
    rows, metric = _rows(report), report["choice"]["metric"]

    def scatter(x_key, x_label):
        def draw(axes):
            for row in rows:
                axes.scatter(row[x_key], row["quality"])
                axes.annotate(row["rung"], (row[x_key], row["quality"]), textcoords="offset points", xytext=(4, 4))
            axes.set_xscale("log")
            axes.set_xlabel(x_label)
            axes.set_ylabel(metric)
        return draw

    def curve(axes):
        points = report["few_shot_curve"]
        axes.plot([p["shots"] for p in points], [p["quality"] for p in points], marker="o")
        axes.set_xlabel("shots (K)")
        axes.set_ylabel(metric)

    def slices(axes):
        groups = sorted({g for r in report["rungs"].values() for g in r["bias"]["slices"]["by_group"]})
        width = 0.8 / max(1, len(report["rungs"]))
        key = "accuracy" if metric == "accuracy" else "mae"
        for i, (rung, result) in enumerate(report["rungs"].items()):
            by_group = result["bias"]["slices"]["by_group"]
            axes.bar([g + i * width for g in range(len(groups))], [by_group.get(g, {}).get(key, 0) for g in groups],
                     width, label=rung)
        axes.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)
        axes.set_ylabel(key)
        axes.legend(fontsize=7)

    def spread(axes):
        rows = report["sensitivity"]
        names = [f"{r['factor']}\n{'all K' if r['shots'] is None else 'K=' + str(r['shots'])}" for r in rows]
        medians = [r["median"] for r in rows]
        below = [m - r["min"] for m, r in zip(medians, rows)]
        above = [r["max"] - m for m, r in zip(medians, rows)]
        axes.errorbar(range(len(rows)), medians, yerr=[below, above], fmt="o", capsize=4)
        axes.set_xticks(range(len(rows)), names, fontsize=6)
        axes.set_ylabel(f"validation {metric} (min / median / max)")

    plots = {"quality-vs-params": scatter("params_total", "parameters (total)"),
             "quality-vs-speed": scatter("examples_per_s", "examples per second"), "per-slice": slices}
    if report["few_shot_curve"]:
        plots["few-shot-curve"] = curve
    if report.get("sensitivity"):
        plots["prompt-sensitivity"] = spread
    return {name: _plot_png(draw) for name, draw in plots.items()}


def _html(report: dict) -> str:
    rows = _rows(report)
    headers = ["rung", report["choice"]["metric"], "examples/s", "latency ms", "params total", "params trainable",
               "train s", "peak RSS MB (so far)", "test texts cut / max tokens", "slice gap", "counterfactual gap",
               "verdict"]
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r["rung"], f"{r['quality']:.3f}", f"{r['examples_per_s']:.1f}", f"{r['latency_ms']:.1f}",
            f"{r['params_total']:,}", f"{r['params_trainable']:,}", f"{r['train_seconds']:.0f}",
            f"{r['peak_rss_mb']:,.0f}", r["length"], f"{r['slice_gap']:.3f}", f"{r['counterfactual_gap']:.3f}",
            r["verdict"]))
        + "</tr>" for r in rows)
    facts = "".join(f"<li class='{'ok' if f['holds'] else 'broken'}'>{html.escape(f['fact'])}: "
                    f"{html.escape(f['evidence'])}</li>" for f in report["parameter_facts"])
    figures = "".join(f"<figure id='{name}'><img alt='{name}' src='{uri}'><figcaption>{name}</figcaption></figure>"
                      for name, uri in _plots(report).items())
    choice = report["choice"]
    verdict = (f"<p id='choice'>Target {choice['metric']} &ge; {choice['target']}: cheapest rung to build "
               f"<b>{choice['cheapest_to_build'] or 'none reaches it'}</b>, fastest to serve "
               f"<b>{choice['fastest_to_serve'] or 'none'}</b>.</p>") if choice["target"] is not None else ""
    searched = "".join(f"<p id='search'>{html.escape(line)}</p>" for line in _search_lines(report) if line)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunelab ladder: {html.escape(report['task'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}figure{{display:inline-block;margin:8px}}
.ok{{color:#080}}.broken{{color:#b00}}</style></head>
<body><h1>tunelab ladder: {html.escape(report['task'])} with {html.escape(report['model'])}</h1>
<p>{report['n_train']} training and {report['n_test']} test examples. {html.escape(report['split_note'])}</p>
<table id="rungs"><thead><tr>{''.join(f'<th>{h}</th>' for h in headers)}</tr></thead><tbody>{body}</tbody></table>
{verdict}{searched}<h2>Parameter facts</h2><ul id="facts">{facts}</ul><h2>Plots</h2>{figures}
<p>Wall time {report['wall_seconds']:.0f} s.</p></body></html>
"""


def write_reports(report: dict, out_dir: Path) -> None:
    write_json_atomic(out_dir / "report.json", report)
    for name, text in (("report.md", _markdown(report)), ("report.html", _html(report))):
        staging = out_dir / f".{name}.tmp"
        staging.write_text(text, encoding="utf-8")
        staging.replace(out_dir / name)


def summary_lines(report: dict, out_dir: str | Path) -> list[str]:
    """The console summary of a ladder run: one line per rung, the parameter facts, the choice."""
    metric = report["choice"]["metric"]
    lines = [f"ladder on {report['task']} ({report['n_test']} test examples) -> {out_dir}/report.html",
             f"{'rung':<9}{metric:>10}{'ex/s':>10}{'params':>14}{'trainable':>14}{'train s':>9}{'probe gap':>11}"
             f"  verdict"]
    for row in _rows(report):
        lines.append(f"{row['rung']:<9}{row['quality']:>10.3f}{row['examples_per_s']:>10.1f}{row['params_total']:>14,}"
                     f"{row['params_trainable']:>14,}{row['train_seconds']:>9.0f}{row['counterfactual_gap']:>11.3f}"
                     f"  {row['verdict']}")
    lines += [line for line in _search_lines(report) if line]
    lines += [f"{'holds' if fact['holds'] else 'BROKEN'}: {fact['fact']} ({fact['evidence']})"
              for fact in report["parameter_facts"]]
    choice = report["choice"]
    if choice["target"] is not None:
        lines.append(f"target {metric} >= {choice['target']}: cheapest rung to build "
                     f"{choice['cheapest_to_build'] or 'none reaches it'}, fastest to serve "
                     f"{choice['fastest_to_serve'] or 'none'}")
    return lines
