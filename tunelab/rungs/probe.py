"""The probe rung: what the frozen base model already knows about a text, read by a linear head.

The base causal LM (any that tunelab loads) reads each text once, whole (scoring/hidden.py: overlapping windows,
averaged, never cut); the pooled hidden states of a few layers are cached (scoring/feature_cache.py). A linear model
(standardised features, then logistic or ridge regression, as the baselines use) is fitted on one layer's states. The
layer, the pooling (mean over tokens, last token, or both) and the strength are chosen on a validation split held out
of training, then the head is refitted on the whole training split. No weight of the base model changes: trainable
parameters are the head's; total parameters are the base model's plus the head's.

Saved as a predictor folder: the head's numbers in probe.safetensors, the settings in tunelab.json, the base model
named by spec and fingerprint (never a pickle).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tunelab.config import ProbeConfig
from tunelab.errors import ConfigError
from tunelab.measure.evaluate import deciding_metric, evaluate, gold_and_outputs
from tunelab.models import Model
from tunelab.predictor import (
    Predictions,
    load_base_model,
    predict,
    save_base_reference,
    save_predictor,
    write_artifact_json,
)
from tunelab.measure.multilabel import choose_thresholds, label_matrix
from tunelab.rungs.baseline import LinearPipeline, PerLabelLogistic, check_training_set, linear_from_tensors
from tunelab.scoring.feature_cache import FeatureCache
from tunelab.scoring.hidden import HiddenStates, Reading, candidate_layers
from tunelab.scoring.precision import PARITY_TEXTS, bf16_is_fast, comparable, resolve_precision
from tunelab.scoring.verbalizer import PromptFormat
from tunelab.tasks import Task, split_examples
from tunelab.tasks.fields import default_template

# C of logistic regression on standardised states (ridge uses alpha = 1 / C): hidden sizes of 500-2,000 dimensions
# and a few hundred examples need strong regularisation, so the grid reaches far below scikit-learn's default of 1.
STRENGTHS = (0.001, 0.01, 0.1, 1.0)
POOLED = ("mean", "last", "mean+last")


def prompt_frame(task: Task) -> tuple[str, str, str]:
    """The task's zero-shot prompt around a text: (instruction and the template up to {text}, the template from
    {text} up to {label}, and for several fields the template between them). Read inside it, the last token's
    state is where the model would say the label."""
    fmt = PromptFormat.from_template(task.template, task.instruction)
    head, tail = fmt.frame()
    return fmt.instruction + head, tail, fmt.inner_format if fmt.fields else ""


def pooled(features: np.ndarray, layer_index: int, pooling: str) -> np.ndarray:
    """One layer's pooled states from the (n, n_layers, 2, hidden) array: mean, last token, or both side by side."""
    states = features[:, layer_index]
    if pooling == "mean":
        return states[:, 0]
    if pooling == "last":
        return states[:, 1]
    return states.reshape(len(states), -1)


def _head(kind: str, strength: float) -> Pipeline:
    linear = (LogisticRegression(C=strength, max_iter=2000) if kind == "classification"
              else PerLabelLogistic(C=strength) if kind == "multilabel" else Ridge(alpha=1.0 / strength))
    return Pipeline([("scale", StandardScaler()), ("model", linear)])


