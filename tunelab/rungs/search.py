"""Prompt search and prompt sensitivity, on a validation split held out of the training set.

A plain loop over configurations, cheapest first (zero-shot variants, then growing K), each scored with the cached
scoring on the same validation texts, within a time budget and a maximum count, deterministic for a seed. The
task's own zero-shot prompt is always tried first and stays unless another configuration beats it clearly: the
paired bootstrap interval of their difference on the validation split lies above 0. Validation wins of 1-3 points
on 100 words were measured not to hold on test (docs/BENCHMARKS.md), so the kept prompt is never below zero-shot on
validation, and above it only by more than the validation split's noise. The test split is never looked at.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable

from tunelab.config import SearchConfig
from tunelab.measure.evaluate import deciding_metric, evaluate, evaluate_predictions, gold_and_outputs, headline_quality
from tunelab.measure.intervals import paired_difference
from tunelab.models import Model
from tunelab.rungs.prompting import PromptConfig, PromptPredictor, few_shot
from tunelab.tasks import Task, split_examples

SHOT_COUNTS = (1, 2, 4, 8, 16)
RANDOM_SEEDS = (0, 1, 2)  # random shot sets tried per K: prompts are sensitive to which shots they hold


def label_instruction(task: Task) -> str:
    """A generic instruction that names the labels (or the rating scale)."""
    if task.is_classification:
        return f"Classify each text as {', '.join(task.labels[:-1])} or {task.labels[-1]}.\n\n"
    if task.is_multilabel:
        return f"Name every label that applies to each text: {', '.join(task.labels)}.\n\n"
    return "Rate each text from 1 (lowest) to 9 (highest).\n\n"


def candidates(task: Task, base: PromptConfig, n_pool: int) -> list[PromptConfig]:
    """Configurations to try, cheapest first: the task's zero-shot prompt, generic template and instruction,
    lower-cased label words, calibrations; then for each K that the pool allows, balanced, random (several
    seeds) and similar shots, each plain and batch-calibrated."""
    zero = dataclasses.replace(base, shots=0, calibrate=False)
    found = [zero, dataclasses.replace(zero, instruction=label_instruction(task)),
             dataclasses.replace(zero, template="Text: {text}\nAnswer: {label}", instruction=label_instruction(task))]
    if task.kind != "regression" and any(label != label.lower() for label in task.labels):
        found.append(dataclasses.replace(zero, label_words=",".join(label.lower() for label in task.labels)))
    found += [dataclasses.replace(zero, calibrate=True, calibration="contextual"),
              dataclasses.replace(zero, calibrate=True, calibration="batch")]
    for k in (k for k in SHOT_COUNTS if k <= n_pool):
        shots = [dataclasses.replace(zero, shots=k, select="balanced")]
        shots += [dataclasses.replace(zero, shots=k, select="random", seed=seed) for seed in RANDOM_SEEDS]
        shots.append(dataclasses.replace(zero, shots=k, select="similar"))
        for config in shots:
            found += [config, dataclasses.replace(config, calibrate=True, calibration="batch")]
    return found


def describe(config: PromptConfig, base: PromptConfig) -> str:
    """A configuration as the fields where it differs from the base (short, for tables)."""
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if getattr(config, f.name) != getattr(base, f.name) and f.name != "calibrate"}
    if not config.calibrate:
        changed.pop("calibration", None)
    elif "calibration" not in changed:
        changed["calibration"] = config.calibration
    parts = [f"K={config.shots}"] + [f"{name}={value!r}" if isinstance(value, str) and "\n" in value
                                     else f"{name}={value}" for name, value in changed.items() if name != "shots"]
    return " ".join(parts)


def validation_task(task: Task, config: SearchConfig) -> Task:
    """The task the search and the sensitivity measurement score on: a validation split held out of the training
    set as its test split, the rest as the shot pool. The task's own test split is never looked at."""
    fraction = min(0.5, config.validation_size / len(task.train))
    pool, validation = split_examples(list(task.train), task.kind, fraction, config.seed)
    return dataclasses.replace(task, train=tuple(pool), test=tuple(validation))


