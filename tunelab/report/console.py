"""How results are shown: console tables and lines for every command, and the ladder's report.json, report.md and
self-contained report.html. Rendering only: the rungs and ladder.run() measure and decide; this module shows.
"""

from __future__ import annotations

import html
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from tunelab.atomic import write_json, write_text
from tunelab.measure.evaluate import headline_quality


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


def _rows(report: dict) -> list[dict]:
    """One flat row per rung: everything the tables, cards and plots show."""
    metric, rows = report["choice"]["metric"], []
    for rung, result in report["rungs"].items():
        metrics, bias = result["metrics"], result["bias"]
        probes, slices = bias["counterfactual"], bias["slices"]
        rows.append({
            "rung": rung, "quality": headline_quality(metrics),
            "interval": metrics.get("intervals", {}).get(metric), "examples_per_s": metrics["examples_per_s"],
            "latency_ms": metrics["latency_ms_per_example"], "params_total": metrics["params_total"],
            "params_trainable": metrics["params_trainable"], "train_seconds": result.get("train_seconds", 0.0),
            "peak_rss_mb": result["peak_rss_mb"], "fingerprint": metrics["fingerprint"],
            "slice_gap": next(iter(slices["largest_gap"].values())),
            "slice_gap_interval": (slices.get("gap_interval") or {}).get("interval"),
            "counterfactual_gap": probes["max_gap"], "counterfactual_interval": probes.get("max_gap_interval"),
            "verdict": probes["verdict"], "standing": report["choice"].get("status", {}).get(rung, "-"),
            "length": f"{metrics.get('n_truncated', 0)} cut / {metrics.get('max_length') or '-'}",
        })
    return rows


def _search_lines(report: dict) -> list[str]:
    few = report["rungs"].get("few", {})
    if "searched" not in few:
        return []
    return [f"The few rung is the prompt kept by a search over {few['configs_tried']} configurations on held-out "
            f"training examples: {few['searched']} (validation {few['validation']:.3f}; the zero-shot prompt is "
            "the search's first candidate and stays unless another beats it by more than the validation split's "
            "noise, a paired 95% interval above 0)."]


def recommendation_lines(report: dict) -> list[str]:
    """The choice in words: which rung, why, and which rungs this test set cannot tell apart from it."""
    choice, metric = report["choice"], report["choice"]["metric"]
    chosen = choice["cheapest_to_build"]
    if chosen is None:
        return [f"No rung's {metric} interval reaches or holds the target {choice['target']}: none is recommended."]
    if choice["basis"] == "tied":
        why = (f"the lowest rung on the ladder that the test set cannot tell apart from the best rung "
               f"({choice['best']}) in {metric}")
    elif choice["basis"] == "reaches":
        why = (f"the lowest rung on the ladder whose whole {metric} interval lies at or above the target "
               f"{choice['target']}")
    else:
        why = (f"no rung's whole interval reaches the target {choice['target']}; {chosen} is the lowest rung whose "
               f"interval holds it (a larger test set would settle whether it is reached)")
    lines = [f"Recommended: {chosen}, {why}. Fastest to serve among the candidates "
             f"({', '.join(choice['candidates'])}): {choice['fastest_to_serve']}."]
    tied = choice.get("indistinguishable", [])
    if tied:
        lines.append(f"{chosen} cannot be told apart from {', '.join(tied)} on this test set (the paired interval "
                     "of their difference holds 0).")
    for rung, difference in choice.get("versus_recommended", {}).items():
        bounds = difference["interval"]
        if bounds:
            lines.append(f"  {rung} - {chosen}: {difference['difference']:+.3f} [{bounds[0]:+.3f}, {bounds[1]:+.3f}]")
    return lines


def verdict_lines(rung: str, bias: dict) -> list[str]:
    """A probe verdict that explains itself: the probe, the gap and its interval, the threshold, the largest flips."""
    probes, slices = bias["counterfactual"], bias["slices"]
    bounds = probes.get("max_gap_interval")
    gap = f"{probes['max_gap']:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")
    rule = {"pass": "the whole interval is at or under the threshold", "fail": "the whole interval is above it",
            "unclear": "the interval straddles the threshold"}[probes["verdict"]]
    lines = [f"{rung}: {probes['verdict'].upper()} - counterfactual name probe ({len(probes['templates'])} templates, "
             f"{sum(probes['groups'].values())} names in groups {', '.join(probes['groups'])}): largest gap between "
             f"groups in mean {probes['measure']} {gap}, threshold {probes['threshold']}: {rule}."]
    for flip in probes.get("largest_flips", []):
        labels = f" ({flip['labels'][0]} vs {flip['labels'][1]})" if flip["labels"][0] is not None else ""
        lines.append(f"  \"{flip['template']}\": {flip['names'][0]} ({flip['groups'][0]}) {flip['scores'][0]:.3f} vs "
                     f"{flip['names'][1]} ({flip['groups'][1]}) {flip['scores'][1]:.3f}{labels}")
    slice_bounds = (slices.get("gap_interval") or {}).get("interval")
    name, value = next(iter(slices["largest_gap"].items()))
    lines.append(f"  largest gap between slices ({bias['slice_field']}) in {name}: {value:.3f}"
                 + (f" [{slice_bounds[0]:.3f}, {slice_bounds[1]:.3f}]" if slice_bounds else ""))
    return lines


