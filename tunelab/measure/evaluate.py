"""Evaluation: quality on a task's test split, throughput and latency, and the parameter facts of a predictor."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import mean_absolute_error

from tunelab.measure import multilabel
from tunelab.measure.intervals import METHOD, metric_intervals
from tunelab.predictor import Predictions, Predictor, predict
from tunelab.tasks import Task

CALIBRATION_BINS = 10
# The one figure a rung is judged by (targets, "cheapest rung", quality ratios). Spearman for regression: like
# accuracy, higher is better and it does not depend on the target's scale.
# Micro F1 for several labels an example: every (example, label) decision counts once, so frequent labels weigh
# more, as accuracy weighs frequent classes.
QUALITY_METRIC = {"classification": "accuracy", "regression": "spearman", "multilabel": "micro_f1"}


def quality_metric(kind: str) -> str:
    """The name of the figure that decides quality for a task of this kind."""
    return QUALITY_METRIC[kind]


def headline_quality(metrics: dict) -> float:
    """The deciding figure of an evaluate() result (accuracy; micro F1 for several labels; Spearman for
    regression)."""
    for name in ("accuracy", "micro_f1"):
        if name in metrics:
            return metrics[name]
    return metrics["spearman"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start, or since `reset_peak_rss` (Linux's VmHWM); ru_maxrss
    (KiB on Linux) where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Start a new peak-memory measurement (Linux: writing 5 to /proc/self/clear_refs resets VmHWM to the resident
    memory now), so that a step's peak is its own, not the process's so far. False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE of the top label (Guo et al. 2017, eq. 3). Written here: scikit-learn has only a binary reliability curve."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """The reliability diagram's bins (the ECE's): for each confidence band, how many predictions, their mean
    confidence and the share that was right (a calibrated model's two agree)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "count": int((which == b).sum()),
             "confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean())}
            for b in range(bins) if (which == b).any()]


def _spearman(gold: np.ndarray, values: np.ndarray) -> float:
    return float(spearmanr(gold, values).statistic) if np.ptp(values) > 0 and np.ptp(gold) > 0 else 0.0


def macro_f1(gold: np.ndarray, predicted: np.ndarray, n_labels: int) -> float:
    """Macro-averaged F1 over label codes 0..n_labels-1 (a label never seen nor predicted scores 0, as
    scikit-learn's f1_score with zero_division=0 does). Written here because the bootstrap calls it a thousand times
    and f1_score's input checks cost ~4 ms a call; tests check it equals f1_score."""
    def count(codes):  # code n_labels: a predicted label outside the task's, which counts against precision only
        return np.bincount(codes, minlength=n_labels + 1)[:n_labels]

    true_positives = count(gold[gold == predicted])
    both = count(gold) + count(predicted)
    return float(np.mean(np.divide(2 * true_positives, both, out=np.zeros(n_labels), where=both > 0)))


def metric_functions(task: Task) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    """The quality figures of a task's kind, each `fn(gold, predicted)` on arrays of label codes or values."""
    if task.is_multilabel:
        return dict(multilabel.METRICS)
    if task.is_classification:
        n_labels = len(task.labels)
        return {"accuracy": lambda gold, predicted: float(np.mean(gold == predicted)),
                "macro_f1": lambda gold, predicted: macro_f1(gold, predicted, n_labels)}
    return {"mae": lambda gold, values: float(mean_absolute_error(gold, values)),
            "rmse": lambda gold, values: float(np.sqrt(np.mean((gold - values) ** 2))),
            "spearman": _spearman}


def gold_and_outputs(task: Task, predictions: Predictions, examples=None) -> tuple[np.ndarray, np.ndarray]:
    """The gold and predicted label codes (indices into task.labels; len(task.labels) for a label outside them), or
    values, of `examples` (default: the test split), as arrays the metric functions take; for several labels an
    example, the (n, n_labels) booleans held and given."""
    examples = task.test if examples is None else examples
    if task.is_multilabel:
        order = [predictions.label_names.index(label) for label in task.labels]
        return multilabel.label_matrix(task, examples), predictions.chosen[:, order]
    if task.is_classification:
        code = {label: i for i, label in enumerate(task.labels)}
        return (np.array([code[e.label] for e in examples]),
                np.array([code.get(label, len(code)) for label in predictions.labels]))
    return np.array([e.label for e in examples], dtype=float), np.asarray(predictions.values, dtype=float)


def deciding_metric(task: Task) -> Callable[[np.ndarray, np.ndarray], float]:
    """The figure that decides quality (quality_metric) as `fn(gold, outputs)`: what prompt search, calibration
    checks, targets and paired comparisons all use, so that every choice is made on one figure."""
    return metric_functions(task)[quality_metric(task.kind)]


def quality(task: Task, predictions: Predictions) -> dict:
    """accuracy, macro_f1 and ece (classification), micro_f1, macro_f1, subset_accuracy and the mean per-label ece
    (multilabel), or mae, rmse and spearman (regression), and an interval for
    each figure but ece (`intervals`, by intervals.METHOD)."""
    gold, predicted = gold_and_outputs(task, predictions)
    functions = metric_functions(task)
    figures = {name: fn(gold, predicted) for name, fn in functions.items()}
    if task.is_multilabel:  # each label's scores against whether the examples hold it, in the scores' order
        held = multilabel.label_set_matrix(predictions.label_names, [e.label for e in task.test])
        figures["ece"] = multilabel.label_ece(predictions.probs, held)
    if task.is_classification:
        figures["ece"] = expected_calibration_error(predictions.probs.max(axis=1), (gold == predicted).astype(float))
        figures["reliability"] = reliability(predictions.probs.max(axis=1), (gold == predicted).astype(float))
    return {**figures, "intervals": metric_intervals(functions, gold, predicted), "interval_method": METHOD}


def evaluate_predictions(predictor: Predictor, task: Task, *, batch_size: int = 32,
                         on_progress: Callable[[int], None] | None = None) -> tuple[dict, Predictions]:
    """evaluate(), and the test split's predictions it measured (for paired comparisons and the bias report)."""
    texts = [e.text for e in task.test]
    start = time.perf_counter()
    predictions = predict(predictor, texts, batch_size=batch_size, on_progress=on_progress)
    seconds = time.perf_counter() - start
    metrics = {
        "task": task.name,
        "rung": predictor.rung,
        "n_test": len(texts),
        **quality(task, predictions),
        "params_total": predictor.params_total,
        "params_trainable": predictor.params_trainable,
        "examples_per_s": len(texts) / seconds,
        "latency_ms_per_example": 1000.0 * seconds / len(texts),
        **truncation(predictor, texts),
        "fingerprint": predictor.fingerprint,
    }
    return metrics, predictions


def evaluate(predictor: Predictor, task: Task, *, batch_size: int = 32,
             on_progress: Callable[[int], None] | None = None) -> dict:
    """Score `predictor` on the test split: quality (with intervals), examples_per_s, latency, parameter counts."""
    return evaluate_predictions(predictor, task, batch_size=batch_size, on_progress=on_progress)[0]


def truncation(predictor: Predictor, texts: list[str]) -> dict:
    """How many of `texts` the predictor cuts to fit, and to how many tokens (n_truncated, max_length)."""
    count = getattr(predictor, "count_truncated", None)
    facts = {"n_truncated": count(texts) if count else 0, "max_length": getattr(predictor, "max_length", None)}
    windows = getattr(predictor, "count_windows", None)  # predictors that read long texts whole, in windows
    if windows and texts:
        per_text = windows(texts)
        facts.update(windows_per_text=float(np.mean(per_text)), most_windows=int(max(per_text)))
    return facts
