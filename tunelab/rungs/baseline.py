"""Classical baselines: the rung every LLM rung has to beat, on the same split.

- `tfidf`: word 1-2-gram TF-IDF (plus character 2-5-grams when the texts are short) and a linear model;
- `embed`: frozen all-MiniLM-L6-v2 sentence embeddings and the same linear model (long texts read in windows);
- the frozen-LLM probe has its own module (probe.py): it needs the base model.
The linear model is logistic regression for classification, one logistic regression per label for several labels
an example (one-vs-rest, each label's threshold chosen on cross-validated predictions of the training split), and
ridge regression for regression, its strength chosen by scikit-learn's own cross-validation on the training split.
Everything is a scikit-learn `Pipeline`.

A saved baseline is a normal predictor folder: tunelab.json, the fitted numbers in `baseline.safetensors` and the
vocabularies in `vocabulary.json` (never a pickle); loading rebuilds the same pipeline from them.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV
from sklearn.metrics import log_loss, make_scorer
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold, cross_val_predict
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import FunctionTransformer

from tunelab.config import BaselineConfig
from tunelab.errors import ConfigError, ModelError
from tunelab.measure.evaluate import evaluate
from tunelab.measure.multilabel import choose_thresholds, label_matrix
from tunelab.models import MiniLMEmbedder
from tunelab.predictor import Predictions, save_predictor, write_artifact_json
from tunelab.scoring.length import fit_texts, special_frame, text_tokens, window_spans
from tunelab.tasks import Task
from tunelab.tasks.fields import encoder_texts, split_fields

SHORT_TEXT_CHARS = 200  # median training text at most this long: add character n-grams (words alone are too few)
EMBED_MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 word pieces; longer texts: windows or a cut
EMBED_OVERLAP = 32  # tokens two neighbouring windows of a long text share
STRENGTHS = np.logspace(-2, 3, 11)  # C of logistic regression (and 1/alpha of ridge) tried by cross-validation


class _Embed:
    """The frozen embedder as a scikit-learn step (a FunctionTransformer): texts -> L2-normalised vectors. A text
    longer than the encoder's 256 tokens is cut (head and tail kept) or read whole in overlapping windows whose
    vectors are averaged (`long_texts`). Records of several fields are read as their values joined by the
    encoder's separator token (encoder_texts)."""

    def __init__(self, long_texts: str = "windows", fields: tuple[str, ...] = ()):
        self.embedder, self.long_texts = MiniLMEmbedder(max_length=EMBED_MAX_TOKENS), long_texts
        self.fields = tuple(fields)
        self.room = EMBED_MAX_TOKENS - 2  # [CLS] and [SEP] take 2 of the budget

    def encoder_texts(self, texts) -> list[str]:
        return encoder_texts(list(texts), self.fields, self.embedder.tokenizer.sep_token)

    def fit(self, texts: list[str]) -> list[tuple[str, bool]]:
        texts = self.encoder_texts(texts)
        if self.long_texts == "windows":
            return [(text, False) for text in texts]
        return fit_texts(self.embedder.tokenizer, texts, self.room)

    def windows(self, texts: list[str]) -> list[list[list[int]]]:
        """Each text's windows as token ids with their special tokens."""
        tokenizer = self.embedder.tokenizer
        before, after = special_frame(tokenizer)
        return [[before + row[a:b] + after for a, b in window_spans(len(row), self.room, self.room - EMBED_OVERLAP)]
                for row in tokenizer(self.encoder_texts(texts), add_special_tokens=False).input_ids]

    def __call__(self, texts) -> np.ndarray:
        texts = list(texts)
        if self.long_texts != "windows":
            return self.embedder.encode([text for text, _ in self.fit(texts)])
        per_text = self.windows(texts)
        vectors = self.embedder.encode_ids([ids for windows in per_text for ids in windows])
        owner = np.repeat(np.arange(len(texts)), [len(windows) for windows in per_text])
        summed = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        np.add.at(summed, owner, vectors)
        return summed / np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-12)