class ProbePredictor(LinearPipeline):
    """The frozen base model's pooled states of one layer, then a standardised linear head."""

    rung = "probe"

    def __init__(self, model: Model, head: Pipeline, *, reading: Reading, layer: int, pooling: str, kind: str,
                 label_names: tuple[str, ...], value_range: tuple[float, float] | None, meta: dict,
                 cache: FeatureCache | None | str = "default", reads_cache: bool = True,
                 thresholds: list[float] | None = None):
        self.model, self.pipeline, self.reading, self.layer, self.pooling = model, head, reading, layer, pooling
        self.kind, self.label_names, self.value_range, self.meta = kind, tuple(label_names), value_range, meta
        self.thresholds = thresholds  # several labels an example: each label's, chosen on the validation split
        self.states = HiddenStates(model, reading, FeatureCache() if cache == "default" else cache,
                                   reads_cache=reads_cache)

    @property
    def params_total(self) -> int:
        return self.model.params_total + self.params_trainable

    @property
    def max_length(self) -> int:
        return self.reading.window

    def count_truncated(self, texts: list[str]) -> int:
        return 0  # long texts are read in windows, never cut

    def count_windows(self, texts: list[str]) -> list[int]:
        return self.states.count_windows(texts)

    def _tensors(self) -> dict[str, np.ndarray]:
        scale = self.pipeline.named_steps["scale"]
        return {"mean": np.asarray(scale.mean_, dtype=np.float64), "scale": np.asarray(scale.scale_, dtype=np.float64),
                "coef": np.ascontiguousarray(self.linear.coef_, dtype=np.float64),
                "intercept": np.atleast_1d(np.asarray(self.linear.intercept_, dtype=np.float64))}

    def _settings(self) -> dict:
        return {"layers_read": list(self.reading.layers), "layer": self.layer, "pooling": self.pooling,
                "window": self.reading.window, "stride": self.reading.stride, "precision": self.reading.precision,
                "before": self.reading.before, "after": self.reading.after,
                **({"inner": self.reading.inner} if self.reading.inner else {}),
                "linear_model": type(self.linear).__name__}

    @cached_property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps([self.model.fingerprint, self._settings(), self.kind,
                                            list(self.label_names), self.value_range,
                                            *([self.thresholds] if self.thresholds is not None else [])],
                                           sort_keys=True).encode())
        for name, array in sorted(self._tensors().items()):
            digest.update(name.encode() + array.tobytes())
        return digest.hexdigest()[:16]

    def describe_model(self) -> dict:
        return {"model": f"{self.model.name} layer {self.layer} of {self.model.lm.config.num_hidden_layers}, "
                         f"{self.pooling} pooled (frozen) -> {type(self.linear).__name__}",
                "base_model": self.model.name, "base_fingerprint": self.model.fingerprint, **self._settings()}

    def features(self, texts: list[str], on_progress: Callable[[int], None] | None = None) -> np.ndarray:
        values, _, _ = self.states.features(texts, on_progress)
        return pooled(values, self.reading.layers.index(self.layer), self.pooling)

    def predict_batch(self, texts: list[str]) -> Predictions:
        return self._pipeline_predictions(self.features(texts))

    def with_precision(self, precision: str) -> ProbePredictor:
        """The same head reading the texts in another precision (for the parity check)."""
        return self._twin(dataclasses.replace(self.reading, precision=precision), self.states.cache)

    def uncached(self) -> ProbePredictor:
        """The same predictor reading every text with the model (and still storing what it read): what a speed
        measurement must time, since a cached text costs a database read, not a forward pass."""
        return self._twin(self.reading, self.states.cache, reads_cache=False)

    def _twin(self, reading: Reading, cache: FeatureCache | None, reads_cache: bool = True) -> ProbePredictor:
        return ProbePredictor(self.model, self.pipeline, reading=reading, layer=self.layer, pooling=self.pooling,
                              kind=self.kind, label_names=self.label_names, value_range=self.value_range,
                              meta=self.meta, cache=cache, reads_cache=reads_cache, thresholds=self.thresholds)

    def save(self, directory: Path) -> None:
        save_file(self._tensors(), str(directory / "probe.safetensors"))
        write_artifact_json(directory, {
            "rung": self.rung, "kind": self.kind, "labels": list(self.label_names), "value_range": self.value_range,
            **({"thresholds": self.thresholds} if self.thresholds is not None else {}),
            **save_base_reference(self.model, directory), **self._settings(),
            "classes": [str(c) for c in getattr(self.linear, "classes_", [])], **self.meta,
            "params_total": self.params_total, "params_trainable": self.params_trainable,
            "fingerprint": self.fingerprint})

    @classmethod
    def load(cls, directory: Path, payload: dict) -> ProbePredictor:
        tensors = load_file(str(directory / "probe.safetensors"))
        scale = StandardScaler()
        scale.mean_, scale.scale_ = tensors["mean"], tensors["scale"]
        scale.var_, scale.n_features_in_ = tensors["scale"] ** 2, len(tensors["mean"])
        linear = linear_from_tensors(payload["kind"], tensors, payload.get("classes", []))
        reading = Reading(tuple(payload["layers_read"]), payload["window"], payload["stride"], payload["precision"],
                          payload["before"], payload["after"], payload.get("inner", ""))
        value_range = tuple(payload["value_range"]) if payload.get("value_range") else None
        meta = {key: payload[key] for key in ("config", "training", "selection", "metrics") if key in payload}
        return cls(load_base_model(directory, payload), Pipeline([("scale", scale), ("model", linear)]),
                   reading=reading, layer=payload["layer"], pooling=payload["pooling"], kind=payload["kind"],
                   label_names=tuple(payload["labels"]), value_range=value_range, meta=meta,
                   thresholds=payload.get("thresholds"))


