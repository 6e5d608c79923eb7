import numpy as np
import pytest

from tunelab.measure.evaluate import evaluate, expected_calibration_error, quality
from tunelab.predictor import Predictions, predict
from tunelab.rungs.prompting import PromptConfig, few_shot


class CountingPredictor:
    """A predictor that records what it was asked, to test the shared predict() plumbing."""

    rung, kind, label_names = "test", "classification", ("a", "b")
    params_total, params_trainable, fingerprint = 7, 0, "x"

    def __init__(self):
        self.batches = []

    def predict_batch(self, texts):
        self.batches.append(list(texts))
        probs = np.array([[1.0, 0.0] if t.startswith("a") else [0.0, 1.0] for t in texts])
        return Predictions("classification", self.label_names, probs=probs)


def test_predict_scores_each_distinct_text_once_and_keeps_order():
    predictor = CountingPredictor()
    progress = []
    texts = ["a1", "bbb", "a1", "a22", "bbb", "b"]
    result = predict(predictor, texts, batch_size=2, on_progress=progress.append)
    assert result.labels == ["a", "b", "a", "a", "b", "b"]
    assert sorted(sum(predictor.batches, [])) == sorted(set(texts))
    assert sum(progress) == len(texts)
    assert all(len(b) <= 2 for b in predictor.batches)


def test_classification_metrics(tiny_task):
    labels = [e.label for e in tiny_task.test]
    perfect = np.array([[0.9, 0.1] if label == "negative" else [0.1, 0.9] for label in labels])
    metrics = quality(tiny_task, Predictions("classification", tiny_task.labels, probs=perfect))
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0
    assert metrics["ece"] == pytest.approx(0.1)
    flipped = quality(tiny_task, Predictions("classification", tiny_task.labels, probs=perfect[:, ::-1]))
    assert flipped["accuracy"] == 0.0


def test_regression_metrics(tiny_regression_task):
    gold = np.array([e.label for e in tiny_regression_task.test])
    metrics = quality(tiny_regression_task, Predictions("regression", values=gold + 0.5))
    assert metrics["mae"] == pytest.approx(0.5) and metrics["spearman"] == pytest.approx(1.0)


def test_expected_calibration_error_is_zero_when_confidence_matches_accuracy():
    confidence = np.array([0.75] * 4)
    assert expected_calibration_error(confidence, np.array([1, 1, 1, 0.0])) == pytest.approx(0.0)
    assert expected_calibration_error(confidence, np.array([0, 0, 0, 0.0])) == pytest.approx(0.75)


def test_evaluate_reports_quality_speed_and_parameters(tiny_model, tiny_task):
    result = evaluate(few_shot(tiny_model, tiny_task, PromptConfig(shots=2)), tiny_task)
    assert result["n_test"] == len(tiny_task.test) and result["rung"] == "prompt"
    assert 0.0 <= result["accuracy"] <= 1.0 and result["examples_per_s"] > 0
    assert result["params_total"] == tiny_model.params_total and result["params_trainable"] == 0
