"""Evaluation: quality on a task's test split, throughput and latency, and the parameter facts of a predictor."""

from __future__ import annotations

import resource
import time
from typing import Callable

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error

from tunelab.predictor import Predictions, Predictor, predict
from tunelab.tasks import Task

CALIBRATION_BINS = 10
# The one figure a rung is judged by (targets, "cheapest rung", quality ratios). Spearman for regression: like
# accuracy, higher is better and it does not depend on the target's scale.
QUALITY_METRIC = {"classification": "accuracy", "regression": "spearman"}


def quality_metric(kind: str) -> str:
    """The name of the figure that decides quality for a task of this kind."""
    return QUALITY_METRIC[kind]


def headline_quality(metrics: dict) -> float:
    """The deciding figure of an evaluate() result (accuracy, or Spearman for regression)."""
    return metrics["accuracy"] if "accuracy" in metrics else metrics["spearman"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def quality(task: Task, predictions: Predictions) -> dict:
    """accuracy, macro_f1 and ece (classification), or mae, rmse and spearman (regression)."""
    gold = [e.label for e in task.test]
    if task.is_classification:
        predicted = predictions.labels
        correct = np.array([g == p for g, p in zip(gold, predicted)], dtype=float)
        return {
            "accuracy": float(accuracy_score(gold, predicted)),
            "macro_f1": float(f1_score(gold, predicted, labels=list(task.labels), average="macro", zero_division=0)),
            "ece": expected_calibration_error(predictions.probs.max(axis=1), correct),
        }
    values, gold = predictions.values, np.array(gold, dtype=float)
    return {
        "mae": float(mean_absolute_error(gold, values)),
        "rmse": float(np.sqrt(np.mean((gold - values) ** 2))),
        "spearman": float(spearmanr(gold, values).statistic) if np.ptp(values) > 0 else 0.0,
    }


def evaluate(predictor: Predictor, task: Task, *, batch_size: int = 32,
             on_progress: Callable[[int], None] | None = None) -> dict:
    """Score `predictor` on the test split: quality, examples_per_s, latency and parameter counts."""
    texts = [e.text for e in task.test]
    start = time.perf_counter()
    predictions = predict(predictor, texts, batch_size=batch_size, on_progress=on_progress)
    seconds = time.perf_counter() - start
    return {
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


def truncation(predictor: Predictor, texts: list[str]) -> dict:
    """How many of `texts` the predictor cuts to fit, and to how many tokens (n_truncated, max_length)."""
    count = getattr(predictor, "count_truncated", None)
    return {"n_truncated": count(texts) if count else 0, "max_length": getattr(predictor, "max_length", None)}