def _markdown(report: dict) -> str:
    metric = report["choice"]["metric"]
    lines = [f"# tunelab ladder: {report['task']} ({report['model']})", "",
             f"{report['n_train']} training and {report['n_test']} test examples. {report['split_note']}".strip(), "",
             f"| rung | {metric} [95% interval] | standing | examples/s | latency ms | params total | params trainable "
             f"| build s | peak RSS MB (process, so far) | test texts cut / max tokens | largest slice gap "
             f"| counterfactual gap | probe verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in _rows(report):
        lines.append(f"| {row['rung']} | {with_interval(row['quality'], row['interval'])} | {row['standing']} "
                     f"| {row['examples_per_s']:.1f} | {row['latency_ms']:.1f} | {row['params_total']:,} "
                     f"| {row['params_trainable']:,} | {row['train_seconds']:.1f} | {row['peak_rss_mb']:,.0f} "
                     f"| {row['length']} | {with_interval(row['slice_gap'], row['slice_gap_interval'])} "
                     f"| {with_interval(row['counterfactual_gap'], row['counterfactual_interval'])} "
                     f"| {row['verdict']} |")
    lines += ["", f"Intervals: {report.get('interval_method', '-')}.", "", "## Recommendation", ""]
    lines += recommendation_lines(report)
    if _search_lines(report):
        lines += ["", *_search_lines(report)]
    lines += ["", "## Bias verdicts", ""]
    for rung, result in report["rungs"].items():
        lines += verdict_lines(rung, result["bias"])
    if report.get("sensitivity"):
        lines += ["", "Prompt sensitivity (validation quality over variants: min / median / max):", ""]
        lines += [f"- {r['factor']}, {'all K' if r['shots'] is None else 'K=' + str(r['shots'])}: {r['min']:.3f} / "
                  f"{r['median']:.3f} / {r['max']:.3f}" for r in report["sensitivity"]]
    lines += ["", "Parameter facts, checked on this run's artifacts:", ""]
    lines += [f"- {'holds' if f['holds'] else 'BROKEN'}: {f['fact']} ({f['evidence']})"
              for f in report["parameter_facts"]]
    if report["few_shot_curve"]:
        lines += ["", "Few-shot curve: " + ", ".join(f"K={p['shots']}: {p['quality']:.3f}"
                                                    for p in report["few_shot_curve"])]
    lines += ["", f"Wall time: {report['wall_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# The HTML report: plotly figures (plotly.js inlined once, so the file works offline), a sortable table, cards.
# plotly rather than altair: one Python package that carries its own JavaScript, no separate Vega bundles to inline.


def _figures(report: dict) -> dict:
    import plotly.graph_objects as go

    rows, metric = _rows(report), report["choice"]["metric"]
    layout = dict(template="plotly_white", height=380, width=560, margin=dict(l=60, r=20, t=40, b=50),
                  showlegend=False)

    def error_bars(rows):
        return dict(type="data", symmetric=False, array=[(r["interval"] or [r["quality"]] * 2)[1] - r["quality"]
                                                         for r in rows],
                    arrayminus=[r["quality"] - (r["interval"] or [r["quality"]] * 2)[0] for r in rows])

    def scatter(x_key, x_title, title):
        figure = go.Figure(go.Scatter(
            x=[r[x_key] for r in rows], y=[r["quality"] for r in rows], mode="markers+text",
            text=[r["rung"] for r in rows], textposition="top right", error_y=error_bars(rows),
            hovertemplate="%{text}: " + metric + " %{y:.3f}, " + x_title + " %{x:,.4g}<extra></extra>"))
        return figure.update_layout(title=title, xaxis=dict(title=x_title, type="log"), yaxis_title=metric,
                                    **layout)

    figures = {"quality-vs-params": scatter("params_total", "parameters (total)", "Quality vs parameters"),
               "quality-vs-speed": scatter("examples_per_s", "examples per second", "Quality vs serving speed"),
               "quality-vs-build": scatter("train_seconds", "seconds to build",
                                           "Quality vs cost to build")}
    figures["quality-vs-build"].update_xaxes(type="linear")
    slices = go.Figure()
    key = "accuracy" if metric == "accuracy" else "mae"
    for rung, result in report["rungs"].items():
        by_group = result["bias"]["slices"]["by_group"]
        slices.add_bar(name=rung, x=list(by_group), y=[values.get(key, 0.0) for values in by_group.values()],
                       hovertemplate=rung + " %{x}: %{y:.3f}<extra></extra>")
    figures["per-slice"] = slices.update_layout(title=f"{key} per slice", barmode="group", yaxis_title=key,
                                                **{**layout, "showlegend": True})
    if report["few_shot_curve"]:
        points = report["few_shot_curve"]
        curve = go.Figure(go.Scatter(x=[p["shots"] for p in points], y=[p["quality"] for p in points],
                                     mode="lines+markers", name="test quality (balanced K-shot)"))
        spread = [r for r in report.get("sensitivity", []) if r["shots"] is not None]
        if spread:
            curve.add_scatter(x=[r["shots"] for r in spread], y=[r["median"] for r in spread], mode="markers",
                              name=f"validation median over {spread[0]['factor']}s (min-max bar)",
                              error_y=dict(type="data", symmetric=False, array=[r["max"] - r["median"] for r in spread],
                                           arrayminus=[r["median"] - r["min"] for r in spread]))
        figures["few-shot-curve"] = curve.update_layout(title="Few-shot curve", xaxis_title="shots (K)",
                                                        yaxis_title=metric, **{**layout, "showlegend": True})
    if report.get("sensitivity"):
        rows_s = report["sensitivity"]
        names = [f"{r['factor']} {'all K' if r['shots'] is None else 'K=' + str(r['shots'])}" for r in rows_s]
        figures["prompt-sensitivity"] = go.Figure(go.Scatter(
            x=names, y=[r["median"] for r in rows_s], mode="markers",
            error_y=dict(type="data", symmetric=False, array=[r["max"] - r["median"] for r in rows_s],
                         arrayminus=[r["median"] - r["min"] for r in rows_s]))).update_layout(
            title="Prompt sensitivity (min / median / max on validation)", yaxis_title=metric, **layout)
    return figures


_SORT_SCRIPT = """
// Click a column header to sort by it (numbers by value). Hand-written: a dozen lines, no library needed.
document.querySelectorAll("table.sortable th").forEach((header, column) => header.addEventListener("click", () => {
  const body = header.closest("table").tBodies[0];
  const key = row => { const t = row.cells[column].dataset.value ?? row.cells[column].textContent;
                       const n = parseFloat(t.replace(/,/g, "")); return isNaN(n) ? t : n; };
  const ascending = header.dataset.order !== "asc";
  header.dataset.order = ascending ? "asc" : "desc";
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (ascending ? 1 : -1))
    .forEach(row => body.appendChild(row));
}));
"""


def _html(report: dict) -> str:
    import plotly.offline

    rows, metric = _rows(report), report["choice"]["metric"]
    escape = html.escape
    columns = [("rung", "rung", str), (f"{metric} [95% interval]", "quality", None),
               ("standing", "standing", str), ("examples/s", "examples_per_s", "{:.1f}".format),
               ("latency ms", "latency_ms", "{:.1f}".format), ("params total", "params_total", "{:,}".format),
               ("params trainable", "params_trainable", "{:,}".format),
               ("build s", "train_seconds", "{:.1f}".format), ("peak RSS MB", "peak_rss_mb", "{:,.0f}".format),
               ("cut / max tokens", "length", str), ("slice gap", "slice_gap", None),
               ("counterfactual gap", "counterfactual_gap", None), ("probe verdict", "verdict", str)]
    intervals = {"quality": "interval", "slice_gap": "slice_gap_interval",
                 "counterfactual_gap": "counterfactual_interval"}

    def td(row, key, show):
        text = with_interval(row[key], row[intervals[key]]) if show is None else show(row[key])
        return f"<td data-value='{escape(str(row[key]))}'>{escape(text)}</td>"

    table = ("<table id='rungs' class='sortable'><thead><tr>"
             + "".join(f"<th title='click to sort'>{escape(name)}</th>" for name, _, _ in columns)
             + "</tr></thead><tbody>"
             + "".join("<tr>" + "".join(td(row, key, show) for _, key, show in columns) + "</tr>" for row in rows)
             + "</tbody></table>")
    cards = "".join(
        f"<div class='card' id='card-{escape(r['rung'])}'><h3>{escape(r['rung'])}</h3><dl>"
        f"<dt>{metric}</dt><dd>{escape(with_interval(r['quality'], r['interval']))}</dd>"
        f"<dt>build</dt><dd>{r['train_seconds']:.1f} s, peak RSS {r['peak_rss_mb']:,.0f} MB</dd>"
        f"<dt>serving</dt><dd>{r['latency_ms']:.2f} ms per example ({r['examples_per_s']:.1f}/s)</dd>"
        f"<dt>parameters</dt><dd>{r['params_total']:,} total, {r['params_trainable']:,} trainable</dd>"
        f"<dt>fingerprint</dt><dd><code>{escape(r['fingerprint'])}</code></dd></dl></div>" for r in rows)
    figures = "".join(
        f"<figure id='{name}'>"
        + figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{name}",
                         config={"displaylogo": False, "responsive": True})
        + "</figure>" for name, figure in _figures(report).items())
    paragraphs = lambda lines: "".join(f"<p>{escape(line)}</p>" for line in lines)  # noqa: E731
    verdicts = "".join(f"<div class='verdict'>{paragraphs(verdict_lines(rung, result['bias']))}</div>"
                       for rung, result in report["rungs"].items())
    facts = "".join(f"<li class='{'ok' if f['holds'] else 'broken'}'>{escape(f['fact'])}: "
                    f"{escape(f['evidence'])}</li>" for f in report["parameter_facts"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunelab ladder: {escape(report['task'])}</title>
<script>{plotly.offline.get_plotlyjs()}</script>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{cursor:pointer;background:#f4f4f4}}
figure{{display:inline-block;margin:8px}}.card{{display:inline-block;vertical-align:top;border:1px solid #ccc;
border-radius:6px;padding:0 12px;margin:6px;width:250px}}dt{{font-weight:bold}}dd{{margin:0 0 6px 0}}
.ok{{color:#080}}.broken{{color:#b00}}.verdict p{{margin:2px 0}}.verdict{{margin-bottom:10px}}</style></head>
<body><h1>tunelab ladder: {escape(report['task'])} with {escape(report['model'])}</h1>
<p>{report['n_train']} training and {report['n_test']} test examples. {escape(report['split_note'])}</p>
{table}<p>Intervals: {escape(report.get('interval_method', '-'))}. Standing: against the target when one is
given, else against the best rung.</p>
<h2>Recommendation</h2><div id="choice">{paragraphs(recommendation_lines(report))}</div>
<div id="search">{paragraphs(_search_lines(report))}</div>
<h2>Rungs</h2><div id="cards">{cards}</div>
<h2>Plots</h2>{figures}
<h2>Bias verdicts</h2><div id="verdicts">{verdicts}</div>
<h2>Parameter facts</h2><ul id="facts">{facts}</ul>
<p>Wall time {report['wall_seconds']:.0f} s.</p><script>{_SORT_SCRIPT}</script></body></html>
"""


def write_reports(report: dict, out_dir: Path) -> None:
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.md", _markdown(report))
    write_text(out_dir / "report.html", _html(report))


def summary_lines(report: dict, out_dir: str | Path) -> list[str]:
    """The console summary of a ladder run: one line per rung (quality with its interval), the parameter facts,
    the recommendation."""
    metric = report["choice"]["metric"]
    lines = [f"ladder on {report['task']} ({report['n_test']} test examples) -> {out_dir}/report.html",
             f"{'rung':<9}{metric + ' [95% interval]':>28}{'ex/s':>10}{'params':>14}{'trainable':>14}{'build s':>9}"
             f"{'probe gap':>11}  verdict"]
    for row in _rows(report):
        lines.append(f"{row['rung']:<9}{with_interval(row['quality'], row['interval']):>28}"
                     f"{row['examples_per_s']:>10.1f}{row['params_total']:>14,}{row['params_trainable']:>14,}"
                     f"{row['train_seconds']:>9.1f}{row['counterfactual_gap']:>11.3f}  {row['verdict']}")
    lines += _search_lines(report)
    lines += [f"{'holds' if fact['holds'] else 'BROKEN'}: {fact['fact']} ({fact['evidence']})"
              for fact in report["parameter_facts"]]
    return lines + recommendation_lines(report)
