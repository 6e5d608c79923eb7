"""The ladder: every rung on one task and split, measured side by side, with the cheapest rung that is good enough.

Each rung is a step with its own folder in the run directory; a step whose `result.json` exists is done, so an
interrupted ladder resumes from the finished steps. report.py renders the result as report.json, report.md and a
self-contained report.html.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tunelab.atomic import write_json
from tunelab.config import RUNGS, LadderConfig
from tunelab.errors import ConfigError, InputError
from tunelab.measure.bias import BiasConfig, bias_report
from tunelab.measure.evaluate import (
    deciding_metric,
    evaluate,
    evaluate_predictions,
    headline_quality,
    peak_rss_mb,
    quality_metric,
)
from tunelab.measure.intervals import METHOD, paired_difference
from tunelab.models import Model, weights_fingerprint
from tunelab.predictor import load_predictor, read_artifact_json, save_predictor
from tunelab.report.files import write_reports
from tunelab.rungs.baseline import BaselineConfig, fit_baseline
from tunelab.rungs.distill import DistillConfig, distill
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.rungs.search import SearchConfig, describe, search, sensitivity
from tunelab.rungs.tuning import TuneConfig, finetune
from tunelab.tasks import Task, TaskSource

# In order of effort to build: the first rung that is good enough is the one to recommend.
BASELINES = ("tfidf", "embed")
QUICK_TASK = "vader"  # the quick run's task when none is named
PROMPT_SHOTS = {"zero": 0, "one": 1}


def ladder_task(source: TaskSource, config: LadderConfig) -> Task:
    """The task to run, checked before any model loads: the one named, else (with --quick and no --train) the quick
    run's built-in task."""
    if source.task is None and source.train is None and config.quick:
        source = dataclasses.replace(source, task=QUICK_TASK)
    task = source.load()
    check_task(task, config)
    return task


def check_task(task: Task, config: LadderConfig) -> None:
    """Refuse, before any work, what the ladder cannot run."""
    if not task.test:
        raise InputError(f"task {task.name} has no test split")
    if config.target_quality is not None and task.is_classification and config.target_quality < 0:
        raise ConfigError(f"--target-quality must lie in 0..1 for accuracy, got {config.target_quality}")
    n_train = min(len(task.train), config.quick_train) if config.quick else len(task.train)
    if config.train_labels is not None and config.train_labels > n_train:
        raise ConfigError(f"--train-labels {config.train_labels} is more than the {n_train} training "
                          f"examples of task {task.name}{' in the quick run' if config.quick else ''}")
    if config.train_labels is not None and task.is_classification and config.train_labels < len(task.labels):
        raise ConfigError(f"--train-labels {config.train_labels} cannot hold one example of each of the "
                          f"{len(task.labels)} labels")


def quick_task(task: Task, config: LadderConfig) -> Task:
    """The quick run's subsample: fewer training and test examples and unlabeled texts, fixed seed."""
    rng = random.Random(config.seed)
    return dataclasses.replace(
        task, train=tuple(rng.sample(task.train, min(config.quick_train, len(task.train)))),
        test=tuple(rng.sample(task.test, min(config.quick_test, len(task.test)))),
        unlabeled=tuple(rng.sample(task.unlabeled, min(config.quick_transfer, len(task.unlabeled)))),
        split_note=f"quick run: {config.quick_train} training and {config.quick_test} test examples sampled "
                   f"(seed {config.seed})")


def label_scarce(task: Task, n_labels: int, seed: int = 0) -> Task:
    """The task with only `n_labels` labelled training examples (as balanced over labels as the data allows, fixed
    seed); the other training texts become unlabeled texts, placed first so that the transfer set holds them."""
    rng = random.Random(seed)
    if task.is_classification:
        by_label = {label: [e for e in task.train if e.label == label] for label in task.labels}
        for examples in by_label.values():
            rng.shuffle(examples)
        kept, depth = [], 0
        while len(kept) < n_labels:
            kept += [group[depth] for group in by_label.values() if depth < len(group)][: n_labels - len(kept)]
            depth += 1
    else:
        kept = rng.sample(task.train, n_labels)
    chosen = {id(e) for e in kept}
    unlabeled = [e.text for e in task.train if id(e) not in chosen] + list(task.unlabeled)
    note = (f"label-scarce: {n_labels} of {len(task.train)} training examples keep their labels (seed {seed}); "
            f"the other {len(task.train) - n_labels} are unlabeled texts")
    return dataclasses.replace(task, train=tuple(kept), unlabeled=tuple(unlabeled),
                               split_note=" ".join(filter(None, [task.split_note, note])))


