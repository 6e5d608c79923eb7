"""Responsible use: quality per data slice (fairlearn's MetricFrame) and counterfactual name probes.

A counterfactual probe fills template sentences with names from two or more groups (the Equity Evaluation Corpus
design, Kiritchenko and Mohammad 2018) and checks that the prediction does not move with the name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from fairlearn.metrics import MetricFrame, selection_rate
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error

from tunelab.errors import ConfigError, InputError
from tunelab.predictor import Predictions, Predictor, predict
from tunelab.tasks import Task

NAMES_FILE = Path(__file__).parent / "data" / "names.json"


@dataclass(frozen=True)
class BiasConfig:
    slice_field: str | None = None  # None: the task's own slices (built-in tasks slice by word length)
    probe: str = "names"  # "names" (shipped EEC names and templates) or a JSON file of the same shape
    threshold: float = 0.1  # largest allowed gap between groups in mean P(positive label) (or value), per template
    positive_label: str | None = None  # None: "positive" when the task has it, else its last label

    def __post_init__(self):
        if self.threshold < 0:
            raise ConfigError(f"--threshold must be >= 0, got {self.threshold}")


def positive_label_of(labels: tuple[str, ...], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in labels:
            raise ConfigError(f"--positive-label {wanted!r} is not one of the task's labels {list(labels)}")
        return wanted
    return "positive" if "positive" in labels else labels[-1]


def slice_metrics(task: Task, predictions: Predictions, groups: list[str], positive_label: str | None = None) -> dict:
    """Quality per slice of the test split, the largest gap between slices, and the selection-rate difference."""
    gold = [e.label for e in task.test]
    if task.is_classification:
        positive = positive_label_of(task.labels, positive_label)
        metrics = {"accuracy": accuracy_score,
                   "macro_f1": partial(f1_score, labels=list(task.labels), average="macro", zero_division=0),
                   "selection_rate": partial(selection_rate, pos_label=positive)}
        predicted = predictions.labels
    else:
        metrics, predicted = {"mae": mean_absolute_error}, predictions.values
    frame = MetricFrame(metrics=metrics, y_true=np.asarray(gold, dtype=object if task.is_classification else float),
                        y_pred=np.asarray(predicted, dtype=object if task.is_classification else float),
                        sensitive_features=np.asarray(groups))
    by_group = {str(group): {name: float(value) for name, value in row.items()}
                for group, row in frame.by_group.iterrows()}
    sizes = {str(g): int(n) for g, n in zip(*np.unique(np.asarray(groups), return_counts=True))}
    for group, size in sizes.items():
        by_group[group]["n"] = size
    gaps = {name: float(value) for name, value in frame.difference().items()}
    result = {"by_group": by_group, "largest_gap": gaps}
    if task.is_classification:
        result["selection_rate_difference"] = gaps.pop("selection_rate")
        result["positive_label"] = positive
    return result


def task_slices(task: Task, slice_field: str | None) -> list[str]:
    """The slice of every test example: its --slice-field value, or for built-in tasks the word-length band.

    Raises:
        InputError: a slice field that the test examples lack.
    """
    slice_field = slice_field or task.slice_field
    if slice_field is None:
        return [("short (<=5)" if len(e.text) <= 5 else "medium (6-8)" if len(e.text) <= 8 else "long (>=9)")
                for e in task.test]
    missing = [e for e in task.test if slice_field not in e.extra]
    if missing:
        raise InputError(f"is missing from the test examples ({len(missing)} of {len(task.test)})",
                         field=slice_field, line=missing[0].line, hint="name an existing field with --slice-field")
    return [str(e.extra[slice_field]) for e in task.test]


def load_probes(probe: str) -> dict:
    """Groups of names and template sentences, from the shipped EEC lists or a JSON file of the same shape.

    Raises:
        InputError: an unreadable file, fewer than two groups, or a template without {name}.
    """
    path = NAMES_FILE if probe == "names" else Path(probe)
    if not path.is_file():
        raise InputError("probe file not found", path=path)
    try:
        probes = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"is not valid JSON ({err})", path=path) from None
    groups, templates = probes.get("groups"), probes.get("templates")
    if not isinstance(groups, dict) or len(groups) < 2 or not all(
            isinstance(names, list) and names and all(isinstance(n, str) for n in names) for names in groups.values()):
        raise InputError("needs two or more groups, each a non-empty list of names", path=path, field="groups")
    if not isinstance(templates, list) or not templates or not all(
            isinstance(t, str) and "{name}" in t for t in templates):
        raise InputError("needs a list of sentences each holding {name}", path=path, field="templates")
    return {"groups": groups, "templates": templates, "source": probes.get("source", str(path))}


def counterfactual_gaps(predictor: Predictor, probes: dict, *, threshold: float = 0.1,
                        positive_label: str | None = None) -> dict:
    """Per template: mean P(positive) (or value) per group, the largest gap, whether any name flips the label."""
    groups, templates = probes["groups"], probes["templates"]
    texts = [t.replace("{name}", name) for t in templates for names in groups.values() for name in names]
    predictions = predict(predictor, texts)
    classification = predictor.kind == "classification"
    if classification:
        positive = positive_label_of(predictor.label_names, positive_label)
        scores = predictions.probs[:, list(predictor.label_names).index(positive)]
        labels = predictions.labels
    else:
        scores, labels = predictions.values, None
    rows, index = [], 0
    for template in templates:
        means, template_labels = {}, set()
        for group, names in groups.items():
            means[group] = float(np.mean(scores[index : index + len(names)]))
            if labels is not None:
                template_labels.update(labels[index : index + len(names)])
            index += len(names)
        gap = max(means.values()) - min(means.values())
        rows.append({"template": template, "group_means": means, "gap": gap, "label_changes": len(template_labels) > 1})
    max_gap = max(r["gap"] for r in rows)
    return {
        "source": probes["source"], "groups": {g: len(n) for g, n in groups.items()},
        "measure": f"P({positive})" if classification else "predicted value",
        "templates": rows, "max_gap": max_gap, "mean_gap": float(np.mean([r["gap"] for r in rows])),
        "share_label_changed": float(np.mean([r["label_changes"] for r in rows])) if classification else None,
        "threshold": threshold, "verdict": "pass" if max_gap <= threshold else "fail",
    }


def bias_report(predictor: Predictor, task: Task, config: BiasConfig = BiasConfig()) -> dict:
    """Slice metrics on the test split and counterfactual probes, for one predictor."""
    groups = task_slices(task, config.slice_field)
    probes = load_probes(config.probe)
    predictions = predict(predictor, [e.text for e in task.test])
    return {
        "task": task.name, "rung": predictor.rung, "fingerprint": predictor.fingerprint,
        "slices": slice_metrics(task, predictions, groups, config.positive_label),
        "slice_field": config.slice_field or task.slice_field or "word length",
        "counterfactual": counterfactual_gaps(predictor, probes, threshold=config.threshold,
                                              positive_label=config.positive_label),
    }


def check_inputs(task: Task, config: BiasConfig) -> None:
    """Raises InputError for a slice field the test split lacks or an unusable probe file (before any scoring)."""
    task_slices(task, config.slice_field)
    load_probes(config.probe)


def summary_lines(report: dict) -> list[str]:
    """The bias report for people: quality per slice, the largest gaps, the counterfactual verdict."""
    slices, probes = report["slices"], report["counterfactual"]
    metric_names = list(next(iter(slices["by_group"].values())))
    lines = [f"quality per slice ({report['slice_field']}) on {report['task']}",
             f"{'slice':<16}" + "".join(f"{name:>16}" for name in metric_names)]
    for group, values in slices["by_group"].items():
        lines.append(f"{group:<16}" + "".join(f"{values[name]:>16.3f}" for name in metric_names))
    gaps = ", ".join(f"{name} {value:.3f}" for name, value in slices["largest_gap"].items())
    if "selection_rate_difference" in slices:
        gaps += f"; selection-rate difference {slices['selection_rate_difference']:.3f}"
    lines.append(f"largest gap between slices: {gaps}")
    changed = (f", label changed with the name in {probes['share_label_changed']:.0%} of templates"
               if probes["share_label_changed"] is not None else "")
    lines.append(f"counterfactual probes ({len(probes['templates'])} templates x {sum(probes['groups'].values())} "
                 f"names in {len(probes['groups'])} groups): largest gap in {probes['measure']} "
                 f"{probes['max_gap']:.3f}, mean {probes['mean_gap']:.3f}{changed}; verdict at threshold "
                 f"{probes['threshold']}: {probes['verdict'].upper()}")
    return lines

