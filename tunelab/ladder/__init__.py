"""The ladder: every rung on one task and split, measured side by side, with the cheapest rung that is good enough.

Each rung is a step with its own folder in the run directory; a step whose `result.json` exists is done, so an
interrupted ladder resumes from the finished steps. steps.py builds and measures each rung, choice.py draws the
conclusions, report/ renders them as report.json, report.md and a self-contained report.html.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from tunelab.atomic import write_json
from tunelab.config import RUNGS, LadderConfig, PromptConfig, SearchConfig
from tunelab.ladder.choice import parameter_facts, recommend
from tunelab.ladder.plan import count_tokens, deadline, make_plan, probe, sensitivity_count
from tunelab.ladder.steps import (
    BASELINES,
    PROMPT_SHOTS,
    baseline_step,
    best_teacher,
    cascade_step,
    check_task,
    curve_shots,
    distill_step,
    few_shot_curve,
    label_scarce,
    ladder_task,
    probe_step,
    prompt_sensitivity,
    prompt_step,
    quick_probes,
    quick_task,
    searched_step,
    sensitivity_settings,
    tune_step,
)
from tunelab.measure.bias import BiasConfig, load_probes, probe_texts
from tunelab.measure.evaluate import peak_rss_mb, reset_peak_rss
from tunelab.measure.intervals import METHOD
from tunelab.models import Model, weights_fingerprint
from tunelab.report.files import write_reports
from tunelab.rungs.prompting import few_shot
from tunelab.rungs.search import validation_task
from tunelab.tasks import Task

__all__ = ["LadderConfig", "check_task", "label_scarce", "ladder_task", "prepare_task", "quick_task", "recommend",
           "run"]


def run(
    model: Model,
    task: Task,
    config: LadderConfig,
    out_dir: str | Path,
    *,
    on_step: Callable[[str, str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_plan: Callable[[list[str]], None] | None = None,
    on_estimate: Callable[[float], None] | None = None,
) -> dict:
    """Run the chosen rungs on one task into `out_dir` (resuming finished steps) and write the reports.

    Before any work: the precision is resolved once for every rung (`auto`: bf16 where fast and in parity), the
    plan is probed and handed to `on_plan(lines)` (each section's estimate and budget, an ETA) and its estimated
    seconds to `on_estimate(seconds)`.
    `on_step(rung, "start" | "done" | "skipped")` and `on_progress(n)` report progress.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = prepare_task(task, config)
    started = time.perf_counter()
    base_weights = weights_fingerprint(model.lm)  # hashed before anything runs: prompting must change none
    precision = ladder_precision(model, task, config)
    left_out = rungs_left_out(task, config)  # said in the report, never dropped silently
    config = dataclasses.replace(config, precision=precision["precision"],
                                 rungs=tuple(r for r in config.rungs if r not in left_out))
    bias = BiasConfig(probe=quick_probes(out_dir, config.quick_names_per_group) if config.quick else "names")
    probes = load_probes(bias.probe)
    k_values, variants = sensitivity_settings(config)
    probe_sentences = probe_texts(probes, task.text_fields)
    tokens = {"train": count_tokens(model, task, [e.text for e in task.train]),
              "test": count_tokens(model, task, [e.text for e in task.test]),
              "unlabeled": count_tokens(model, task, list(task.unlabeled)),
              "probe": count_tokens(model, task, probe_sentences), "probe_texts": len(probe_sentences)}
    plan = make_plan(task, config, probe(model, task, config), tokens,
                     curve_ks=[k for k in curve_shots(task, config) if k not in known_shots(config)],
                     sensitivity_evaluations=sensitivity_count(k_values, variants),
                     n_validation=len(validation_task(task, SearchConfig(seed=config.seed)).test),
                     spent_s=time.perf_counter() - started)
    memory = memory_plans(model, task, config, tokens)  # a rung that cannot fit stops the ladder before any work
    if on_plan:
        on_plan(plan.lines() + [f"  memory: {', '.join(f'{rung} {mb / 1024:.1f} GiB' for rung, mb in memory.items())}"
                                f" planned at most (tunelab info --memory)"])
    if on_estimate:
        on_estimate(plan.estimate_s)
    planned_at = time.perf_counter()  # the ETA counts from here: resolving the precision and the probes came before
    results, seconds = {}, {}
    for rung in (r for r in RUNGS if r in config.rungs):
        folder = out_dir / rung
        done_file = folder / "result.json"
        if done_file.is_file():
            results[rung] = json.loads(done_file.read_text())
            if on_step:
                on_step(rung, "skipped")
            continue
        if on_step:
            on_step(rung, "start")
        folder.mkdir(parents=True, exist_ok=True)
        step_started = time.perf_counter()
        own_peak = reset_peak_rss()  # each rung's peak memory is its own, not the process's so far
        if rung in BASELINES:
            result = baseline_step(task, rung, folder, bias, config, on_progress)
        elif rung == "probe":
            result = probe_step(model, task, folder, bias, config, on_progress)
        elif rung == "few" and config.search_budget_s > 0:
            result = searched_step(model, task, folder, bias, config, on_progress, results, plan.budget(rung))
        elif rung in ("zero", "one", "few"):
            result = prompt_step(model, task, PROMPT_SHOTS.get(rung, config.few_shots), folder, bias, config,
                                 on_progress)
        elif rung in ("lora", "full"):
            result = tune_step(model, task, rung, folder, bias, config, on_progress, plan.budget(rung))
        elif rung == "cascade":
            result = cascade_step(task, out_dir, folder, bias, results, on_progress)
        else:
            teacher = best_teacher(out_dir, results)
            result = distill_step(task, teacher, folder, bias, config, on_progress,
                                  teacher_metrics=results[teacher.parent.name]["metrics"], budget_s=plan.budget(rung))
        result.update(rung=rung, step_seconds=time.perf_counter() - step_started, peak_rss_mb=peak_rss_mb(),
                      peak_is_the_rungs_own=own_peak, memory_plan_mb=memory.get(rung),
                      artifact=str(folder / "predictor"))
        write_json(done_file, result)
        results[rung] = result
        seconds[rung] = result["step_seconds"]
        if on_step:
            on_step(rung, "done")
    section_started = time.perf_counter()
    curve, curve_left_out = few_shot_curve(model, task, config, out_dir, results,
                                           deadline(plan.budget("few-shot curve")))
    seconds["few-shot curve"] = time.perf_counter() - section_started
    spread, spread_left_out = [], []
    if any(r in results for r in ("one", "few")):
        section_started = time.perf_counter()
        spread, spread_left_out = prompt_sensitivity(model, task, config, out_dir,
                                                     deadline(plan.budget("prompt sensitivity")))
        seconds["prompt sensitivity"] = time.perf_counter() - section_started
    report = {
        "task": task.name, "kind": task.kind, "n_train": len(task.train), "n_test": len(task.test),
        "split_note": task.split_note, "model": model.name, "base_params": model.params_total,
        "test_fingerprint": test_fingerprint(task),
        "config": dataclasses.asdict(config), "precision": precision, "rungs": results, "few_shot_curve": curve,
        "sensitivity": spread, "parameter_facts": parameter_facts(model, base_weights, out_dir, results),
        "choice": recommend(results, task, config.target_quality), "interval_method": METHOD,
        "plan": {"sections": [{**s, "seconds": seconds.get(s["name"])} for s in plan.sections],
                 "probes": plan.probes, "estimate_s": plan.estimate_s, "budget_s": plan.budget_s,
                 "seconds_before_plan": planned_at - started, "seconds_after_plan": time.perf_counter() - planned_at},
        "rungs_left_out": left_out,
        "cut_short": {**{rung: result["cut_short"] for rung, result in results.items() if result.get("cut_short")},
                      **{name: left for name, left in (("few-shot curve", curve_left_out),
                                                       ("prompt sensitivity", spread_left_out)) if left}},
        "wall_seconds": time.perf_counter() - started,
    }
    write_reports(report, out_dir)
    return report


def prepare_task(task: Task, config: LadderConfig) -> Task:
    """The task as the ladder runs it: checked, subsampled for --quick, labels withheld for --train-labels (the
    same seed gives the same split, so runs on different models are paired example by example)."""
    check_task(task, config)
    if config.quick:
        task = quick_task(task, config)
    if config.train_labels is not None:
        task = label_scarce(task, config.train_labels, config.seed)
    return task


def test_fingerprint(task: Task) -> str:
    """A hash of the test split's texts and labels: reports compared example by example must share it."""
    digest = hashlib.sha256()
    for example in task.test:
        digest.update(json.dumps([example.text, example.label]).encode())
    return digest.hexdigest()[:16]


def memory_plans(model: Model, task: Task, config: LadderConfig, tokens: dict) -> dict[str, float]:
    """Each LLM rung's memory plan, MB (tunelab/memory.py), the model being loaded already.

    Raises:
        MemoryPlanError: a rung that will not fit, named.
    """
    from tunelab.config import TuneConfig
    from tunelab.errors import MemoryPlanError
    from tunelab.memory import ModelShape, check, plan
    from tunelab.rungs.tuning import plan_memory

    shape, planned = ModelShape(model.lm.config, model.params_total), {}
    lengths = [len(ids) for ids in model.tokenizer([e.text for e in task.train[:200]],
                                                   add_special_tokens=False)["input_ids"]]
    for rung in config.rungs:
        try:
            if rung in ("lora", "full"):
                found = plan_memory(model, TuneConfig(method=rung, precision=config.precision), config.precision,
                                    max(lengths, default=16) + 32, lengths)
                planned[rung] = found["total"] / 2**20
            elif rung in ("probe", "zero", "one", "few"):
                planned[rung] = check(plan(shape, "probe" if rung == "probe" else "score", precision=config.precision,
                                           device=model.device, loaded=True)).total / 2**20
        except MemoryPlanError as err:
            raise MemoryPlanError(f"the {rung} rung {err} (or leave it out: --rungs)") from None
    return planned


def rungs_left_out(task: Task, config: LadderConfig) -> dict[str, str]:
    """Rungs asked for that cannot run on this task or without another rung, and why (the report says so)."""
    left_out = {}
    if "cascade" in config.rungs:
        if task.kind == "regression":
            left_out["cascade"] = "a cascade routes by a classifier's top probability; this task is regression"
        elif "distill" not in config.rungs or not {"lora", "full"} & set(config.rungs):
            left_out["cascade"] = "the cascade is built from the distill rung's student and a fine-tuned teacher"
    return left_out


def known_shots(config: LadderConfig) -> set[int]:
    """The K values whose plain balanced prompt a rung of this run measures (the curve reuses them)."""
    rungs = {"zero": 0, "one": 1, **({"few": config.few_shots} if config.search_budget_s == 0 else {})}
    return {k for rung, k in rungs.items() if rung in config.rungs}


def ladder_precision(model: Model, task: Task, config: LadderConfig) -> dict:
    """The precision every rung of this run uses: `auto` resolved once, on the zero-shot prompt and training texts
    (scoring/precision.py); the record goes into the report."""
    zero = few_shot(model, task, PromptConfig(seed=config.seed, precision=config.precision))
    return zero.precision_record or {"requested": config.precision, "precision": zero.config.precision}
