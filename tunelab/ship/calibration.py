"""Temperature scaling: one number, fitted on held-out labelled examples, that makes a classifier's confidence
mean what it says (Guo et al. 2017). Dividing every log-probability by the same T > 0 keeps each prediction's order
of labels, so the predicted label never changes; only the probabilities do.

Several labels an example: each label's score is calibrated on its own (Platt scaling: a logistic regression on the
score's log-odds, fitted per label), a rising map whose image of the label's threshold becomes its new threshold,
so the labels given never change either.

A calibrated predictor is a small folder: tunelab.json (the temperature and the figures it was fitted on) and the
calibrated predictor inside it (`inner/`), which loads and checks itself as usual.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression

from tunelab.errors import ConfigError
from tunelab.measure.evaluate import expected_calibration_error, reliability
from tunelab.measure.intervals import interval
from tunelab.measure.multilabel import label_ece, label_set_matrix
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


def _log_odds(scores: np.ndarray) -> np.ndarray:
    return logit(np.clip(scores, 1e-6, 1 - 1e-6))


def fit_per_label(scores: np.ndarray, gold: np.ndarray) -> dict:
    """Platt scaling per label: slope and intercept of a logistic regression of the label on its score's log-odds
    (scikit-learn; a large C, so nearly unregularised). A label whose fit would not rise with the score, or that
    every example holds or none, keeps its scores (slope 1, intercept 0)."""
    slopes, intercepts = np.ones(scores.shape[1]), np.zeros(scores.shape[1])
    for j in range(scores.shape[1]):
        if gold[:, j].all() or not gold[:, j].any():
            continue
        fitted = LogisticRegression(C=1e4, max_iter=1000).fit(_log_odds(scores[:, [j]]), gold[:, j])
        if fitted.coef_[0, 0] > 0:
            slopes[j], intercepts[j] = fitted.coef_[0, 0], fitted.intercept_[0]
    return {"slopes": slopes.tolist(), "intercepts": intercepts.tolist()}


def with_per_label(scores: np.ndarray, per_label: dict) -> np.ndarray:
    """Each label's score through its fitted rising map."""
    return expit(np.asarray(per_label["slopes"]) * _log_odds(scores) + np.asarray(per_label["intercepts"]))


def label_ece_with_interval(scores: np.ndarray, gold: np.ndarray) -> dict:
    """The mean per-label ECE (measure/multilabel.py) and its bootstrap interval."""
    bounds = interval(lambda idx: label_ece(scores[idx], gold[idx]), len(gold))
    return {"ece": label_ece(scores, gold), "interval": bounds}


def ece_with_interval(probs: np.ndarray, gold: np.ndarray) -> dict:
    """Expected calibration error and its bootstrap interval (the resamples every figure uses)."""
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == gold).astype(float)
    value = expected_calibration_error(confidence, correct)
    bounds = interval(lambda idx: expected_calibration_error(confidence[idx], correct[idx]), len(gold))
    return {"ece": value, "interval": bounds}


class CalibratedPredictor:
    """Another classifier's probabilities, tempered by one fitted temperature (several labels: each label's score
    through its own fitted map, `per_label`)."""

    rung = "calibrated"

    def __init__(self, inner: Predictor, temperature: float, meta: dict, per_label: dict | None = None):
        if inner.kind == "regression":
            raise ConfigError("calibration is for predictors of labels; this predictor is a regression")
        self.inner, self.temperature, self.meta, self.per_label = inner, float(temperature), meta, per_label
        self.kind, self.label_names = inner.kind, tuple(inner.label_names)

    @property
    def params_total(self) -> int:
        return self.inner.params_total

    @property
    def params_trainable(self) -> int:
        return self.inner.params_trainable

    @property
    def fingerprint(self) -> str:
        decided_by = json.dumps([self.inner.fingerprint, round(self.temperature, 8)]
                                + ([self.per_label] if self.per_label is not None else []))
        return hashlib.sha256(decided_by.encode()).hexdigest()[:16]

    def describe_model(self) -> dict:
        facts = self.inner.describe_model() if hasattr(self.inner, "describe_model") else {}
        how = "Platt scaling per label" if self.per_label is not None else f"temperature {self.temperature:.3f}"
        return {**facts, "calibration": how}

    def __getattr__(self, name):  # length facts (max_length, count_truncated, count_windows) are the inner one's
        if name in ("max_length", "count_truncated", "count_windows", "count_tokens"):
            return getattr(self.inner, name)
        raise AttributeError(name)

    def predict_batch(self, texts: list[str]) -> Predictions:
        inner = self.inner.predict_batch(texts)
        if self.per_label is not None:
            return Predictions("multilabel", inner.label_names, probs=with_per_label(inner.probs, self.per_label),
                               thresholds=np.asarray(self.per_label["thresholds"]))
        return Predictions("classification", inner.label_names, probs=with_temperature(inner.probs, self.temperature))

    def save(self, directory: Path) -> None:
        save_predictor(self.inner, directory / "inner")
        per_label = {} if self.per_label is None else {"per_label": self.per_label,
                                                        "thresholds": self.per_label["thresholds"]}
        write_artifact_json(directory, {"rung": self.rung, "kind": self.kind, "labels": list(self.label_names),
                                        "temperature": self.temperature, **per_label, **self.meta,
                                        "params_total": self.params_total, "params_trainable": self.params_trainable,
                                        "fingerprint": self.fingerprint})

    @classmethod
    def load(cls, directory: Path, payload: dict) -> CalibratedPredictor:
        meta = {key: payload[key] for key in ("calibration",) if key in payload}
        return cls(load_predictor(directory / "inner"), payload["temperature"], meta, payload.get("per_label"))


