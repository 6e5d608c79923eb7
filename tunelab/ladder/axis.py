"""The ladder's model axis: every LLM rung on each base model, the baselines once, one report over all of them.

Each model's run is an ordinary ladder in its own folder (resumable, with its own report); this module joins them.
The joined report keeps the single ladder's shape (report/ renders it the same way): its rungs are keyed
`rung@model` (the baselines, which read no base model, keep their plain names), the recommendation chooses among
every (model, rung), and `size_claim` tests the course's claim that a larger base model predicts better, rung kind
by rung kind, on paired resamples of the one test split that every run shares.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Callable

from tunelab.config import RUNGS, LadderConfig
from tunelab.errors import ConfigError
from tunelab.ladder.choice import examples_to_decide, paired_quality, recommend
from tunelab.ladder.steps import BASELINES
from tunelab.measure.evaluate import headline_quality
from tunelab.models import Model, release
from tunelab.report.files import write_reports
from tunelab.tasks import Task


def model_key(rung: str, label: str) -> str:
    """The joined report's key of a rung run on a model; a baseline reads no base model and keeps its name."""
    return rung if rung in BASELINES else f"{rung}@{label}"


def check_labels(labels: list[str]) -> None:
    """Two or more distinct model names, each usable as a folder name.

    Raises:
        ConfigError: fewer than two models, a repeated one, or a name with characters a folder cannot hold.
    """
    problems = []
    if len(labels) < 2:
        problems.append(f"--models needs two or more models, got {','.join(labels) or 'none'}")
    if len(set(labels)) != len(labels):
        problems.append(f"--models names a model twice: {','.join(labels)}")
    problems += [f"--models: {label!r} cannot name a folder" for label in labels
                 if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", label)]
    if problems:
        raise ConfigError(problems)


def run_models(
    models: dict[str, Callable[[], Model]],
    task: Task,
    config: LadderConfig,
    out_dir: str | Path,
    *,
    on_model: Callable[[str], None] | None = None,
    **run_callbacks,
) -> dict:
    """The ladder on each base model (`models`: label -> loader, loaded one after the other) into
    `out_dir/<label>/`, the baselines in the first model's run only, then the joined report in `out_dir`.
    `on_model(label)` is called as each model's run starts; other keyword arguments go to `ladder.run`."""
    from tunelab.ladder import prepare_task, run

    check_labels(list(models))
    out_dir = Path(out_dir)
    started = time.perf_counter()
    reports = {}
    for index, (label, load) in enumerate(models.items()):
        rungs = config.rungs if index == 0 else tuple(r for r in config.rungs if r not in BASELINES)
        if on_model:
            on_model(label)
        model = load()
        reports[label] = run(model, task, dataclasses.replace(config, rungs=rungs), out_dir / label, **run_callbacks)
        release(model)  # the next model's run need not hold this one
        del model
    joined = join_reports(reports, prepare_task(task, config), config, wall_seconds=time.perf_counter() - started)
    write_reports(joined, out_dir)
    return joined


def join_reports(reports: dict[str, dict], task: Task, config: LadderConfig, *, wall_seconds: float) -> dict:
    """One report over several models' ladders on the same split (`task`: the split as the ladder ran it)."""
    fingerprints = {report["test_fingerprint"] for report in reports.values()}
    if len(fingerprints) != 1:
        raise ConfigError(["the models' ladders ran on different test splits; they cannot be compared"])
    by_size = sorted(reports, key=lambda label: reports[label]["base_params"])  # the smaller model is less effort
    results = {}
    for label, report in reports.items():
        for rung, result in report["rungs"].items():
            results[model_key(rung, label)] = {**result, "kind": rung, "model": None if rung in BASELINES else label,
                                               "base_params": None if rung in BASELINES else report["base_params"]}
    order = [model_key(rung, label) for rung in RUNGS for label in by_size if model_key(rung, label) in results]
    order = list(dict.fromkeys(order))  # a baseline once
    first = reports[next(iter(reports))]
    return {
        "task": first["task"], "kind": first["kind"], "n_train": first["n_train"], "n_test": first["n_test"],
        "split_note": first["split_note"], "model": ", ".join(reports), "base_params": None,
        "test_fingerprint": first["test_fingerprint"], "config": dataclasses.asdict(config),
        "models": [{"label": label, "name": reports[label]["model"], "params": reports[label]["base_params"],
                    "precision": reports[label]["precision"]["precision"], "report": f"{label}/report.html",
                    "wall_seconds": reports[label]["wall_seconds"]} for label in by_size],
        "precision": None, "rungs": {key: results[key] for key in order}, "few_shot_curve": [], "sensitivity": [],
        "parameter_facts": [{**fact, "fact": f"{label}: {fact['fact']}"} for label, report in reports.items()
                            for fact in report["parameter_facts"]],
        "choice": recommend(results, task, config.target_quality, order=order),
        "size_claim": size_claim(reports, results, task, by_size),
        "interval_method": first["interval_method"],
        "rungs_left_out": {f"{rung}@{label}": why for label, report in reports.items()
                           for rung, why in report["rungs_left_out"].items()},
        "cut_short": {model_key(rung, label): cut for label, report in reports.items()
                      for rung, cut in report["cut_short"].items()},
        "wall_seconds": wall_seconds,
    }


def size_claim(reports: dict[str, dict], results: dict, task: Task, by_size: list[str]) -> list[dict]:
    """Per rung kind run on two or more models: the largest model's quality minus the smallest's (paired, with
    its interval), the cost ratios (parameters, examples/s, build seconds; larger over smaller), and a verdict on
    "more parameters predict better": holds (interval above 0), does not hold (below 0), or cannot tell."""
    small, large = by_size[0], by_size[-1]
    rows = []
    for rung in RUNGS:
        if rung in BASELINES or rung not in reports[small]["rungs"] or rung not in reports[large]["rungs"]:
            continue
        a, b = results[model_key(rung, large)], results[model_key(rung, small)]
        paired = paired_quality(results, task, model_key(rung, large), model_key(rung, small))
        low, high = paired["interval"] or (paired["difference"],) * 2
        verdict = "holds" if low > 0 else "does not hold" if high < 0 else "cannot tell on this test set"
        rows.append({
            "rung": rung, "smaller": small, "larger": large,
            "quality_smaller": headline_quality(b["metrics"]), "quality_larger": headline_quality(a["metrics"]),
            "difference": paired["difference"], "interval": paired["interval"], "verdict": verdict,
            "examples_to_tell": examples_to_decide(len(task.test), paired["interval"], paired["difference"])
            if verdict.startswith("cannot") else None,
            "params_ratio": a["metrics"]["params_total"] / b["metrics"]["params_total"],
            "speed_ratio": a["metrics"]["examples_per_s"] / b["metrics"]["examples_per_s"],
            "build_ratio": (a.get("train_seconds") or 0.0) / b["train_seconds"] if b.get("train_seconds") else None,
        })
    return rows
