"""Several labels per example: the label matrix, the figures (micro/macro F1, subset accuracy, per-label ECE) and
the thresholds that turn each label's score into a decision, chosen on examples the predictor was not fitted on."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve

from tunelab.tasks import Task


def label_set_matrix(labels: tuple[str, ...], label_sets) -> np.ndarray:
    """(n, n_labels) booleans from label sets (lists or tuples of names), e.g. a report's stored test outputs."""
    column = {label: j for j, label in enumerate(labels)}
    matrix = np.zeros((len(label_sets), len(labels)), dtype=bool)
    for i, chosen in enumerate(label_sets):
        matrix[i, [column[label] for label in chosen if label in column]] = True
    return matrix


def label_matrix(task: Task, examples) -> np.ndarray:
    """(n, n_labels) booleans: which of the task's labels each example holds."""
    return label_set_matrix(task.labels, [example.label for example in examples])


def _f1_counts(gold: np.ndarray, predicted: np.ndarray, axis=None):
    true_positives = (gold & predicted).sum(axis=axis)
    return 2 * true_positives, gold.sum(axis=axis) + predicted.sum(axis=axis)


def micro_f1(gold: np.ndarray, predicted: np.ndarray) -> float:
    """F1 over every (example, label) decision pooled; 1.0 when no label is held nor given."""
    twice_hits, both = _f1_counts(gold, predicted)
    return float(twice_hits / both) if both else 1.0


def macro_f1(gold: np.ndarray, predicted: np.ndarray) -> float:
    """The mean of each label's F1 (a label never held nor given scores 0, as scikit-learn's zero_division=0).
    Written on the counts because the bootstrap calls it a thousand times; tests check it equals f1_score."""
    twice_hits, both = _f1_counts(gold, predicted, axis=0)
    return float(np.mean(np.divide(twice_hits, both, out=np.zeros(len(both)), where=both > 0)))


def subset_accuracy(gold: np.ndarray, predicted: np.ndarray) -> float:
    """The share of examples given exactly their labels, no more, no fewer."""
    return float(np.mean(np.all(gold == predicted, axis=1)))


def choose_thresholds(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per label, the score threshold with the best F1 on these examples (scikit-learn's precision-recall curve);
    1.0 for a label none of them holds (it is given only at full confidence)."""
    thresholds = np.ones(scores.shape[1])
    for j in range(scores.shape[1]):
        if not gold[:, j].any():
            continue
        precision, recall, cuts = precision_recall_curve(gold[:, j], scores[:, j])
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                       where=precision + recall > 0)[:-1]  # the curve's last point has no threshold
        thresholds[j] = float(np.clip(cuts[int(np.argmax(f1))], 0.0, 1.0))
    return thresholds


def label_ece(scores: np.ndarray, gold: np.ndarray) -> float:
    """Calibration per label: each label's score read as the probability that the example holds it, its expected
    calibration error, averaged over labels (a score that only ranks, as a prompt's share of the label set does,
    shows here as a large error)."""
    from tunelab.measure.evaluate import expected_calibration_error

    return float(np.mean([expected_calibration_error(scores[:, j], gold[:, j].astype(float))
                          for j in range(scores.shape[1])]))


def centred(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Each label's score moved so that its threshold sits at 0.5 (linearly on each side, order kept): scores of
    two predictors with different thresholds become comparable and can be mixed (a cascade) at threshold 0.5."""
    thresholds = np.clip(np.asarray(thresholds, dtype=float), 1e-12, 1 - 1e-12)
    below = 0.5 * scores / thresholds
    above = 0.5 + 0.5 * (scores - thresholds) / (1 - thresholds)
    return np.clip(np.where(scores < thresholds, below, above), 0.0, 1.0)


def sureness(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n,) how far each example's least certain label lies from its threshold, 0 (on it) to 1 (at 0 or 1): a
    multi-label answer is as sure as its least sure decision."""
    return np.min(np.abs(2 * centred(scores, thresholds) - 1), axis=1)


METRICS = {"micro_f1": micro_f1, "macro_f1": macro_f1, "subset_accuracy": subset_accuracy}