def _quick_probes(out_dir: Path, names_per_group: int) -> str:
    """The shipped name lists cut to a few names per group, written into the run folder."""
    from tunelab.measure.bias import load_probes

    probes = load_probes("names")
    probes["groups"] = {g: names[:names_per_group] for g, names in probes["groups"].items()}
    path = out_dir / "probes-quick.json"
    write_json(path, probes)
    return str(path)


# ----------------------------------------------------------------------------------------------------------------
# Steps


def _measure(predictor, task: Task, bias: BiasConfig, on_progress) -> dict:
    """Metrics and bias on one pass over the test split; the test outputs are kept for paired comparisons."""
    metrics, predictions = evaluate_predictions(predictor, task, on_progress=on_progress)
    outputs = predictions.labels if task.is_classification else [float(v) for v in predictions.values]
    return {"metrics": metrics, "bias": bias_report(predictor, task, bias, predictions=predictions),
            "test_outputs": outputs}


def _baseline_step(task: Task, method: str, folder: Path, bias: BiasConfig, config: LadderConfig, on_progress):
    predictor = fit_baseline(task, BaselineConfig(method=method, seed=config.seed), out_dir=folder / "predictor",
                             overwrite=True)
    return {**_measure(predictor, task, bias, on_progress),
            "train_seconds": predictor.meta["training"]["train_seconds"]}


def _prompt_step(model: Model, task: Task, shots: int, folder: Path, bias: BiasConfig, seed: int, on_progress):
    predictor = few_shot(model, task, PromptConfig(shots=shots, seed=seed))
    save_predictor(predictor, folder / "predictor")
    return {**_measure(predictor, task, bias, on_progress), "train_seconds": 0.0}


def _searched_step(model: Model, task: Task, folder: Path, bias: BiasConfig, config: LadderConfig, on_progress):
    """The `few` rung: the prompt that did best on held-out training examples; the report says which it is."""
    budget = min(config.search_budget_s, config.quick_search_s) if config.quick else config.search_budget_s
    started = time.perf_counter()
    found = search(model, task, PromptConfig(seed=config.seed), SearchConfig(budget_s=budget, seed=config.seed))
    save_predictor(found.predictor, folder / "predictor")
    return {**_measure(found.predictor, task, bias, on_progress), "train_seconds": time.perf_counter() - started,
            "searched": describe(found.config, PromptConfig(seed=config.seed)),
            "validation": found.validation, "configs_tried": len(found.rows),
            "search_rows": found.rows}


def _tune_step(model: Model, task: Task, method: str, folder: Path, bias: BiasConfig, config: LadderConfig,
               on_progress):
    tune_config = TuneConfig(method=method, epochs=config.quick_epochs if config.quick else config.epochs,
                             seed=config.seed)
    predictor = finetune(model, task, tune_config, out_dir=folder / "predictor", overwrite=True)
    training = predictor.meta["training"]
    return {**_measure(predictor, task, bias, on_progress), "train_seconds": training["train_seconds"],
            "epochs_run": training["epochs_run"]}