class _Field:
    """One field of each record (a FunctionTransformer's function): what a per-field vectoriser reads.

    A FeatureUnion of (pick a field -> TF-IDF) pipelines rather than scikit-learn's ColumnTransformer: a saved
    baseline is rebuilt from its vocabularies and numbers without refitting (no pickles), and a ColumnTransformer
    cannot be marked fitted from outside; the features are the same (one vectoriser per field, side by side)."""

    def __init__(self, field: str, fields: tuple[str, ...]):
        self.field, self.fields = field, tuple(fields)

    def __call__(self, records) -> list[str]:
        return [split_fields(record, self.fields)[self.field] for record in records]


def _vectorizer(step) -> TfidfVectorizer:
    """The TF-IDF vectoriser of a feature step: the step itself, or the end of a (pick a field -> TF-IDF) pipeline."""
    return step.named_steps["tfidf"] if isinstance(step, Pipeline) else step


class PerLabelLogistic(BaseEstimator, ClassifierMixin):
    """One logistic regression per label (scikit-learn's OneVsRestClassifier fits them), kept as one coefficient
    matrix: a saved predictor is rebuilt from these numbers without a pickle, and OneVsRestClassifier's fitted
    members cannot be set from outside. A label every training example holds (or none) gets a constant."""

    CONSTANT_LOGIT = 10.0  # a label fixed in training: its score is expit(+-10), i.e. 1 or 0 to four decimals

    def __init__(self, C: float = 1.0):
        self.C = C

    def fit(self, x, y):
        y = np.asarray(y, dtype=int)
        # liblinear: scikit-learn's solver for small binary problems; 16 labels x 11 strengths x 3 folds on the
        # sounds task took 3.1 s against lbfgs's 8.0 s, the same strength chosen (micro F1 0.728 and 0.722)
        fitted = OneVsRestClassifier(LogisticRegression(C=self.C, solver="liblinear", max_iter=2000)).fit(x, y)
        coef, intercept = np.zeros((y.shape[1], x.shape[1])), np.zeros(y.shape[1])
        for j, member in enumerate(fitted.estimators_):
            if hasattr(member, "coef_"):
                coef[j], intercept[j] = member.coef_[0], member.intercept_[0]
            else:  # scikit-learn's constant predictor
                intercept[j] = self.CONSTANT_LOGIT if y[0, j] else -self.CONSTANT_LOGIT
        self.coef_, self.intercept_, self.classes_ = coef, intercept, np.arange(y.shape[1])
        self.n_features_in_ = x.shape[1]
        return self

    def predict_proba(self, x) -> np.ndarray:
        """(n, n_labels): each label's own probability (the columns need not sum to 1)."""
        return expit(np.asarray(x @ self.coef_.T) + self.intercept_)

    def predict(self, x) -> np.ndarray:
        return (self.predict_proba(x) >= 0.5).astype(int)


def _mean_label_log_loss(gold, scores) -> float:
    return float(np.mean([log_loss(gold[:, j], scores[:, j], labels=[0, 1]) for j in range(gold.shape[1])]))


def fit_per_label(x, matrix: np.ndarray, seed: int) -> tuple[PerLabelLogistic, np.ndarray, float]:
    """The per-label logistic regressions on features `x` and the (n, n_labels) label matrix: one strength for all
    labels chosen by 3-fold cross-validation (mean per-label log loss), each label's threshold chosen on the same
    folds' out-of-fold scores (best F1). Returns (fitted model, thresholds, strength)."""
    folds = KFold(n_splits=min(3, len(matrix)), shuffle=True, random_state=seed)
    scorer = make_scorer(_mean_label_log_loss, response_method="predict_proba", greater_is_better=False)
    search = GridSearchCV(PerLabelLogistic(), {"C": list(STRENGTHS)}, scoring=scorer, cv=folds).fit(x, matrix)
    strength = float(search.best_params_["C"])
    out_of_fold = cross_val_predict(PerLabelLogistic(C=strength), x, matrix, cv=folds, method="predict_proba")
    return search.best_estimator_, choose_thresholds(out_of_fold, matrix), strength


