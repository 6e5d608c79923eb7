"""Responsible use: quality per data slice (fairlearn's MetricFrame) and counterfactual name probes.

A counterfactual probe fills template sentences with names from two or more groups (the Equity Evaluation Corpus
design, Kiritchenko and Mohammad 2018) and checks that the prediction does not move with the name.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
from fairlearn.metrics import MetricFrame, selection_rate
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error

from tunelab.config import BiasConfig
from tunelab.errors import ConfigError, InputError
from tunelab.measure import multilabel
from tunelab.measure.evaluate import gold_and_outputs
from tunelab.measure.intervals import interval, stratified_interval
from tunelab.predictor import Predictions, Predictor, predict
from tunelab.tasks import Task
from tunelab.tasks.fields import probe_record

NAMES_FILE = Path(__file__).parents[1] / "data" / "names.json"


def positive_label_of(labels: tuple[str, ...], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in labels:
            raise ConfigError(f"--positive-label {wanted!r} is not one of the task's labels {list(labels)}")
        return wanted
    return "positive" if "positive" in labels else labels[-1]


def slice_metrics(task: Task, predictions: Predictions, groups: list[str], positive_label: str | None = None) -> dict:
    """Quality per slice of the test split, the largest gap between slices, and the selection-rate difference."""
    gold = [e.label for e in task.test]
    if task.is_multilabel:
        return _multilabel_slice_metrics(task, predictions, groups, positive_label)
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
    result = {"by_group": by_group, "largest_gap": gaps,
              "gap_interval": _slice_gap_interval(task, predictions, groups)}
    if task.is_classification:
        result["selection_rate_difference"] = gaps.pop("selection_rate")
        result["positive_label"] = positive
    return result


def _multilabel_slice_metrics(task: Task, predictions: Predictions, groups: list[str], positive_label) -> dict:
    """slice_metrics for several labels an example: micro/macro F1 and subset accuracy per slice, the largest gap,
    its interval (micro F1), and the difference in how often the positive label is given."""
    gold, given = gold_and_outputs(task, predictions)
    positive = positive_label_of(task.labels, positive_label)
    column = list(task.labels).index(positive)
    metrics = {**multilabel.METRICS, "selection_rate": lambda _, chosen: float(np.mean(chosen[:, column]))}
    frame = MetricFrame(metrics=metrics, y_true=gold, y_pred=given, sensitive_features=np.asarray(groups))
    by_group = {str(group): {name: float(value) for name, value in row.items()}
                for group, row in frame.by_group.iterrows()}
    for group, size in zip(*np.unique(np.asarray(groups), return_counts=True)):
        by_group[str(group)]["n"] = int(size)
    gaps = {name: float(value) for name, value in frame.difference().items()}
    group_of = np.unique(np.asarray(groups), return_inverse=True)[1]

    def largest_gap(idx):
        values = [multilabel.micro_f1(gold[idx][group_of[idx] == g], given[idx][group_of[idx] == g])
                  for g in np.unique(group_of[idx])]
        return float(max(values) - min(values))

    return {"by_group": by_group, "largest_gap": gaps, "selection_rate_difference": gaps.pop("selection_rate"),
            "positive_label": positive,
            "gap_interval": {"metric": "micro_f1", "interval": interval(largest_gap, len(gold))}}


def _slice_gap_interval(task: Task, predictions: Predictions, groups: list[str]) -> dict:
    """The interval of the largest gap between slices in accuracy (or MAE), on resamples of the test split."""
    gold, predicted = gold_and_outputs(task, predictions)
    per_example = (gold == predicted).astype(float) if task.is_classification else np.abs(gold - predicted)
    group_of = np.unique(np.asarray(groups), return_inverse=True)[1]

    def largest_gap(idx):
        sums = np.bincount(group_of[idx], weights=per_example[idx], minlength=group_of.max() + 1)
        counts = np.bincount(group_of[idx], minlength=group_of.max() + 1)
        means = sums[counts > 0] / counts[counts > 0]
        return float(means.max() - means.min())

    return {"metric": "accuracy" if task.is_classification else "mae",
            "interval": interval(largest_gap, len(per_example))}


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


def probe_texts(probes: dict, text_fields: tuple[str, ...] = ()) -> list[str]:
    """Every template sentence with every name, template by template and group by group (records of the task's
    fields when it has several)."""
    texts = [t.replace("{name}", name) for t in probes["templates"] for names in probes["groups"].values()
             for name in names]
    return [probe_record(text, text_fields) for text in texts] if text_fields else texts


UNJUDGEABLE_WIDTH = 0.3  # an interval of the gap wider than this cannot back a verdict: the report says why


def counterfactual_gaps(predictor: Predictor, probes: dict, *, threshold: float = 0.1,
                        positive_label: str | None = None, text_fields: tuple[str, ...] = ()) -> dict:
    """Per template: mean P(positive) (or value) per group, the largest gap, whether any name flips the label; the
    verdict's statistic, the mean over templates of the mean absolute difference between every two groups' means,
    with its interval (templates resampled, and names within each group); the name pairs that differ most.

    The statistic averages over templates instead of taking the largest gap: a maximum over a few noisy means is
    unstable (its interval spanned almost [0, 1] on the shipped tasks), an average over 18 templates is not. The
    largest gap is still reported. The verdict is `pass` when the whole interval lies at or under `threshold`,
    `fail` when it lies above it, and `unclear` when it straddles it. With `text_fields`, each sentence is read as
    a record holding it in every field (probe_record).
    """
    groups, templates = probes["groups"], probes["templates"]
    texts = probe_texts(probes, text_fields)
    predictions = predict(predictor, texts)
    classification = predictor.kind != "regression"  # several labels: P(positive) is that label's own score
    if classification:
        positive = positive_label_of(predictor.label_names, positive_label)
        scores = predictions.probs[:, list(predictor.label_names).index(positive)]
        labels = predictions.label_sets if predictor.kind == "multilabel" else predictions.labels
    else:
        scores, labels = predictions.values, [None] * len(texts)
    group_names = list(groups)
    # table[template][group] -> (that group's names' scores, their labels)
    table, index = [], 0
    for _ in templates:
        row = []
        for group in group_names:
            row.append((scores[index : index + len(groups[group])], labels[index : index + len(groups[group])]))
            index += len(groups[group])
        table.append(row)
    rows = []
    for template, row in zip(templates, table):
        means = {group: float(np.mean(values)) for group, (values, _) in zip(group_names, row)}
        changed = classification and len({label for _, names in row for label in names}) > 1
        rows.append({"template": template, "group_means": means, "gap": max(means.values()) - min(means.values()),
                     "label_changes": changed})
    matrix = [np.stack([values for values, _ in [row[g] for row in table]]) for g in range(len(group_names))]

    def mean_pair_gap(template_picks, *name_picks):
        """Mean over the picked templates of the mean |difference| of every two groups' mean scores."""
        means = np.stack([m[template_picks][:, picks].mean(axis=1) for m, picks in zip(matrix, name_picks)])
        pairs = [abs(means[a] - means[b]) for a in range(len(means)) for b in range(a + 1, len(means))]
        return float(np.mean(pairs))

    everything = [np.arange(len(templates)), *(np.arange(len(groups[g])) for g in group_names)]
    gap = mean_pair_gap(*everything)
    bounds = stratified_interval(mean_pair_gap, [len(templates), *(len(groups[g]) for g in group_names)])
    if bounds is None:
        verdict = "pass" if gap <= threshold else "fail"
    else:
        verdict = "pass" if bounds[1] <= threshold else "fail" if bounds[0] > threshold else "unclear"
    return {
        "source": probes["source"], "groups": {g: len(n) for g, n in groups.items()},
        "measure": f"P({positive})" if classification else "predicted value",
        "statistic": "mean over templates of the mean absolute difference between two groups' mean "
                     + (f"P({positive})" if classification else "value"),
        "templates": rows, "gap": gap, "gap_interval": bounds,
        "max_gap": max(r["gap"] for r in rows), "mean_gap": float(np.mean([r["gap"] for r in rows])),
        "share_label_changed": float(np.mean([r["label_changes"] for r in rows])) if classification else None,
        "threshold": threshold, "verdict": verdict,
        "unjudgeable": verdict == "unclear" and bounds is not None and bounds[1] - bounds[0] > UNJUDGEABLE_WIDTH,
        "largest_flips": _largest_flips(templates, table, group_names, groups),
    }