def resolved_precision(model: Model, task: Task, base: PromptConfig) -> PromptConfig:
    """`base` with `auto` precision resolved once (on its zero-shot prompt), not once per configuration tried."""
    if base.precision != "auto":
        return base
    zero = few_shot(model, task, dataclasses.replace(base, shots=0, calibrate=False))
    return dataclasses.replace(base, precision=zero.config.precision)


@dataclass
class SearchResult:
    predictor: PromptPredictor  # the best configuration, its shots drawn from the training part without validation
    config: PromptConfig
    rows: list[dict]  # per configuration tried: config, validation quality, seconds, notes
    n_validation: int
    stopped_by: str  # "exhausted", "budget" or "max_configs"
    validation: float  # the kept configuration's validation quality


def search(model: Model, task: Task, base: PromptConfig = PromptConfig(), config: SearchConfig = SearchConfig(), *,
           embedder=None, on_config: Callable[[dict], None] | None = None) -> SearchResult:
    """Try `candidates()` on a validation split of `task`'s training set. The first, the task's zero-shot prompt,
    is kept unless others beat it clearly (paired interval of the difference above 0); of those, the best by
    validation quality wins (the earlier, cheaper one on a tie). `on_config(row)` is told each result as it comes."""
    search_task = validation_task(task, config)
    base = resolved_precision(model, search_task, base)
    started, rows, best, zero = time.perf_counter(), [], None, None
    example_quality = deciding_metric(task)
    tried = candidates(task, base, len(search_task.train))
    stopped_by = "exhausted"
    for number, candidate in enumerate(tried):
        if number >= config.max_configs:
            stopped_by = "max_configs"
            break
        if rows and time.perf_counter() - started > config.budget_s:  # the task's own prompt is always tried
            stopped_by = "budget"
            break
        began = time.perf_counter()
        predictor = few_shot(model, search_task, candidate, embedder=embedder)
        metrics, predictions = evaluate_predictions(predictor, search_task, batch_size=candidate.batch_size)
        gold, outputs = gold_and_outputs(search_task, predictions)
        zero = outputs if zero is None else zero
        versus_zero = paired_difference(example_quality, gold, outputs, zero)
        row = {"config": describe(candidate, base), "validation": headline_quality(metrics),
               "vs_zero": versus_zero["difference"], "vs_zero_interval": versus_zero["interval"],
               "clear_gain": versus_zero["distinguishable"] and versus_zero["difference"] > 0,
               "seconds": time.perf_counter() - began, "notes": predictor.notes}
        rows.append(row)
        if on_config:
            on_config(row)
        if best is None or (row["clear_gain"] and row["validation"] > best[0]):
            best = (row["validation"], candidate, predictor)
    return SearchResult(best[2], best[1], rows, len(search_task.test), stopped_by, best[0])


def run_search(load_model: Callable[[], Model], task: Task, base: PromptConfig, config: SearchConfig, *,
               save=None, on_config: Callable[[dict], None] | None = None) -> tuple[SearchResult, dict]:
    """The `prompt --search` command's work: search, then evaluate the kept prompt once on the test split (and
    save it when asked). Returns the search and the test result, which names the configuration kept."""
    from tunelab.predictor import save_predictor
    from tunelab.rungs.prompting import check_fits

    check_fits(base, task)  # before the slow model load
    result = search(load_model(), task, base, config, on_config=on_config)
    metrics = evaluate(result.predictor, task, batch_size=base.batch_size)
    if save is not None:
        save_predictor(result.predictor, save, task.text_fields)
    return result, {**metrics, "shots": result.config.shots, "select": result.config.select,
                    "calibrate": result.config.calibrate, "searched": describe(result.config, base),
                    "validation": result.validation, "n_validation": result.n_validation,
                    "configs_tried": len(result.rows),
                    "stopped_by": result.stopped_by, "notes": result.predictor.notes}


