"""The ladder: every rung on one task and split, measured side by side, with the cheapest rung that is good enough.

Each rung is a step with its own folder in the run directory; a step whose `result.json` exists is done, so an
interrupted ladder resumes from the finished steps. steps.py builds and measures each rung, choice.py draws the
conclusions, report/ renders them as report.json, report.md and a self-contained report.html.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from tunelab.atomic import write_json
from tunelab.config import RUNGS, LadderConfig
from tunelab.ladder.choice import parameter_facts, recommend
from tunelab.ladder.steps import (
    BASELINES,
    PROMPT_SHOTS,
    baseline_step,
    best_teacher,
    check_task,
    distill_step,
    few_shot_curve,
    label_scarce,
    ladder_task,
    prompt_sensitivity,
    prompt_step,
    quick_probes,
    quick_task,
    searched_step,
    tune_step,
)
from tunelab.measure.bias import BiasConfig
from tunelab.measure.evaluate import peak_rss_mb
from tunelab.measure.intervals import METHOD
from tunelab.models import Model, weights_fingerprint
from tunelab.report.files import write_reports
from tunelab.tasks import Task

__all__ = ["LadderConfig", "check_task", "label_scarce", "ladder_task", "quick_task", "recommend", "run"]


def run(
    model: Model,
    task: Task,
    config: LadderConfig,
    out_dir: str | Path,
    *,
    on_step: Callable[[str, str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """Run the chosen rungs on one task into `out_dir` (resuming finished steps) and write the reports.

    `on_step(rung, "start" | "done" | "skipped")` and `on_progress(n)` report progress.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_task(task, config)
    if config.quick:
        task = quick_task(task, config)
    if config.train_labels is not None:
        task = label_scarce(task, config.train_labels, config.seed)
    bias = BiasConfig(probe=quick_probes(out_dir, config.quick_names_per_group) if config.quick else "names")
    base_weights = weights_fingerprint(model.lm)  # hashed from the tensors, to show prompting changed none
    started = time.perf_counter()
    results = {}
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
        if rung in BASELINES:
            result = baseline_step(task, rung, folder, bias, config, on_progress)
        elif rung == "few" and config.search_budget_s > 0:
            result = searched_step(model, task, folder, bias, config, on_progress)
        elif rung in ("zero", "one", "few"):
            shots = PROMPT_SHOTS.get(rung, config.few_shots)
            result = prompt_step(model, task, shots, folder, bias, config.seed, on_progress)
        elif rung in ("lora", "full"):
            result = tune_step(model, task, rung, folder, bias, config, on_progress)
        else:
            teacher = best_teacher(out_dir, results)
            result = distill_step(task, teacher, folder, bias, config, on_progress)
        result.update(rung=rung, step_seconds=time.perf_counter() - step_started, peak_rss_mb=peak_rss_mb(),
                      artifact=str(folder / "predictor"))
        write_json(done_file, result)
        results[rung] = result
        if on_step:
            on_step(rung, "done")
    curve = few_shot_curve(model, task, config, out_dir, results)
    spread = prompt_sensitivity(model, task, config, out_dir) if any(r in results for r in ("one", "few")) else []
    report = {
        "task": task.name, "kind": task.kind, "n_train": len(task.train), "n_test": len(task.test),
        "split_note": task.split_note, "model": model.name, "base_params": model.params_total,
        "config": dataclasses.asdict(config), "rungs": results, "few_shot_curve": curve, "sensitivity": spread,
        "parameter_facts": parameter_facts(model, base_weights, out_dir, results),
        "choice": recommend(results, task, config.target_quality), "interval_method": METHOD,
        "wall_seconds": time.perf_counter() - started,
    }
    write_reports(report, out_dir)
    return report