FLIPS_SHOWN = 3


def _largest_flips(templates, table, group_names, groups) -> list[dict]:
    """The name pairs (from two different groups, same template) whose predictions differ most."""
    flips = []
    for template, row in zip(templates, table):
        best = None
        for high_group, (high_values, high_labels) in zip(group_names, row):
            for low_group, (low_values, low_labels) in zip(group_names, row):
                if high_group == low_group:
                    continue
                i, j = int(np.argmax(high_values)), int(np.argmin(low_values))
                gap = float(high_values[i] - low_values[j])
                if best is None or gap > best["difference"]:
                    best = {"template": template, "difference": gap,
                            "names": [groups[high_group][i], groups[low_group][j]], "groups": [high_group, low_group],
                            "scores": [float(high_values[i]), float(low_values[j])],
                            "labels": [high_labels[i], low_labels[j]]}
        flips.append(best)
    return sorted(flips, key=lambda flip: -flip["difference"])[:FLIPS_SHOWN]


def bias_report(predictor: Predictor, task: Task, config: BiasConfig = BiasConfig(), *,
                predictions: Predictions | None = None) -> dict:
    """Slice metrics on the test split and counterfactual probes, for one predictor (`predictions`: its test
    split's predictions when the caller already has them)."""
    groups = task_slices(task, config.slice_field)
    probes = load_probes(config.probe)
    if predictions is None:
        predictions = predict(predictor, [e.text for e in task.test])
    return {
        "task": task.name, "rung": predictor.rung, "fingerprint": predictor.fingerprint,
        "slices": slice_metrics(task, predictions, groups, config.positive_label),
        "slice_field": config.slice_field or task.slice_field or "word length",
        "counterfactual": {**counterfactual_gaps(predictor, probes, threshold=config.threshold,
                                                 positive_label=config.positive_label,
                                                 text_fields=task.text_fields),
                           "form_note": form_note(task, probes)},
    }