def gold_indices(task: Task, examples, label_names: tuple[str, ...]) -> np.ndarray:
    return np.array([label_names.index(e.label) for e in examples])


def calibrate(predictor: Predictor, validation: list, task: Task, *, source: str) -> CalibratedPredictor:
    """Fit the temperature on `validation` (labelled examples the predictor did not train on; `source` says where
    they come from) and report ECE before and after on them, with intervals.

    Raises:
        ConfigError: a regression predictor, or fewer than 10 validation examples.
    """
    if predictor.kind == "regression":
        raise ConfigError("calibration is for predictors of labels; this predictor is a regression")
    if len(validation) < 10:
        raise ConfigError(f"calibration needs at least 10 held-out examples, got {len(validation)}")
    if predictor.kind == "multilabel":
        return _calibrate_per_label(predictor, validation, task, source)
    probs = predict(predictor, [e.text for e in validation]).probs
    gold = gold_indices(task, validation, tuple(predictor.label_names))
    temperature = fit_temperature(probs, gold)
    before, after = ece_with_interval(probs, gold), ece_with_interval(with_temperature(probs, temperature), gold)
    return CalibratedPredictor(predictor, temperature, {"calibration": {
        "method": "temperature", "fitted_on": source, "n_validation": len(validation), "temperature": temperature,
        "validation_ece_before": before, "validation_ece_after": after}})


def _calibrate_per_label(predictor: Predictor, validation: list, task: Task, source: str) -> CalibratedPredictor:
    predictions = predict(predictor, [e.text for e in validation])
    gold = label_set_matrix(predictor.label_names, [e.label for e in validation])
    per_label = fit_per_label(predictions.probs, gold)
    per_label["thresholds"] = with_per_label(predictions.thresholds[None, :], per_label)[0].tolist()
    calibrated = with_per_label(predictions.probs, per_label)
    return CalibratedPredictor(predictor, 1.0, {"calibration": {
        "method": "Platt scaling per label", "fitted_on": source, "n_validation": len(validation),
        "validation_ece_before": label_ece_with_interval(predictions.probs, gold),
        "validation_ece_after": label_ece_with_interval(calibrated, gold)}}, per_label)


def held_out_examples(task: Task, validation_path: str | Path | None, members: list[str | Path]) -> tuple[list, str]:
    """Labelled examples to fit on and where they come from: the `validation_path` file when given, else the
    held-out validation split of the first fine-tuned member (`tunelab tune` never trained on it).

    Raises:
        ConfigError: neither a file nor a fine-tuned member to take a validation split from.
    """
    if validation_path is not None:
        from tunelab.tasks.files import read_examples

        return read_examples(validation_path, kind=task.kind, text_fields=task.text_fields), f"{validation_path}"
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
    if calibrated.per_label is not None:
        return _per_label_report(calibrated, task, out_dir)
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
             _ece_change(lambda p, idx: expected_calibration_error(
                 p[idx].max(axis=1), (p[idx].argmax(axis=1) == gold[idx]).astype(float)), probs, tempered),
             f"saved to {out_dir}"]
    return {**fit, "temperature": calibrated.temperature, "fingerprint": calibrated.fingerprint, "lines": lines}


def _per_label_report(calibrated: CalibratedPredictor, task: Task, out_dir) -> dict:
    predictions = predict(calibrated.inner, [e.text for e in task.test])
    gold = label_set_matrix(calibrated.label_names, [e.label for e in task.test])
    scores, mapped = predictions.probs, with_per_label(predictions.probs, calibrated.per_label)
    before, after = label_ece_with_interval(scores, gold), label_ece_with_interval(mapped, gold)
    calibrated.meta["calibration"].update(test_ece_before=before, test_ece_after=after)
    save_predictor(calibrated, out_dir, task.text_fields)
    fit = calibrated.meta["calibration"]
    lines = [f"Platt scaling per label ({len(calibrated.label_names)} labels), fitted on {fit['fitted_on']} "
             f"({fit['n_validation']} examples)",
             f"mean per-label ECE on the test split ({len(gold)} examples): {before['ece']:.3f} {_bounds(before)} "
             f"before, {after['ece']:.3f} {_bounds(after)} after; the labels given are unchanged (each label's map "
             "rises, and its threshold moves with it)",
             _ece_change(lambda p, idx: label_ece(p[idx], gold[idx]), scores, mapped), f"saved to {out_dir}"]
    return {**fit, "per_label": calibrated.per_label, "fingerprint": calibrated.fingerprint, "lines": lines}


def _ece_change(ece, probs: np.ndarray, tempered: np.ndarray) -> str:
    """The change in test ECE (`ece(scores, indices)`) with its paired interval (the same resamples for both),
    and what it says."""
    everything = np.arange(len(probs))
    change = ece(tempered, everything) - ece(probs, everything)
    bounds = interval(lambda idx: ece(tempered, idx) - ece(probs, idx), len(probs))
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
