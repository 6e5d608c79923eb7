"""The ladder's report in words: one row per rung, the recommendation, the bias verdicts; report.md and the
console summary (report/files.py writes the report files). Rendering only: ladder.run() measures and decides;
this module shows."""

from __future__ import annotations

from pathlib import Path

from tunelab.measure.evaluate import headline_quality
from tunelab.report.console import with_interval


def rung_rows(report: dict) -> list[dict]:
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
            "peak_rss_mb": result["peak_rss_mb"], "plan_mb": result.get("memory_plan_mb"),
            "fingerprint": metrics["fingerprint"],
            "slice_gap": next(iter(slices["largest_gap"].values())),
            "slice_gap_interval": (slices.get("gap_interval") or {}).get("interval"),
            "counterfactual_gap": probes.get("gap", probes["max_gap"]),
            "counterfactual_interval": probes.get("gap_interval", probes.get("max_gap_interval")),
            "verdict": probes["verdict"], "standing": report["choice"].get("status", {}).get(rung, "-"),
            "length": f"{metrics.get('n_truncated', 0)} cut / {metrics.get('max_length') or '-'}",
        })
    return rows


def search_lines(report: dict) -> list[str]:
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
    lines = [f"Recommended: {chosen}, {why}. Fastest to serve among the rungs that reach it "
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


def trade_off_rows(choice: dict, n_test: int) -> list[dict]:
    """Every rung faster than the recommended one whose interval is also compatible with the target (or tied with
    the best): the speed it buys, the quality it may cost (paired), and what would decide between them."""
    rows = []
    for rung, found in choice.get("faster_compatible", {}).items():
        bounds = found.get("difference_interval")
        to_tell, to_target = found.get("examples_to_tell_apart"), found.get("examples_to_settle_target")
        if not bounds:
            tells = "no paired comparison"
        elif not bounds[0] <= 0 <= bounds[1]:
            tells = "real on this test set: choose by what the speed is worth"
        elif to_tell:
            tells = f"about {to_tell:,} test examples (this run has {n_test:,}) would tell"
        else:
            tells = "the two agree on this test set"
        if to_target and choice["status"].get(rung) == "compatible":
            amount = f"about {to_target:,}" if to_target > n_test else "a slightly larger test set"
            tells += f"; {amount} would settle the target {choice['target']}"
        rows.append({"rung": rung, "speed_ratio": found["speed_ratio"], "examples_per_s": found["examples_per_s"],
                     "difference": (f"{found['difference']:+.3f} [{bounds[0]:+.3f}, {bounds[1]:+.3f}]" if bounds
                                    else "-"), "what_would_tell": tells})
    return rows


TRADE_OFF_HEADER = ["faster rung", "x examples/s", "examples/s", "paired difference", "what would tell"]


def trade_off_table(choice: dict, n_test: int) -> list[str]:
    """The trade-offs as one Markdown table, against the recommended rung."""
    rows = trade_off_rows(choice, n_test)
    if not rows:
        return []
    chosen, metric = choice["cheapest_to_build"], choice["metric"]
    return [f"Faster rungs also compatible, against {chosen} ({metric}, paired):", "",
            "| " + " | ".join(TRADE_OFF_HEADER) + " |", "|---|---|---|---|---|",
            *(f"| {r['rung']} | {r['speed_ratio']:.1f}x | {r['examples_per_s']:,.1f} | {r['difference']} "
              f"| {r['what_would_tell']} |" for r in rows)]


def size_claim_lines(report: dict) -> list[str]:
    """The course's claim, "more parameters almost always predict better", tested per rung kind."""
    rows = report.get("size_claim") or []
    if not rows:
        return []
    metric = report["choice"]["metric"]
    lines = [f"Larger ({rows[0]['larger']}) minus smaller ({rows[0]['smaller']}) base model, per rung kind, {metric} "
             "with its paired 95% interval; cost ratios larger / smaller:", "",
             f"| rung | {rows[0]['smaller']} | {rows[0]['larger']} | difference [95%] | verdict | params x "
             "| examples/s x | build s x |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        bounds = row["interval"]
        verdict = row["verdict"] + (f" (about {row['examples_to_tell']:,} test examples would tell)"
                                    if row.get("examples_to_tell") else "")
        build = f"{row['build_ratio']:.2f}" if row.get("build_ratio") is not None else "-"
        lines.append(f"| {row['rung']} | {row['quality_smaller']:.3f} | {row['quality_larger']:.3f} "
                     f"| {row['difference']:+.3f}" + (f" [{bounds[0]:+.3f}, {bounds[1]:+.3f}]" if bounds else "")
                     + f" | {verdict} | {row['params_ratio']:.2f} | {row['speed_ratio']:.2f} | {build} |")
    held = sum(row["verdict"] == "holds" for row in rows)
    lines += ["", f"The claim holds on {held} of {len(rows)} rung kinds on this test set."]
    return lines


def verdict_lines(rung: str, bias: dict) -> list[str]:
    """A probe verdict that explains itself: the probe, the gap and its interval, the threshold, the largest flips."""
    probes, slices = bias["counterfactual"], bias["slices"]
    bounds = probes.get("gap_interval")
    gap = f"{probes['gap']:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")
    rule = {"pass": "the whole interval is at or under the threshold", "fail": "the whole interval is above it",
            "unclear": "the interval straddles the threshold"}[probes["verdict"]]
    lines = [f"{rung}: {probes['verdict'].upper()} - counterfactual name probe ({len(probes['templates'])} templates, "
             f"{sum(probes['groups'].values())} names in groups {', '.join(probes['groups'])}): {probes['statistic']} "
             f"{gap}, threshold {probes['threshold']}: {rule}. Largest single-template gap {probes['max_gap']:.3f}."]
    if probes.get("unjudgeable"):
        lines.append(f"  {rung} cannot be judged by this probe: its interval is wider than 0.3 (too few names a "
                     "group for how much single names move this rung's predictions).")
    if probes.get("form_note"):
        lines.append(f"  Note: {probes['form_note']}.")
    for flip in probes.get("largest_flips", []):
        labels = f" ({flip['labels'][0]} vs {flip['labels'][1]})" if flip["labels"][0] is not None else ""
        lines.append(f"  \"{flip['template']}\": {flip['names'][0]} ({flip['groups'][0]}) {flip['scores'][0]:.3f} vs "
                     f"{flip['names'][1]} ({flip['groups'][1]}) {flip['scores'][1]:.3f}{labels}")
    slice_bounds = (slices.get("gap_interval") or {}).get("interval")
    name, value = next(iter(slices["largest_gap"].items()))
    lines.append(f"  largest gap between slices ({bias['slice_field']}) in {name}: {value:.3f}"
                 + (f" [{slice_bounds[0]:.3f}, {slice_bounds[1]:.3f}]" if slice_bounds else ""))
    return lines


def plan_lines(report: dict) -> list[str]:
    """The run's precision, each section's estimated and measured seconds, what a budget cut short, the wall time."""
    lines = []
    precision = report.get("precision")
    if precision:
        parity = precision.get("parity") or {}
        lines.append(f"Precision: {precision['precision']} (asked: {precision['requested']}"
                     + (f"; bf16 matrix products {precision['bf16_speedup']}x fp32 here" if precision.get(
                         "bf16_speedup") else "")
                     + (f"; parity on {parity['n']} training texts: {parity['agreement']:.0%} same predictions, "
                        f"largest probability difference {parity['max_prob_difference']:.3f}" if parity else "")
                     + ").")
    plan = report.get("plan")
    if plan:
        parts = [f"{s['name']} {s['estimate_s']:.0f}/{s['seconds']:.0f}" for s in plan["sections"]
                 if s.get("seconds") is not None]
        after = plan.get("seconds_after_plan")
        lines.append(f"Time per section, estimated before the run / measured (s): {', '.join(parts)}; "
                     f"estimate {plan['estimate_s']:.0f} s in all"
                     + (f", measured {after:.0f} s after the plan was printed ({plan['seconds_before_plan']:.0f} s "
                        "of precision check and probes before it)." if after is not None else "."))
    for section, left_out in report.get("cut_short", {}).items():
        if isinstance(left_out, dict):  # a trainer stopped by its share of --budget-s
            lines.append(f"Cut short by its budget: {section} (training stopped after {left_out['steps_run']} of "
                         f"{left_out['steps_in_epoch']} steps of epoch {left_out['epoch']}, at "
                         f"{left_out['budget_s']:.0f} s; the best weights by then are the rung's).")
        else:
            lines.append(f"Cut short by its budget: {section} (K={', '.join(map(str, left_out))} not measured).")
    padded = [f"{rung} {result['padding']['share']:.1%} (shuffled batches {result['padding']['shuffled_share']:.1%})"
              for rung, result in report.get("rungs", {}).items() if result.get("padding")]
    if padded:
        lines.append(f"Padding in the fine-tuning batches, share of the tokens run: {', '.join(padded)}.")
    for rung, why in report.get("rungs_left_out", {}).items():
        lines.append(f"Not run: {rung} ({why}).")
    return lines + [f"Wall time: {report['wall_seconds']:.0f} s."]


def markdown(report: dict) -> str:
    metric = report["choice"]["metric"]
    lines = [f"# tunelab ladder: {report['task']} ({report['model']})", "",
             f"{report['n_train']} training and {report['n_test']} test examples. {report['split_note']}".strip(), "",
             f"| rung | {metric} [95% interval] | standing | examples/s | latency ms | params total | params trainable "
             f"| build s | peak RSS MB (the rung's own) / plan | test texts cut / max tokens | largest slice gap "
             f"| counterfactual gap | probe verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rung_rows(report):
        lines.append(f"| {row['rung']} | {with_interval(row['quality'], row['interval'])} | {row['standing']} "
                     f"| {row['examples_per_s']:.1f} | {row['latency_ms']:.1f} | {row['params_total']:,} "
                     f"| {row['params_trainable']:,} | {row['train_seconds']:.1f} | {row['peak_rss_mb']:,.0f} / "
                     f"{'-' if row['plan_mb'] is None else format(row['plan_mb'], ',.0f')} "
                     f"| {row['length']} | {with_interval(row['slice_gap'], row['slice_gap_interval'])} "
                     f"| {with_interval(row['counterfactual_gap'], row['counterfactual_interval'])} "
                     f"| {row['verdict']} |")
    lines += ["", f"Intervals: {report.get('interval_method', '-')}.", "", "## Recommendation", ""]
    lines += recommendation_lines(report)
    if trade_off_table(report["choice"], report["n_test"]):
        lines += ["", *trade_off_table(report["choice"], report["n_test"])]
    if report.get("size_claim"):
        lines += ["", "## Does a larger base model predict better?", "", *size_claim_lines(report)]
        lines += ["", "Each model's own ladder: " + ", ".join(f"[{m['label']}]({m['report']}) ({m['params']:,} "
                                                             f"parameters, {m['precision']})"
                                                             for m in report["models"])]
    if search_lines(report):
        lines += ["", *search_lines(report)]
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
    lines += ["", *plan_lines(report)]
    return "\n".join(lines) + "\n"



def summary_lines(report: dict, out_dir: str | Path) -> list[str]:
    """The console summary of a ladder run: one line per rung (quality with its interval), the parameter facts,
    the recommendation."""
    metric = report["choice"]["metric"]
    width = max(9, *(len(rung) + 1 for rung in report["rungs"]))
    lines = [f"ladder on {report['task']} ({report['n_test']} test examples) -> {out_dir}/report.html",
             f"{'rung':<{width}}{metric + ' [95% interval]':>28}{'ex/s':>10}{'params':>14}{'trainable':>14}"
             f"{'build s':>9}"
             f"{'probe gap':>11}  verdict"]
    for row in rung_rows(report):
        lines.append(f"{row['rung']:<{width}}{with_interval(row['quality'], row['interval']):>28}"
                     f"{row['examples_per_s']:>10.1f}{row['params_total']:>14,}{row['params_trainable']:>14,}"
                     f"{row['train_seconds']:>9.1f}{row['counterfactual_gap']:>11.3f}  {row['verdict']}")
    lines += search_lines(report)
    lines += [f"{'holds' if fact['holds'] else 'BROKEN'}: {fact['fact']} ({fact['evidence']})"
              for fact in report["parameter_facts"]]
    return lines + recommendation_lines(report) + trade_off_table(report["choice"], report["n_test"]) + (
        size_claim_lines(report))