class LinearPipeline:
    """What a predictor ending in a fitted scikit-learn linear model (the step named "model" of `self.pipeline`)
    shares: its trainable parameters and its predictions in the predictor's label order, clipped for regression.
    Used by the baselines and the probe."""

    @property
    def linear(self):
        return self.pipeline.named_steps["model"]

    @property
    def params_trainable(self) -> int:
        """The fitted coefficients and intercepts (what comes before the linear model is counted, not learned)."""
        return int(self.linear.coef_.size + np.size(self.linear.intercept_))

    def _pipeline_predictions(self, inputs) -> Predictions:
        if self.kind == "multilabel":  # the columns are the label names' order
            return Predictions("multilabel", self.label_names, probs=self.pipeline.predict_proba(inputs),
                               thresholds=np.asarray(self.thresholds))
        if self.kind == "classification":
            probs = self.pipeline.predict_proba(inputs)
            order = [list(self.linear.classes_).index(label) for label in self.label_names]
            return Predictions("classification", self.label_names, probs=probs[:, order])
        return Predictions("regression", values=np.clip(self.pipeline.predict(inputs), *self.value_range))


class BaselinePredictor(LinearPipeline):
    """A fitted scikit-learn pipeline: features (TF-IDF or frozen embeddings), then a linear model."""

    rung = "baseline"

    def __init__(self, pipeline: Pipeline, *, method: str, kind: str, label_names: tuple[str, ...],
                 value_range: tuple[float, float] | None, embed: _Embed | None, meta: dict,
                 thresholds: list[float] | None = None):
        self.pipeline, self.method, self.kind, self.label_names = pipeline, method, kind, tuple(label_names)
        self.value_range, self.embed, self.meta, self.thresholds = value_range, embed, meta, thresholds

    @property
    def params_total(self) -> int:
        return self.params_trainable + (self.embed.embedder.params_total if self.embed else 0)

    def _vectorizers(self) -> dict[str, TfidfVectorizer]:
        if self.embed:
            return {}
        return {name: _vectorizer(step) for name, step in self.pipeline.named_steps["features"].transformer_list}

    def _tensors(self) -> dict[str, np.ndarray]:
        tensors = {"coef": np.ascontiguousarray(self.linear.coef_, dtype=np.float64),
                   "intercept": np.atleast_1d(np.asarray(self.linear.intercept_, dtype=np.float64))}
        for name, vectorizer in self._vectorizers().items():
            tensors[f"idf_{name}"] = np.asarray(vectorizer.idf_, dtype=np.float64)
        return tensors

    def _vocabularies(self) -> dict[str, dict[str, int]]:
        return {name: {term: int(i) for term, i in v.vocabulary_.items()} for name, v in self._vectorizers().items()}

    @cached_property  # a fitted baseline never changes; its vocabularies can hold 100k+ terms to hash
    def fingerprint(self) -> str:
        """Covers what decides a prediction: the fitted numbers, the vocabularies, the method, kind and labels."""
        digest = hashlib.sha256(json.dumps([self.method, self.kind, list(self.label_names), self.value_range,
                                            self._vocabularies(), _feature_settings(self.pipeline),
                                            *([list(self.thresholds)] if self.thresholds is not None else [])],
                                           sort_keys=True).encode())
        for name, array in sorted(self._tensors().items()):
            digest.update(name.encode() + array.tobytes())
        return digest.hexdigest()[:16]

    def describe_model(self) -> dict:
        features = "all-MiniLM-L6-v2 embeddings (frozen)" if self.embed else " + ".join(
            f"{name} TF-IDF ({len(v.vocabulary_):,} terms)" for name, v in self._vectorizers().items())
        return {"model": f"{features} -> {type(self.linear).__name__}"}

    @property
    def max_length(self) -> int | None:
        return EMBED_MAX_TOKENS if self.embed else None

    def count_truncated(self, texts: list[str]) -> int:
        return sum(cut for _, cut in self.embed.fit(texts)) if self.embed else 0  # TF-IDF reads every word

    def count_windows(self, texts: list[str]) -> list[int]:
        """Windows per text (1 for every text that fits, and for all texts when long ones are cut or TF-IDF)."""
        if self.embed is None or self.embed.long_texts != "windows":
            return [1] * len(texts)
        return [len(windows) for windows in self.embed.windows(texts)]

    def count_tokens(self, texts: list[str]) -> int | None:
        """Tokens the frozen encoder reads, after the cut; None for TF-IDF, which has no tokens."""
        if self.embed is None:
            return None
        return text_tokens(self.embed.embedder.tokenizer, [text for text, _ in self.embed.fit(texts)])

    def predict_batch(self, texts: list[str]) -> Predictions:
        return self._pipeline_predictions(texts)

    def save(self, directory: Path) -> None:
        save_file(self._tensors(), str(directory / "baseline.safetensors"))
        (directory / "vocabulary.json").write_text(json.dumps(self._vocabularies()), encoding="utf-8")
        write_artifact_json(directory, {
            "rung": self.rung, "method": self.method, "kind": self.kind, "labels": list(self.label_names),
            "value_range": self.value_range, "features": _feature_settings(self.pipeline),
            **({"thresholds": list(self.thresholds)} if self.thresholds is not None else {}),
            "linear_model": type(self.linear).__name__, **self.meta, "params_total": self.params_total,
            "params_trainable": self.params_trainable, "fingerprint": self.fingerprint})

    @classmethod
    def load(cls, directory: Path, payload: dict) -> BaselinePredictor:
        """Rebuild the pipeline from the saved numbers and vocabularies."""
        tensors = load_file(str(directory / "baseline.safetensors"))
        vocabularies = json.loads((directory / "vocabulary.json").read_text(encoding="utf-8"))
        kind, labels = payload["kind"], tuple(payload["labels"])
        embed = (_Embed(payload["features"].get("long_texts", "cut"), tuple(payload["features"].get("fields", ())))
                 if payload["method"] == "embed" else None)
        features = _features(payload["features"], embed, vocabularies)
        for name, step in ([] if embed else features.transformer_list):
            vectorizer = _vectorizer(step)
            if len(vectorizer.vocabulary) != len(tensors[f"idf_{name}"]):
                raise ModelError(f"{directory}: vocabulary.json and baseline.safetensors disagree on {name} terms")
            vectorizer.idf_ = tensors[f"idf_{name}"]
        linear = linear_from_tensors(kind, tensors, payload.get("classes", []))
        value_range = tuple(payload["value_range"]) if payload.get("value_range") else None
        meta = {key: payload[key] for key in ("config", "training", "classes", "metrics") if key in payload}
        return cls(Pipeline([("features", features), ("model", linear)]), method=payload["method"], kind=kind,
                   label_names=labels, value_range=value_range, embed=embed, meta=meta,
                   thresholds=payload.get("thresholds"))