def search_lines(result: SearchResult, test_result: dict) -> list[str]:
    """The search table for people: every configuration tried, its validation quality and cost, the one kept."""
    metric = "accuracy" if "accuracy" in test_result else "spearman"
    lines = [f"prompt search on {test_result['task']}: {len(result.rows)} configurations on {result.n_validation} "
             f"held-out training examples ({metric}; stopped: {result.stopped_by}); a configuration replaces "
             f"zero-shot only when its paired 95% interval against it lies above 0 (marked +)",
             f"  {metric:>7} {'vs zero-shot [95%]':>26} {'cost':>9}  configuration"]
    kept = test_result["searched"]
    for row in sorted(result.rows, key=lambda r: -r["validation"]):
        mark = "*" if row["config"] == kept else "+" if row["clear_gain"] else " "
        low, high = row["vs_zero_interval"] or (float("nan"), float("nan"))
        lines.append(f"{mark} {row['validation']:>7.3f} {row['vs_zero']:>+8.3f} [{low:+.3f}, {high:+.3f}] "
                     f"{row['seconds']:>7.1f} s  {row['config']}")
    lines.append(f"kept: {kept}; test {metric} {headline_quality(test_result):.3f} on "
                 f"{test_result['n_test']} examples")
    return lines


SENSITIVITY_SHOTS = (1, 4, 8)
SENSITIVITY_VARIANTS = 4  # shot sets (seeds) and shot orders tried per K


def sensitivity(model: Model, task: Task, base: PromptConfig = PromptConfig(), config: SearchConfig = SearchConfig(),
                *, k_values: tuple[int, ...] = SENSITIVITY_SHOTS, variants: int = SENSITIVITY_VARIANTS,
                deadline: float | None = None) -> list[dict]:
    """How much validation quality moves with what should not matter much: which shots (random sets, by seed),
    their order (permutations of one balanced set), the template, and K. One row per (factor, K) with the
    min / median / max over its variants, so a user sees how brittle a prompt is before trusting it. No new K is
    started after `deadline` (time.monotonic()); the rows say which K were measured."""
    search_task = validation_task(task, config)
    pool = search_task.train
    base = resolved_precision(model, search_task, base)

    def quality(predictor) -> float:
        return headline_quality(evaluate(predictor, search_task, batch_size=base.batch_size))

    rows = []
    for k in (k for k in k_values if k <= len(pool)):
        if deadline is not None and time.monotonic() > deadline:
            break
        sets = [quality(few_shot(model, search_task, dataclasses.replace(base, shots=k, select="random", seed=seed)))
                for seed in range(variants)]
        ordered = few_shot(model, search_task, dataclasses.replace(base, shots=k, select="balanced"))
        orders = []
        for seed in range(variants):
            permuted = few_shot(model, search_task, dataclasses.replace(base, shots=k, select="balanced"))
            permuted.shots = random.Random(seed).sample(ordered.shots, len(ordered.shots))
            orders.append(quality(permuted))
        templates = [quality(few_shot(model, search_task, dataclasses.replace(base, shots=k, **variant)))
                     for variant in ({}, {"template": "Text: {text}\nAnswer: {label}",
                                          "instruction": label_instruction(task)})]
        for factor, values in (("shot sets", sets), ("shot order", orders), ("template", templates)):
            rows.append({"factor": factor, "shots": k, "values": values, "min": min(values),
                         "median": statistics.median(values), "max": max(values)})
    by_k = {row["shots"]: row["median"] for row in rows if row["factor"] == "shot sets"}
    if by_k:
        values = list(by_k.values())
        rows.append({"factor": "K", "shots": None, "values": values, "min": min(values),
                     "median": statistics.median(values), "max": max(values)})
    return rows


def sensitivity_lines(rows: list[dict], task_name: str) -> list[str]:
    lines = [f"prompt sensitivity on {task_name} (validation quality over variants: min / median / max, spread)"]
    for row in rows:
        k = "all K" if row["shots"] is None else f"K={row['shots']}"
        lines.append(f"{row['factor']:<11} {k:<6} {row['min']:.3f} / {row['median']:.3f} / {row['max']:.3f}  "
                     f"spread {row['max'] - row['min']:.3f}")
    return lines