def _distill_step(task: Task, teacher_dir: Path, folder: Path, bias: BiasConfig, config: LadderConfig,
                  on_progress):
    teacher = load_predictor(teacher_dir)
    student_config = DistillConfig(student=config.student, epochs=config.distill_epochs, seed=config.seed)
    student, report = distill(teacher, task, student_config, out_dir=folder / "predictor",
                              teacher_name=str(teacher_dir))
    return {**_measure(student, task, bias, on_progress), "train_seconds": report["train_seconds"],
            "teacher": str(teacher_dir), "speedup_vs_teacher": report["speedup"],
            "quality_ratio": report["quality_ratio"]}


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
    bias = BiasConfig(probe=_quick_probes(out_dir, config.quick_names_per_group) if config.quick else "names")
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
            result = _baseline_step(task, rung, folder, bias, config, on_progress)
        elif rung == "few" and config.search_budget_s > 0:
            result = _searched_step(model, task, folder, bias, config, on_progress)
        elif rung in ("zero", "one", "few"):
            shots = PROMPT_SHOTS.get(rung, config.few_shots)
            result = _prompt_step(model, task, shots, folder, bias, config.seed, on_progress)
        elif rung in ("lora", "full"):
            result = _tune_step(model, task, rung, folder, bias, config, on_progress)
        else:
            teacher = _best_teacher(out_dir, results)
            result = _distill_step(task, teacher, folder, bias, config, on_progress)
        result.update(rung=rung, step_seconds=time.perf_counter() - step_started, peak_rss_mb=peak_rss_mb(),
                      artifact=str(folder / "predictor"))
        write_json(done_file, result)
        results[rung] = result
        if on_step:
            on_step(rung, "done")
    curve = _few_shot_curve(model, task, config, out_dir, results)
    spread = _sensitivity(model, task, config, out_dir) if any(r in results for r in ("one", "few")) else []
    report = {
        "task": task.name, "kind": task.kind, "n_train": len(task.train), "n_test": len(task.test),
        "split_note": task.split_note, "model": model.name, "base_params": model.params_total,
        "config": dataclasses.asdict(config), "rungs": results, "few_shot_curve": curve, "sensitivity": spread,
        "parameter_facts": _parameter_facts(model, base_weights, out_dir, results),
        "choice": recommend(results, task, config.target_quality), "interval_method": METHOD,
        "wall_seconds": time.perf_counter() - started,
    }
    write_reports(report, out_dir)
    return report


def _best_teacher(out_dir: Path, results: dict) -> Path:
    """The teacher: the most trained LLM rung of this run (full, else lora, else the prompts), fixed in advance;
    choosing it by test quality would let the test split pick the student's teacher."""
    tuned = [r for r in ("full", "lora", "few", "one", "zero") if r in results]
    if not tuned:
        raise ConfigError("the distill rung needs a teacher: include lora, full or a prompt rung in --rungs")
    return out_dir / tuned[0] / "predictor"


def _few_shot_curve(model, task, config: LadderConfig, out_dir: Path, results: dict) -> list[dict]:
    """Quality over K for the prompt rung (reusing the zero/one/few results), cached in the run folder."""
    if not any(r in results for r in ("zero", "one", "few")):
        return []
    path = out_dir / "few_shot_curve.json"
    curve = json.loads(path.read_text()) if path.is_file() else {}
    known = {PROMPT_SHOTS.get(r, config.few_shots): results[r]["metrics"] for r in ("zero", "one", "few")
             if r in results and "searched" not in results[r]}  # a searched prompt is not plain balanced K-shot
    for k in sorted({*((1, 4) if config.quick else config.curve), config.few_shots}):
        if str(k) in curve or k > len(task.train):
            continue
        metrics = known.get(k) or evaluate(few_shot(model, task, PromptConfig(shots=k, seed=config.seed)), task)
        curve[str(k)] = {"quality": headline_quality(metrics), "examples_per_s": metrics["examples_per_s"]}
        write_json(path, curve)
    for k, metrics in known.items():
        curve.setdefault(str(k), {"quality": headline_quality(metrics), "examples_per_s": metrics["examples_per_s"]})
    return [{"shots": int(k), **v} for k, v in sorted(curve.items(), key=lambda item: int(item[0]))]


def _sensitivity(model, task: Task, config: LadderConfig, out_dir: Path) -> list[dict]:
    """The prompt's sensitivity (search.sensitivity), cached in the run folder; the quick run tries fewer variants."""
    path = out_dir / "sensitivity.json"
    if path.is_file():
        return json.loads(path.read_text())
    rows = sensitivity(model, task, PromptConfig(seed=config.seed), SearchConfig(seed=config.seed),
                       k_values=(1, 4) if config.quick else (1, 4, 8), variants=2 if config.quick else 4)
    write_json(path, rows)
    return rows