def linear_from_tensors(kind: str, tensors: dict[str, np.ndarray], classes: list[str]):
    """The fitted linear model a saved baseline or probe holds, rebuilt from its coefficients."""
    if kind == "classification":
        linear = LogisticRegression()
        linear.classes_ = np.array(classes, dtype=object)
        linear.coef_, linear.intercept_ = tensors["coef"], tensors["intercept"]
    elif kind == "multilabel":
        linear = PerLabelLogistic()
        linear.coef_, linear.intercept_ = tensors["coef"], tensors["intercept"]
        linear.classes_ = np.arange(len(tensors["intercept"]))
    else:
        linear = Ridge()
        linear.coef_, linear.intercept_ = tensors["coef"], float(tensors["intercept"][0])
    linear.n_features_in_ = tensors["coef"].shape[-1]
    return linear


def _feature_settings(pipeline: Pipeline) -> dict:
    """What a saved pipeline needs to rebuild its feature step."""
    features = pipeline.named_steps["features"]
    if isinstance(features, FunctionTransformer):
        embed = features.func
        return {"embed": "all-MiniLM-L6-v2", "max_tokens": EMBED_MAX_TOKENS, "long_texts": embed.long_texts,
                "overlap": EMBED_OVERLAP, **({"fields": list(embed.fields)} if embed.fields else {})}
    settings = {}
    for name, step in features.transformer_list:
        v = _vectorizer(step)
        settings[name] = {"analyzer": v.analyzer, "ngram_range": list(v.ngram_range), "sublinear_tf": v.sublinear_tf}
        if isinstance(step, Pipeline):
            picker = step.named_steps["field"].func
            settings[name].update(field=picker.field, fields=list(picker.fields))
    return settings