def fit_probe(model: Model, task: Task, config: ProbeConfig = ProbeConfig(), *, out_dir: str | Path | None = None,
              overwrite: bool = False, on_progress: Callable[[int], None] | None = None,
              cache: FeatureCache | None | str = "default", measure: bool = True) -> ProbePredictor:
    """Fit the probe on the task's training split (layer, pooling and strength chosen on a validation split held
    out of it), evaluate it on the test split when there is one (timed without the feature cache), and save it to
    `out_dir` when given. `cache`: the feature cache (default: TUNELAB_HOME's), or None for none; `measure=False`
    leaves the evaluation to the caller.

    `auto` precision reads in bf16 where the device is fast at it and the head's predictions on training texts
    agree with fp32 ones (scoring/precision.py); otherwise fp32. `on_progress(n)` counts texts read.

    Raises:
        ConfigError: a layer the model does not have, an existing `out_dir` without `overwrite`, too few examples.
    """
    check_training_set(task)
    if out_dir is not None and Path(out_dir).exists() and not overwrite:
        raise ConfigError(f"{out_dir} exists; pass --overwrite to replace it")
    n_layers = model.lm.config.num_hidden_layers
    layers = config.layer_list or candidate_layers(n_layers)
    if max(layers) > n_layers:
        raise ConfigError(f"--layers {config.layers}: {model.name} has layers 0..{n_layers}")
    cache = FeatureCache() if cache == "default" else cache
    device = model.device
    candidate = "bf16" if config.precision == "bf16" or (config.precision == "auto" and bf16_is_fast(device.type)) \
        else "fp32"
    predictor = _fit(model, task, config, layers, candidate, cache, on_progress)
    sample = [e.text for e in task.train][:PARITY_TEXTS]
    record = resolve_precision(config.precision, device, lambda precision: comparable(
        predict(predictor.with_precision(precision), sample), predictor.value_range))
    if record["precision"] != candidate:
        predictor = _fit(model, task, config, layers, record["precision"], cache, on_progress)
    predictor.meta["training"]["precision"] = record
    if task.test and measure:
        predictor.meta["metrics"] = evaluate(predictor.uncached(), task)
    if out_dir is not None:
        save_predictor(predictor, out_dir, task.text_fields)
    return predictor