def _parameter_facts(model: Model, base_weights: str, out_dir: Path, results: dict) -> list[dict]:
    """The parameter contract, checked on this run's own artifacts."""
    facts = []
    prompt_rungs = [r for r in ("zero", "one", "few") if r in results]
    if prompt_rungs:
        after = weights_fingerprint(model.lm)
        unchanged = after == base_weights and all(
            read_artifact_json(out_dir / r / "predictor")["params_trainable"] == 0 for r in prompt_rungs)
        facts.append({"fact": "prompting changed no parameter", "holds": unchanged,
                      "evidence": f"hash of the base weights {base_weights} before, {after} after; "
                                  f"0 trainable parameters in {', '.join(prompt_rungs)}"})
    for rung in ("lora", "full"):
        if rung in results:
            total = read_artifact_json(out_dir / rung / "predictor")["params_total"]
            facts.append({"fact": f"the {rung} model has as many parameters as its base",
                          "holds": total == model.params_total,
                          "evidence": f"{total:,} vs base {model.params_total:,}"})
    if "distill" in results:
        student = read_artifact_json(out_dir / "distill" / "predictor")
        facts.append({"fact": "the distilled model has fewer parameters than its teacher",
                      "holds": student["params_total"] < student["params_teacher"],
                      "evidence": f"{student['params_total']:,} vs teacher {student['params_teacher']:,}"})
    return facts


def _status(interval: list[float] | None, quality: float, target: float) -> str:
    """Where a rung stands against the target: its whole interval above (`reaches`), its whole interval below
    (`below`), or the target inside its interval (`compatible`: this test set cannot tell)."""
    low, high = interval or (quality, quality)
    return "reaches" if low >= target else "below" if high < target else "compatible"


def _paired(results: dict, task: Task, first: str, second: str) -> dict:
    """first's quality minus second's, with its interval on paired resamples of the test split."""
    encode = (lambda outputs: np.array([task.labels.index(o) if o in task.labels else len(task.labels)
                                        for o in outputs])) if task.is_classification else np.array
    gold = encode([e.label for e in task.test])
    return paired_difference(deciding_metric(task), gold, encode(results[first]["test_outputs"]),
                             encode(results[second]["test_outputs"]))


def recommend(results: dict, task: Task, target: float | None) -> dict:
    """The rung to build: the lowest on the ladder (least effort) whose interval reaches the target (else one whose
    interval holds it, said so); without a target, the lowest one that cannot be told apart from the best rung.
    Also the fastest rung to serve among those, each rung's standing against the target, and the rungs that
    cannot be told apart from the recommended one (paired bootstrap of the quality difference)."""
    metric = quality_metric(task.kind)
    ordered = [r for r in RUNGS if r in results]
    quality = {r: headline_quality(results[r]["metrics"]) for r in ordered}
    intervals = {r: results[r]["metrics"].get("intervals", {}).get(metric) for r in ordered}
    comparable = [r for r in ordered if "test_outputs" in results[r]]
    best = max(ordered, key=quality.get)
    if target is None:
        status = {r: "tied with the best" if r == best or (r in comparable and best in comparable and not _paired(
            results, task, best, r)["distinguishable"]) else "below the best" for r in ordered}
        candidates, basis = [r for r in ordered if status[r] == "tied with the best"], "tied"
    else:
        status = {r: _status(intervals[r], quality[r], target) for r in ordered}
        candidates = [r for r in ordered if status[r] == "reaches"]
        basis = "reaches"
        if not candidates:
            candidates, basis = [r for r in ordered if status[r] == "compatible"], "compatible"
    chosen = candidates[0] if candidates else None
    fastest = max(candidates, key=lambda r: results[r]["metrics"]["examples_per_s"]) if candidates else None
    against_chosen = {r: _paired(results, task, r, chosen) for r in comparable if chosen in comparable and r != chosen}
    return {"metric": metric, "target": target, "best": best, "cheapest_to_build": chosen,
            "fastest_to_serve": fastest, "basis": basis, "status": status, "candidates": candidates,
            "versus_recommended": against_chosen,
            "indistinguishable": [r for r, d in against_chosen.items() if not d["distinguishable"]]}
