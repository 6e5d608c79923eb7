"""The ladder's self-contained report.html: plotly figures (plotly.js inlined once, so the file works offline), a
sortable table, a card per rung, the recommendation and the bias verdicts. plotly rather than altair: one Python
package that carries its own JavaScript, no separate Vega bundles to inline."""

from __future__ import annotations

import html

from tunelab.measure.evaluate import headline_quality
from tunelab.report.console import with_interval
from tunelab.report.ladder import (
    plan_lines,
    recommendation_lines,
    rung_rows,
    search_lines,
    size_claim_lines,
    trade_off_table,
    verdict_lines,
)


def _figures(report: dict) -> dict:
    import plotly.graph_objects as go

    rows, metric = rung_rows(report), report["choice"]["metric"]
    layout = dict(template="plotly_white", height=380, width=560, margin=dict(l=60, r=20, t=40, b=50),
                  showlegend=False)

    def error_bars(rows):
        return dict(type="data", symmetric=False, array=[(r["interval"] or [r["quality"]] * 2)[1] - r["quality"]
                                                         for r in rows],
                    arrayminus=[r["quality"] - (r["interval"] or [r["quality"]] * 2)[0] for r in rows])

    chosen = report["choice"].get("cheapest_to_build")

    def scatter(x_key, x_title, title):
        """Quality with its interval against a cost; the recommended rung is the red diamond, and a dashed line
        marks the target when there is one: the cost frontier a reader chooses on."""
        figure = go.Figure(go.Scatter(
            x=[r[x_key] for r in rows], y=[r["quality"] for r in rows], mode="markers+text",
            text=[r["rung"] for r in rows], textposition="top right", error_y=error_bars(rows),
            marker=dict(symbol=["diamond" if r["rung"] == chosen else "circle" for r in rows],
                        size=[14 if r["rung"] == chosen else 8 for r in rows],
                        color=["#c0392b" if r["rung"] == chosen else "#1f77b4" for r in rows]),
            hovertemplate="%{text}: " + metric + " %{y:.3f}, " + x_title + " %{x:,.4g}<extra></extra>"))
        if report["choice"].get("target") is not None:
            figure.add_hline(y=report["choice"]["target"], line_dash="dash", annotation_text="target")
        return figure.update_layout(title=title, xaxis=dict(title=x_title, type="log"), yaxis_title=metric,
                                    **layout)

    figures = {"quality-vs-params": scatter("params_total", "parameters (total)", "Quality vs parameters"),
               "quality-vs-speed": scatter("examples_per_s", "examples per second",
                                           "Cost frontier: quality vs serving speed"),
               "quality-vs-build": scatter("train_seconds", "seconds to build",
                                           "Cost frontier: quality vs cost to build")}
    figures["quality-vs-build"].update_xaxes(type="linear")
    if report.get("size_claim"):  # the model axis: one line per rung kind across the base models' sizes
        by_kind = go.Figure()
        for rung in dict.fromkeys(row["rung"] for row in report["size_claim"]):
            points = sorted((r for r in report["rungs"].values() if r.get("kind") == rung and r.get("base_params")),
                            key=lambda r: r["base_params"])
            by_kind.add_scatter(x=[r["base_params"] for r in points],
                                y=[headline_quality(r["metrics"]) for r in points], mode="lines+markers", name=rung,
                                text=[r["model"] for r in points],
                                hovertemplate=rung + " on %{text}: %{y:.3f}<extra></extra>")
        figures["quality-by-model-size"] = by_kind.update_layout(
            title="Quality vs base model parameters, per rung kind", xaxis=dict(title="base model parameters",
                                                                               type="log"),
            yaxis_title=metric, **{**layout, "showlegend": True})
    slices = go.Figure()
    key = metric if metric in ("accuracy", "micro_f1") else "mae"
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
    reliability = go.Figure()  # per classification rung: mean confidence against accuracy in each confidence bin
    for rung, result in report["rungs"].items():
        bins = result["metrics"].get("reliability")
        if bins:
            reliability.add_scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins],
                                    mode="lines+markers", name=f"{rung} (ECE {result['metrics']['ece']:.3f})",
                                    text=[f"{b['count']} predictions" for b in bins])
    if reliability.data:
        reliability.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="grey"),
                                name="calibrated")
        figures["reliability"] = reliability.update_layout(
            title="Reliability: accuracy per confidence bin", xaxis_title="mean confidence", yaxis_title="accuracy",
            **{**layout, "showlegend": True})
    cascade = report["rungs"].get("cascade")
    if cascade and cascade.get("test_frontier"):
        rows_c, chosen = cascade["test_frontier"], cascade["threshold"]
        frontier = go.Figure(go.Scatter(
            x=[r["examples_per_s"] for r in rows_c], y=[r["quality"] for r in rows_c], mode="lines+markers",
            name="thresholds (test)", text=[f"threshold {r['threshold']:.3f}, {r['escalated']:.0%} escalated"
                                            for r in rows_c]))
        point = min(rows_c, key=lambda r: abs(r["threshold"] - chosen))
        frontier.add_scatter(x=[point["examples_per_s"]], y=[point["quality"]], mode="markers", name="chosen",
                             marker=dict(size=14, symbol="star"))
        figures["cascade-frontier"] = frontier.update_layout(
            title="Cascade: quality vs serving speed over thresholds", xaxis=dict(title="examples per second",
                                                                                  type="log"),
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


def _markdown_tables(lines: list[str], element_id: str) -> str:
    """Lines as report/ladder.py writes them for report.md (paragraphs and pipe tables) as HTML."""
    if not lines:
        return ""
    parts, table = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                table.append([html.escape(cell.strip()) for cell in line.strip("|").split("|")])
            continue
        if table:
            head, *body = table
            parts.append("<table class='sortable'><thead><tr>" + "".join(f"<th>{c}</th>" for c in head)
                         + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row)
                                                            + "</tr>" for row in body) + "</tbody></table>")
            table = []
        if line:
            parts.append(f"<p>{html.escape(line)}</p>")
    return f"<div id='{element_id}'>{''.join(parts)}</div>"


def html_page(report: dict) -> str:
    import plotly.offline

    rows, metric = rung_rows(report), report["choice"]["metric"]
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
{_markdown_tables(trade_off_table(report["choice"], report["n_test"]), "trade-offs")}
{_markdown_tables(size_claim_lines(report), "size-claim")}
<div id="search">{paragraphs(search_lines(report))}</div>
<h2>Rungs</h2><div id="cards">{cards}</div>
<h2>Plots</h2>{figures}
<h2>Bias verdicts</h2><div id="verdicts">{verdicts}</div>
<h2>Parameter facts</h2><ul id="facts">{facts}</ul>
<div id="plan">{paragraphs(plan_lines(report))}</div><script>{_SORT_SCRIPT}</script></body></html>
"""