def _fit(model: Model, task: Task, config: ProbeConfig, layers: tuple[int, ...], precision: str,
         cache: FeatureCache, on_progress) -> ProbePredictor:
    started = time.perf_counter()
    before, after, inner = prompt_frame(task) if config.frame == "prompt" else ("", "", "")
    if task.text_fields and not inner:  # no prompt frame: the fields as the default template shows them
        inner = PromptFormat.from_template(default_template(task.text_fields), "").inner_format
    reading = Reading(tuple(layers), config.window, config.window - config.overlap, precision, before, after, inner)
    states = HiddenStates(model, reading, cache)
    train = list(task.train)
    features, windows, from_cache = states.features([e.text for e in train], on_progress)
    feature_seconds = time.perf_counter() - started
    labels = (label_matrix(task, train).astype(int) if task.is_multilabel
              else np.array([e.label for e in train], dtype=object if task.is_classification else float))
    selection = _select(task, train, features, labels, layers, config)
    best = max(selection, key=lambda row: row["validation"])  # first of equals: the grid's earlier, simpler entry
    layer_index = layers.index(best["layer"])
    head = _head(task.kind, best["strength"]).fit(pooled(features, layer_index, best["pooling"]), labels)
    value_range = None if task.kind != "regression" else (float(labels.min()), float(labels.max()))
    meta = {"config": asdict(config), "selection": selection, "training": {
        "train_seconds": time.perf_counter() - started, "feature_seconds": feature_seconds, "n_train": len(train),
        "texts_from_cache": from_cache, "windows_per_text": float(np.mean(windows)),
        "most_windows": int(windows.max()), "strength": best["strength"]}}
    return ProbePredictor(model, head, reading=reading, layer=best["layer"], pooling=best["pooling"],
                          kind=task.kind, label_names=task.labels, value_range=value_range, meta=meta, cache=cache,
                          thresholds=best.get("thresholds"))


def _select(task: Task, train: list, features: np.ndarray, labels: np.ndarray, layers: tuple[int, ...],
            config: ProbeConfig) -> list[dict]:
    """Every (layer, pooling, strength) of the grid fitted on part of the training split and scored on the rest
    with the task's deciding figure (for several labels, at the thresholds that do best on the held-out part, which
    the chosen entry keeps)."""
    fraction = min(0.5, config.validation_size / len(train))
    fit_part, held_out = split_examples(train, task.kind, fraction, config.seed)
    position = {id(e): i for i, e in enumerate(train)}
    fit_rows, held_rows = [position[id(e)] for e in fit_part], [position[id(e)] for e in held_out]
    held_task = dataclasses.replace(task, test=tuple(held_out))
    metric = deciding_metric(task)
    poolings = POOLED if config.pooling == "auto" else (config.pooling,)
    rows = []
    for layer_index, layer in enumerate(layers):
        for pooling in poolings:
            x = pooled(features, layer_index, pooling)
            for strength in STRENGTHS:
                head = _head(task.kind, strength).fit(x[fit_rows], labels[fit_rows])
                found = {}
                if task.is_multilabel:
                    scores = head.predict_proba(x[held_rows])
                    found["thresholds"] = [float(t) for t in choose_thresholds(scores, labels[held_rows] > 0)]
                    predictions = Predictions("multilabel", task.labels, probs=scores,
                                              thresholds=np.array(found["thresholds"]))
                elif task.is_classification:
                    predictions = Predictions("classification", tuple(head.classes_),
                                              probs=head.predict_proba(x[held_rows]))
                else:
                    predictions = Predictions("regression", values=head.predict(x[held_rows]))
                gold, outputs = gold_and_outputs(held_task, predictions)
                rows.append({"layer": layer, "pooling": pooling, "strength": strength,
                             "validation": round(metric(gold, outputs), 4), **found})
    return rows


def summary_lines(predictor: ProbePredictor, out_dir: str | Path | None) -> list[str]:
    training = predictor.meta["training"]
    lines = [f"probe: {predictor.describe_model()['model']}",
             f"fitted on {training['n_train']} examples in {training['train_seconds']:.1f} s (reading "
             f"{training['feature_seconds']:.1f} s, {training['texts_from_cache']} texts from the feature cache, "
             f"{training['windows_per_text']:.2f} windows per text); {predictor.params_trainable:,} trainable of "
             f"{predictor.params_total:,} parameters; precision {predictor.reading.precision}"]
    if out_dir is not None:
        lines.append(f"saved to {out_dir}")
    return lines