def _features(settings: dict, embed: _Embed | None, vocabularies: dict | None = None):
    """The feature step: a FunctionTransformer over the embedder, or a union of TF-IDF vectorizers."""
    if embed is not None:
        return FunctionTransformer(embed)
    steps = []
    for name, s in settings.items():
        vectorizer = TfidfVectorizer(analyzer=s["analyzer"], ngram_range=tuple(s["ngram_range"]),
                                     sublinear_tf=s["sublinear_tf"], vocabulary=(vocabularies or {}).get(name))
        if "field" in s:
            picker = FunctionTransformer(_Field(s["field"], tuple(s["fields"])))
            steps.append((name, Pipeline([("field", picker), ("tfidf", vectorizer)])))
        else:
            steps.append((name, vectorizer))
    return FeatureUnion(steps)


def _tfidf_settings(texts: list[str], fields: tuple[str, ...] = ()) -> dict:
    """Word 1-2-grams, and character 2-5-grams for short texts; for records, both per field (a field's own
    vocabulary: "free" in a subject line is not "free" in a body)."""
    if fields:
        settings = {}
        for field in fields:
            values = _Field(field, fields)(texts)
            if not any(value.strip() for value in values):  # empty in every training row: no vocabulary to learn
                continue
            for name, analyzer in _tfidf_settings(values).items():
                settings[f"{field}.{name}"] = {**analyzer, "field": field, "fields": list(fields)}
        return settings
    settings = {"word": {"analyzer": "word", "ngram_range": [1, 2], "sublinear_tf": True}}
    if statistics.median(len(t) for t in texts) <= SHORT_TEXT_CHARS:
        settings["char"] = {"analyzer": "char_wb", "ngram_range": [2, 5], "sublinear_tf": True}
    return settings


def _linear_model(task: Task, seed: int):
    """Logistic regression or ridge, strength chosen by cross-validation on the training split (fewer folds when a
    label has few examples; a fixed strength when a label has a single one)."""
    if not task.is_classification:
        return RidgeCV(alphas=1.0 / STRENGTHS)
    smallest = min(sum(e.label == label for e in task.train) for label in task.labels)
    if smallest < 2:
        return LogisticRegression(C=1.0, max_iter=2000)
    folds = StratifiedKFold(n_splits=min(5, smallest), shuffle=True, random_state=seed)
    return LogisticRegressionCV(Cs=STRENGTHS, l1_ratios=(0.0,), cv=folds, scoring="neg_log_loss",
                                use_legacy_attributes=False, max_iter=2000, random_state=seed)


def check_training_set(task: Task) -> None:
    """Raises ConfigError when the training split cannot fit a baseline (too few examples or labels)."""
    labels_seen = {label for e in task.train for label in e.label} if task.is_multilabel else \
        {e.label for e in task.train}
    if len(task.train) < 2 or (task.kind != "regression" and labels_seen != set(task.labels)):
        raise ConfigError(f"a baseline needs training examples of every label of task {task.name}; the training "
                          f"split has {len(task.train)} examples of {sorted(map(str, labels_seen))}")


