"""The ladder's steps: the task it runs (quick subsample, label-scarce setting), and one function per kind of rung
that builds the rung's predictor and measures it (metrics, bias, the test outputs kept for paired comparisons)."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

from tunelab.atomic import write_json
from tunelab.config import LadderConfig
from tunelab.errors import ConfigError, InputError
from tunelab.measure.bias import BiasConfig, bias_report
from tunelab.measure.evaluate import (
    evaluate,
    evaluate_predictions,
    headline_quality,
    quality_metric,
)
from tunelab.models import Model
from tunelab.predictor import load_predictor, save_predictor
from tunelab.rungs.baseline import BaselineConfig, fit_baseline
from tunelab.rungs.distill import DistillConfig, distill
from tunelab.rungs.probe import ProbeConfig, fit_probe
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.rungs.search import SearchConfig, describe, search, sensitivity
from tunelab.rungs.tuning import TuneConfig, finetune
from tunelab.tasks import Task, TaskSource

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
    if config.target_quality is not None and task.kind != "regression" and config.target_quality < 0:
        raise ConfigError(f"--target-quality must lie in 0..1 for {quality_metric(task.kind)}, got "
                          f"{config.target_quality}")
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


def quick_probes(out_dir: Path, names_per_group: int) -> str:
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
    outputs = (predictions.labels if task.is_classification else [list(s) for s in predictions.label_sets]
               if task.is_multilabel else [float(v) for v in predictions.values])
    return {"metrics": metrics, "bias": bias_report(predictor, task, bias, predictions=predictions),
            "test_outputs": outputs}


def baseline_step(task: Task, method: str, folder: Path, bias: BiasConfig, config: LadderConfig, on_progress):
    predictor = fit_baseline(task, BaselineConfig(method=method, seed=config.seed), out_dir=folder / "predictor",
                             overwrite=True)
    return {**_measure(predictor, task, bias, on_progress),
            "train_seconds": predictor.meta["training"]["train_seconds"]}


def probe_step(model: Model, task: Task, folder: Path, bias: BiasConfig, config: LadderConfig, on_progress):
    predictor = fit_probe(model, task, ProbeConfig(seed=config.seed, precision=config.precision),
                          out_dir=folder / "predictor", overwrite=True, measure=False)
    training = predictor.meta["training"]
    # measured without the feature cache: its speed is that of reading new texts
    return {**_measure(predictor.uncached(), task, bias, on_progress), "train_seconds": training["train_seconds"],
            "texts_from_cache": training["texts_from_cache"], "probe_choice": {
                "layer": predictor.layer, "pooling": predictor.pooling, "strength": training["strength"]}}


def prompt_step(model: Model, task: Task, shots: int, folder: Path, bias: BiasConfig, config: LadderConfig,
                on_progress):
    predictor = few_shot(model, task, PromptConfig(shots=shots, seed=config.seed, precision=config.precision))
    save_predictor(predictor, folder / "predictor", task.text_fields)
    return {**_measure(predictor, task, bias, on_progress), "train_seconds": 0.0}


def searched_step(model: Model, task: Task, folder: Path, bias: BiasConfig, config: LadderConfig, on_progress,
                  results: dict, budget_s: float | None = None):
    """The `few` rung: the prompt that did best on held-out training examples; the report says which it is. When
    the search keeps a prompt the run has already measured (zero-shot, same fingerprint), its measurement is reused
    instead of scoring the test split and the probes again. `budget_s`: the plan's share of --budget-s, if less."""
    budget = min(config.search_budget_s, config.quick_search_s) if config.quick else config.search_budget_s
    budget = max(1.0, min(budget, budget_s)) if budget_s is not None else budget  # the search needs > 0 seconds
    base = PromptConfig(seed=config.seed, precision=config.precision)
    started = time.perf_counter()
    found = search(model, task, base, SearchConfig(budget_s=budget, seed=config.seed))
    save_predictor(found.predictor, folder / "predictor", task.text_fields)
    same = next((r for r in ("zero", "one") if r in results
                 and results[r]["metrics"]["fingerprint"] == found.predictor.fingerprint), None)
    measured = ({key: results[same][key] for key in ("metrics", "bias", "test_outputs")} if same
                else _measure(found.predictor, task, bias, on_progress))
    return {**measured, "train_seconds": time.perf_counter() - started, "measurement_reused_from": same,
            "searched": describe(found.config, base), "validation": found.validation,
            "configs_tried": len(found.rows), "search_rows": found.rows}


def tune_step(model: Model, task: Task, method: str, folder: Path, bias: BiasConfig, config: LadderConfig,
              on_progress, budget_s: float | None = None):
    """The lora and full rungs; `budget_s`: the plan's share of --budget-s for training (the best weights by then
    are kept, and the report says the rung was cut short)."""
    tune_config = TuneConfig(method=method, epochs=config.quick_epochs if config.quick else config.epochs,
                             min_steps=config.quick_min_steps if config.quick else TuneConfig.min_steps,
                             seed=config.seed, precision=config.precision, budget_s=_positive(budget_s))
    predictor = finetune(model, task, tune_config, out_dir=folder / "predictor", overwrite=True)
    training = predictor.meta["training"]
    return {**_measure(predictor, task, bias, on_progress), "train_seconds": training["train_seconds"],
            "epochs_run": training["epochs_run"], "padding": training["padding"],
            "cut_short": training["cut_short"]}


def _positive(budget_s: float | None) -> float | None:
    """A budget the trainers accept: an exhausted one still lets them take their first step."""
    return None if budget_s is None else max(budget_s, 1e-3)