FORM_RATIO = 3  # probe sentences this many times longer (or shorter) than the training texts are another form


def form_note(task: Task, probes: dict) -> str | None:
    """What the report says next to a verdict when the probe texts differ in form from what the rung learnt on
    (sentences against single words, say): a rung trained on words is then judged on text it never saw."""
    def median_words(texts) -> float:
        return float(np.median([len(t.split()) for t in texts])) if texts else 0.0

    trained = median_words([e.text for e in task.train])
    probed = median_words([t.replace("{name}", "Name") for t in probes["templates"]])
    if trained and not 1 / FORM_RATIO <= probed / trained <= FORM_RATIO:
        return (f"the probe's sentences have {probed:.0f} words (median), the task's training texts {trained:.0f}: "
                "the rung is judged on a form of text unlike the task's")
    return None


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
                 f"names in {len(probes['groups'])} groups): {probes['statistic']} {probes['gap']:.3f}"
                 + (" [{:.3f}, {:.3f}]".format(*probes["gap_interval"]) if probes["gap_interval"] else "")
                 + f", largest single-template gap {probes['max_gap']:.3f}{changed}; verdict at threshold "
                 f"{probes['threshold']}: {probes['verdict'].upper()}")
    if probes.get("form_note"):
        lines.append(f"note: {probes['form_note']}")
    return lines