def fit_baseline(task: Task, config: BaselineConfig = BaselineConfig(), *, out_dir: str | Path | None = None,
                 overwrite: bool = False) -> BaselinePredictor:
    """Fit the baseline on the task's training split, evaluate it on the test split (when there is one) and save it
    to `out_dir` (when given). Its meta records the training seconds and the test metrics."""
    check_training_set(task)
    if out_dir is not None and Path(out_dir).exists() and not overwrite:
        raise ConfigError(f"{out_dir} exists; pass --overwrite to replace it")
    texts = [e.text for e in task.train]
    embed = _Embed(config.long_texts, task.text_fields) if config.method == "embed" else None
    features = _features({} if embed else _tfidf_settings(texts, task.text_fields), embed)
    started = time.perf_counter()
    labels, thresholds = [e.label for e in task.train], None
    if task.is_multilabel:
        linear, thresholds, strength = fit_per_label(features.fit_transform(texts), label_matrix(task, task.train),
                                                     config.seed)
        pipeline = Pipeline([("features", features), ("model", linear)])
    else:
        pipeline = Pipeline([("features", features), ("model", _linear_model(task, config.seed))])
        pipeline.fit(texts, labels if task.is_classification else np.array(labels, dtype=float))
        fitted = pipeline.named_steps["model"]
        strength = getattr(fitted, "C_", getattr(fitted, "alpha_", None))
    seconds = time.perf_counter() - started
    meta = {"config": asdict(config), "training": {
        "train_seconds": seconds, "n_train": len(texts),
        "strength": float(np.atleast_1d(strength)[0]) if strength is not None else 1.0,
        "n_truncated": sum(cut for _, cut in embed.fit(texts)) if embed else 0}}
    value_range = None
    if task.is_classification:
        meta["classes"] = [str(c) for c in fitted.classes_]
    elif not task.is_multilabel:
        value_range = (float(min(labels)), float(max(labels)))
    plain = pipeline if task.is_multilabel else _plain(pipeline, task)  # PerLabelLogistic is already plain
    predictor = BaselinePredictor(plain, method=config.method, kind=task.kind, label_names=task.labels,
                                  value_range=value_range, embed=embed, meta=meta,
                                  thresholds=None if thresholds is None else [float(t) for t in thresholds])
    if task.test:
        predictor.meta["metrics"] = evaluate(predictor, task)
    if out_dir is not None:
        save_predictor(predictor, out_dir, task.text_fields)
    return predictor


def _plain(pipeline: Pipeline, task: Task) -> Pipeline:
    """The cross-validated model as the plain estimator a saved baseline loads back (same numbers), so a fitted
    and a loaded baseline are the same object and have the same fingerprint."""
    fitted = pipeline.named_steps["model"]
    plain = LogisticRegression() if task.is_classification else Ridge()
    plain.coef_, plain.intercept_, plain.n_features_in_ = fitted.coef_, fitted.intercept_, fitted.n_features_in_
    if task.is_classification:
        plain.classes_ = np.array([str(c) for c in fitted.classes_], dtype=object)
    else:
        plain.intercept_ = float(fitted.intercept_)
    return Pipeline([("features", pipeline.named_steps["features"]), ("model", plain)])


def summary_lines(predictor: BaselinePredictor, out_dir: str | Path | None) -> list[str]:
    training = predictor.meta["training"]
    lines = [f"baseline {predictor.method}: {predictor.describe_model()['model']}",
             f"fitted on {training['n_train']} examples in {training['train_seconds']:.1f} s "
             f"(strength {training['strength']:.3g} by cross-validation); {predictor.params_trainable:,} trainable "
             f"of {predictor.params_total:,} parameters"]
    if out_dir is not None:
        lines.append(f"saved to {out_dir}")
    return lines
