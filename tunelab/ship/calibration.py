"""Temperature scaling: one number, fitted on held-out labelled examples, that makes a classifier's confidence
mean what it says (Guo et al. 2017). Dividing every log-probability by the same T > 0 keeps each prediction's order
of labels, so the predicted label never changes; only the probabilities do.

A calibrated predictor is a small folder: tunelab.json (the temperature and the figures it was fitted on) and the
calibrated predictor inside it (`inner/`), which loads and checks itself as usual.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from tunelab.errors import ConfigError
from tunelab.measure.evaluate import expected_calibration_error, reliability
from tunelab.measure.intervals import interval
from tunelab.predictor import (
    Predictions,
    Predictor,
    load_predictor,
    predict,
    save_predictor,
    write_artifact_json,
)
from tunelab.tasks import Task

LOWEST, HIGHEST = 0.05, 20.0  # the temperatures searched: sharper by 20x to softer by 20x


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), row by row."""
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, gold: np.ndarray) -> float:
    """The T that minimises the negative log-likelihood of the gold labels (indices) under softmax(log p / T)."""
    def nll(log_t: float) -> float:
        scaled = with_temperature(probs, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(scaled[np.arange(len(gold)), gold], 1e-12, 1.0))))

    found = minimize_scalar(nll, bounds=(np.log(LOWEST), np.log(HIGHEST)), method="bounded")
    return float(np.exp(found.x))


def ece_with_interval(probs: np.ndarray, gold: np.ndarray) -> dict:
    """Expected calibration error and its bootstrap interval (the resamples every figure uses)."""
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == gold).astype(float)
    value = expected_calibration_error(confidence, correct)
    bounds = interval(lambda idx: expected_calibration_error(confidence[idx], correct[idx]), len(gold))
    return {"ece": value, "interval": bounds}


class CalibratedPredictor:
    """Another classifier's probabilities, tempered by one fitted temperature."""

    rung = "calibrated"

    def __init__(self, inner: Predictor, temperature: float, meta: dict):
        if inner.kind != "classification":
            raise ConfigError("temperature scaling calibrates classifiers; this predictor is a regression")
        self.inner, self.temperature, self.meta = inner, float(temperature), meta
        self.kind, self.label_names = inner.kind, tuple(inner.label_names)

    @property
    def params_total(self) -> int:
        return self.inner.params_total

    @property
    def params_trainable(self) -> int:
        return self.inner.params_trainable

    @property
    def fingerprint(self) -> str:
        decided_by = json.dumps([self.inner.fingerprint, round(self.temperature, 8)])
        return hashlib.sha256(decided_by.encode()).hexdigest()[:16]

    def describe_model(self) -> dict:
        facts = self.inner.describe_model() if hasattr(self.inner, "describe_model") else {}
        return {**facts, "calibration": f"temperature {self.temperature:.3f}"}

    def __getattr__(self, name):  # length facts (max_length, count_truncated, count_windows) are the inner one's
        if name in ("max_length", "count_truncated", "count_windows", "count_tokens"):
            return getattr(self.inner, name)
        raise AttributeError(name)

    def predict_batch(self, texts: list[str]) -> Predictions:
        inner = self.inner.predict_batch(texts)
        return Predictions("classification", inner.label_names, probs=with_temperature(inner.probs, self.temperature))

    def save(self, directory: Path) -> None:
        save_predictor(self.inner, directory / "inner")
        write_artifact_json(directory, {"rung": self.rung, "kind": self.kind, "labels": list(self.label_names),
                                        "temperature": self.temperature, **self.meta,
                                        "params_total": self.params_total, "params_trainable": self.params_trainable,
                                        "fingerprint": self.fingerprint})

    @classmethod
    def load(cls, directory: Path, payload: dict) -> CalibratedPredictor:
        meta = {key: payload[key] for key in ("calibration",) if key in payload}
        return cls(load_predictor(directory / "inner"), payload["temperature"], meta)


def gold_indices(task: Task, examples, label_names: tuple[str, ...]) -> np.ndarray:
    return np.array([label_names.index(e.label) for e in examples])