def distill_step(task: Task, teacher_dir: Path, folder: Path, bias: BiasConfig, config: LadderConfig,
                 on_progress, teacher_metrics: dict | None = None, budget_s: float | None = None):
    teacher = load_predictor(teacher_dir)
    student_config = DistillConfig(student=config.student, epochs=config.distill_epochs, seed=config.seed,
                                   precision=config.precision, budget_s=_positive(budget_s))
    transfer = [e.text for e in task.train] + list(task.unlabeled)
    if teacher.rung == "tune":  # the teacher's validation split stays unseen by the student too: the cascade rung
        from tunelab.ship.calibration import held_out_examples  # chooses its threshold there

        unseen = {e.text for e in held_out_examples(task, None, [teacher_dir])[0]}
        transfer = [text for text in transfer if text not in unseen]
    student, report = distill(teacher, task, student_config, out_dir=folder / "predictor", transfer_texts=transfer,
                              teacher_name=str(teacher_dir), teacher_metrics=teacher_metrics)
    return {**_measure(student, task, bias, on_progress), "train_seconds": report["train_seconds"],
            "cut_short": report["cut_short"],
            "teacher": str(teacher_dir), "speedup_vs_teacher": report["speedup"],
            "quality_ratio": report["quality_ratio"]}


def cascade_step(task: Task, out_dir: Path, folder: Path, bias: BiasConfig, results: dict, on_progress):
    """The distill rung's student first, its teacher for what the student is unsure of; the threshold chosen on the
    teacher's own validation split, which neither member trained on (distill_step leaves it out of the transfer
    set)."""
    from tunelab.ship.calibration import held_out_examples
    from tunelab.ship.cascade import build_cascade, cascade_report

    if "distill" not in results or task.kind == "regression":
        raise ConfigError("the cascade rung needs the distill rung (its student and teacher) and a task with labels")
    student, teacher = out_dir / "distill" / "predictor", Path(results["distill"]["teacher"])
    examples, source = held_out_examples(task, None, [teacher])
    built = build_cascade(student, teacher, task, examples, source=source, out_dir=folder / "predictor")
    report = cascade_report(built, task, folder / "predictor", overwrite=True)
    built.seen = built.escalated = 0
    measured = _measure(built, task, bias, on_progress)
    measured["metrics"]["escalated_share"] = built.escalated_share
    return {**measured, "train_seconds": 0.0, "threshold": built.threshold, "test_frontier": report["test_frontier"],
            "versus_teacher": report["versus_strong"], "fitted_on": source}


def best_teacher(out_dir: Path, results: dict) -> Path:
    """The teacher: the most trained LLM rung of this run (full, else lora, else the prompts), fixed in advance;
    choosing it by test quality would let the test split pick the student's teacher."""
    tuned = [r for r in ("full", "lora", "few", "one", "zero") if r in results]
    if not tuned:
        raise ConfigError("the distill rung needs a teacher: include lora, full or a prompt rung in --rungs")
    return out_dir / tuned[0] / "predictor"


def curve_shots(task: Task, config: LadderConfig) -> list[int]:
    """The K values of the few-shot curve that the training set allows."""
    return [k for k in sorted({*((1, 4) if config.quick else config.curve), config.few_shots}) if k <= len(task.train)]


def few_shot_curve(model, task, config: LadderConfig, out_dir: Path, results: dict,
                   deadline: float | None = None) -> tuple[list[dict], list[int]]:
    """Quality over K for the prompt rung (reusing the zero/one/few results), cached in the run folder; no new K is
    started after `deadline`. Returns the curve and the K values left out because the budget ran out."""
    if not any(r in results for r in ("zero", "one", "few")):
        return [], []
    path = out_dir / "few_shot_curve.json"
    curve = json.loads(path.read_text()) if path.is_file() else {}
    known = {PROMPT_SHOTS.get(r, config.few_shots): results[r]["metrics"] for r in ("zero", "one", "few")
             if r in results and "searched" not in results[r]}  # a searched prompt is not plain balanced K-shot
    left_out = []
    for k in curve_shots(task, config):
        if str(k) in curve:
            continue
        if k not in known and deadline is not None and time.monotonic() > deadline:
            left_out.append(k)
            continue
        metrics = known.get(k) or evaluate(few_shot(model, task, PromptConfig(shots=k, seed=config.seed,
                                                                             precision=config.precision)), task)
        curve[str(k)] = {"quality": headline_quality(metrics), "examples_per_s": metrics["examples_per_s"]}
        write_json(path, curve)
    for k, metrics in known.items():
        curve.setdefault(str(k), {"quality": headline_quality(metrics), "examples_per_s": metrics["examples_per_s"]})
    return [{"shots": int(k), **v} for k, v in sorted(curve.items(), key=lambda item: int(item[0]))], left_out


def sensitivity_settings(config: LadderConfig) -> tuple[tuple[int, ...], int]:
    """The K values and variants per factor of the sensitivity section (fewer in the quick run)."""
    return ((1, 4), 2) if config.quick else ((1, 4, 8), 4)


def prompt_sensitivity(model, task: Task, config: LadderConfig, out_dir: Path,
                       deadline: float | None = None) -> tuple[list[dict], list[int]]:
    """The prompt's sensitivity (search.sensitivity), cached in the run folder once complete; no new K is started
    after `deadline`. Returns the rows and the K values left out because the budget ran out."""
    path = out_dir / "sensitivity.json"
    if path.is_file():
        return json.loads(path.read_text()), []
    k_values, variants = sensitivity_settings(config)
    rows = sensitivity(model, task, PromptConfig(seed=config.seed, precision=config.precision),
                       SearchConfig(seed=config.seed), k_values=k_values, variants=variants, deadline=deadline)
    measured = {row["shots"] for row in rows}
    left_out = [k for k in k_values if k not in measured and k <= len(task.train)]
    if not left_out:
        write_json(path, rows)
    return rows, left_out