def calibrate(predictor: Predictor, validation: list, task: Task, *, source: str) -> CalibratedPredictor:
    """Fit the temperature on `validation` (labelled examples the predictor did not train on; `source` says where
    they come from) and report ECE before and after on them, with intervals.

    Raises:
        ConfigError: a regression predictor, or fewer than 10 validation examples.
    """
    if predictor.kind != "classification":
        raise ConfigError("temperature scaling calibrates classifiers; this predictor is a regression")
    if len(validation) < 10:
        raise ConfigError(f"temperature scaling needs at least 10 held-out examples, got {len(validation)}")
    probs = predict(predictor, [e.text for e in validation]).probs
    gold = gold_indices(task, validation, tuple(predictor.label_names))
    temperature = fit_temperature(probs, gold)
    before, after = ece_with_interval(probs, gold), ece_with_interval(with_temperature(probs, temperature), gold)
    return CalibratedPredictor(predictor, temperature, {"calibration": {
        "method": "temperature", "fitted_on": source, "n_validation": len(validation), "temperature": temperature,
        "validation_ece_before": before, "validation_ece_after": after}})


def held_out_examples(task: Task, validation_path: str | Path | None, members: list[str | Path]) -> tuple[list, str]:
    """Labelled examples to fit on and where they come from: the `validation_path` file when given, else the
    held-out validation split of the first fine-tuned member (`tunelab tune` never trained on it).

    Raises:
        ConfigError: neither a file nor a fine-tuned member to take a validation split from.
    """
    if validation_path is not None:
        from tunelab.tasks.files import read_examples

        return read_examples(validation_path, kind=task.kind), f"{validation_path}"
    from tunelab.predictor import read_artifact_json
    from tunelab.tasks import split_examples

    for member in members:
        payload = read_artifact_json(member)
        if payload["rung"] == "tune":
            config = payload["config"]
            _, validation = split_examples(list(task.train), task.kind, config["val_fraction"], config["seed"])
            return validation, f"the validation split {member} held out of training"
    raise ConfigError("no held-out examples: give --validation FILE (labelled examples none of the models trained "
                      "on), or a fine-tuned (tunelab tune) predictor, whose own validation split is used")


def calibration_report(calibrated: CalibratedPredictor, task: Task, out_dir: str | Path, *,
                       overwrite: bool = False) -> dict:
    """Test-split ECE before and after (with intervals; the predicted labels are the same), then the calibrated
    predictor saved to `out_dir`. Returns the figures and their lines for people."""
    if Path(out_dir).exists() and not overwrite:
        raise ConfigError(f"{out_dir} exists; pass --overwrite to replace it")
    probs = predict(calibrated.inner, [e.text for e in task.test]).probs
    gold = gold_indices(task, task.test, calibrated.label_names)
    tempered = with_temperature(probs, calibrated.temperature)
    before, after = ece_with_interval(probs, gold), ece_with_interval(tempered, gold)
    calibrated.meta["calibration"].update(test_ece_before=before, test_ece_after=after,
                                          test_reliability_after=reliability(tempered.max(axis=1), (
                                              tempered.argmax(axis=1) == gold).astype(float)))
    save_predictor(calibrated, out_dir, task.text_fields)
    fit = calibrated.meta["calibration"]
    lines = [f"temperature {calibrated.temperature:.3f}, fitted on {fit['fitted_on']} ({fit['n_validation']} examples)",
             f"ECE on the test split ({len(gold)} examples): {before['ece']:.3f} {_bounds(before)} before, "
             f"{after['ece']:.3f} {_bounds(after)} after; accuracy unchanged "
             f"({float(np.mean(probs.argmax(axis=1) == gold)):.3f}: a temperature never changes the predicted label)",
             _ece_change(probs, tempered, gold), f"saved to {out_dir}"]
    return {**fit, "temperature": calibrated.temperature, "fingerprint": calibrated.fingerprint, "lines": lines}


def _ece_change(probs: np.ndarray, tempered: np.ndarray, gold: np.ndarray) -> str:
    """The change in test ECE with its paired interval (the same resamples for both), and what it says."""
    def ece(p, idx):
        return expected_calibration_error(p[idx].max(axis=1), (p[idx].argmax(axis=1) == gold[idx]).astype(float))

    everything = np.arange(len(gold))
    change = ece(tempered, everything) - ece(probs, everything)
    bounds = interval(lambda idx: ece(tempered, idx) - ece(probs, idx), len(gold))
    said = f"ECE after - before: {change:+.3f}"
    if bounds is None:
        return said
    said += f" [{bounds[0]:+.3f}, {bounds[1]:+.3f}], paired"
    if bounds[1] < 0:
        return said + ": calibration lowered it"
    if bounds[0] > 0:
        return said + ": calibration raised it on this test split; keep the uncalibrated predictor"
    return said + ": no clear change on this test split"


def _bounds(figure: dict) -> str:
    low, high = figure["interval"] or (figure["ece"], figure["ece"])
    return f"[{low:.3f}, {high:.3f}]"
