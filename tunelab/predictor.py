"""Predictor: what every rung produces, and what evaluation, bulk inference and serving consume.

A rung implements `predict_batch(texts)`; the shared `predict()` does de-duplication, length-sorted batching and
progress once for all of them. An artifact is a folder holding `tunelab.json` (plus weights, if any).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.atomic import replace_folder, write_json
from tunelab.errors import ConfigError, ModelError, TunelabError
from tunelab.tasks import Kind, Task

if TYPE_CHECKING:  # models.py imports torch; a predictor that needs none (ONNX) must load and serve without it
    from tunelab.models import Model

ARTIFACT_FILE = "tunelab.json"
FORMAT_VERSION = 1

# rung name in tunelab.json -> "module:attribute.path" of a loader(directory, payload); imported lazily so that
# this module stays below the rungs.
_RUNG_LOADERS = {
    "prompt": "tunelab.rungs.prompting:PromptPredictor.load",
    "tune": "tunelab.rungs.causal_lm:CausalLMPredictor.load",
    "distill": "tunelab.rungs.students:load_student",
    "baseline": "tunelab.rungs.baseline:BaselinePredictor.load",
    "probe": "tunelab.rungs.probe:ProbePredictor.load",
    "calibrated": "tunelab.ship.calibration:CalibratedPredictor.load",
    "cascade": "tunelab.ship.cascade:CascadePredictor.load",
    "onnx": "tunelab.ship.onnx_predictor:OnnxPredictor.load",
}


@dataclass
class Predictions:
    """Per-text outputs: the probability of every label (classification; rows sum to 1), each label's own score
    with the threshold that decides it (multilabel), or a value (regression)."""

    kind: Kind
    label_names: tuple[str, ...] = ()
    probs: np.ndarray | None = None  # (n, n_labels)
    values: np.ndarray | None = None  # (n,)
    thresholds: np.ndarray | None = None  # multilabel: (n_labels,), a label is chosen where its score reaches it

    def __post_init__(self):
        if self.kind == "multilabel" and self.thresholds is None:
            self.thresholds = np.full(len(self.label_names), 0.5)

    def __len__(self) -> int:
        return len(self.values) if self.kind == "regression" else len(self.probs)

    @property
    def labels(self) -> list[str]:
        """The top label of each text (classification)."""
        return [self.label_names[i] for i in self.probs.argmax(axis=1)]

    @property
    def chosen(self) -> np.ndarray:
        """(n, n_labels) booleans: the labels each text is given (multilabel)."""
        return self.probs >= self.thresholds

    @property
    def label_sets(self) -> list[tuple[str, ...]]:
        """The labels each text is given, in label order (multilabel)."""
        return [tuple(name for name, on in zip(self.label_names, row) if on) for row in self.chosen]

    def take(self, indices) -> Predictions:
        indices = np.asarray(indices, dtype=int)
        if self.kind == "regression":
            return Predictions(self.kind, values=self.values[indices])
        return Predictions(self.kind, self.label_names, probs=self.probs[indices], thresholds=self.thresholds)

    def row(self, i: int) -> dict:
        """One prediction as plain JSON-able data."""
        if self.kind == "regression":
            return {"value": float(self.values[i])}
        probs = {name: float(p) for name, p in zip(self.label_names, self.probs[i])}
        if self.kind == "multilabel":
            given = self.probs[i] >= self.thresholds  # this row only: bulk inference asks row by row
            return {"labels": [name for name, on in zip(self.label_names, given) if on], "probs": probs}
        return {"label": self.label_names[int(self.probs[i].argmax())], "probs": probs}

    @staticmethod
    def concat(parts: list[Predictions]) -> Predictions:
        first = parts[0]
        if first.kind == "regression":
            return Predictions(first.kind, values=np.concatenate([p.values for p in parts]))
        return Predictions(first.kind, first.label_names, probs=np.concatenate([p.probs for p in parts]),
                           thresholds=first.thresholds)


@runtime_checkable
class Predictor(Protocol):
    rung: str
    kind: Kind
    label_names: tuple[str, ...]

    @property
    def params_total(self) -> int: ...

    @property
    def params_trainable(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    def predict_batch(self, texts: list[str]) -> Predictions: ...

    def save(self, directory: Path) -> None: ...


# Characters per batch (about 2,000 tokens): short texts batch by count, long ones by size. Smaller batches of long
# texts are faster on a CPU (their activations stay in cache): zero-shot on 32 sotu passages, 2 cores, passages/s
# at 4 / 8 / 16 / 32 a batch: fp32 2.75 / 2.57 / 2.16 / 1.76, bf16 6.64 / 6.68 / 5.98 / 5.01 (32,000 was 32).
MAX_BATCH_CHARS = 8_000

# Texts per call for an encoder (predict's size bound still caps long texts). At predict's default of 32, short texts
# leave a 6-layer MiniLM dispatch-bound: examples/s of the bf16 student, machine D, batch 32 / 64 / 128 / 256 / 512,
# vader words 1,473 / 1,882 / 2,532 / 3,167 / 3,647; subjectivity words 1,564 / 1,999 / 2,721 / 3,305 / 2,703; left
# alone, the fruit texts 1,245 -> 1,801 at 256, and sotu passages (bounded by size) 52 -> 49, unchanged.
ENCODER_BATCH = 256


def length_batches(texts: list[str], batch_size: int, max_chars: int = MAX_BATCH_CHARS) -> list[list[int]]:
    """Indices of `texts` in batches of similar length (sorted, so little padding), each of at most `batch_size`
    texts and, padded to its longest, about `max_chars` characters (a proxy for tokens that needs no tokenizer)."""
    return size_batches([len(text) for text in texts], batch_size, max_chars)


def size_batches(sizes: list[int], batch_size: int, budget: int) -> list[list[int]]:
    """Indices of items of these sizes, sorted by size, in batches of at most `batch_size` items whose padded size
    (count x the largest) stays within `budget` (one item alone may exceed it)."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) >= batch_size or (len(current) + 1) * sizes[i] > budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def predict(
    predictor: Predictor,
    texts: list[str],
    *,
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> Predictions:
    """Predict every text, each distinct text once, in length-sorted batches bounded by count and by size;
    results come back in input order.

    `on_progress(n)` is called after each batch with the number of input texts it covered.
    """
    if not texts:
        raise ValueError("predict() needs at least one text")
    # a predictor may ask for larger batches (a cascade: the texts it escalates go to its strong member together)
    batch_size = max(batch_size, getattr(predictor, "min_batch_size", 0))
    distinct = list(dict.fromkeys(texts))
    counts: dict[str, int] = {}
    for text in texts:
        counts[text] = counts.get(text, 0) + 1
    parts, done_order = [], []
    for batch_ids in length_batches(distinct, batch_size):
        parts.append(predictor.predict_batch([distinct[i] for i in batch_ids]))
        done_order += batch_ids
        if on_progress:
            on_progress(sum(counts[distinct[i]] for i in batch_ids))
    merged = Predictions.concat(parts)
    position = {text_index: row for row, text_index in enumerate(done_order)}
    index_of = {text: i for i, text in enumerate(distinct)}
    return merged.take([position[index_of[text]] for text in texts])


def check_fits_task(predictor: Predictor, task: Task, who: str = "the predictor", *, exact: bool = False) -> None:
    """Raises ConfigError when `predictor` cannot answer `task`: another kind, or a task label it does not predict
    (with `exact`, any difference in the label sets: a teacher must hand over a distribution over the task's labels).
    """
    predicted, wanted = set(predictor.label_names), set(task.labels)
    if predictor.kind != task.kind or (task.kind != "regression" and (predicted != wanted if exact
                                                                    else not wanted <= predicted)):
        raise ConfigError(f"{who} predicts {predictor.kind} {list(predictor.label_names)}, but task {task.name} "
                          f"is {task.kind} {list(task.labels)}")


def save_predictor(predictor: Predictor, directory: str | Path, text_fields: tuple[str, ...] = ()) -> Path:
    """Write the artifact folder atomically: a kill leaves the old folder or the new one, never half of one.
    `text_fields`: the task's input fields, recorded for bulk inputs and service requests that come as fields."""
    def fill(staging: Path) -> None:
        predictor.save(staging)
        if text_fields:
            payload = json.loads((staging / ARTIFACT_FILE).read_text(encoding="utf-8"))
            write_json(staging / ARTIFACT_FILE, {**payload, "text_fields": list(text_fields)})
    return replace_folder(directory, fill)


def write_artifact_json(directory: Path, payload: dict) -> None:
    """tunelab.json, written last: its presence marks a complete artifact."""
    write_json(directory / ARTIFACT_FILE, {"format_version": FORMAT_VERSION, **payload})


class _PromptFormatFields(BaseModel):
    instruction: str
    query_format: str
    label_lead: str
    separator: str


class ArtifactFile(BaseModel):
    """What every tunelab.json must hold; rung-specific fields beyond these are checked by the rung's loader."""

    model_config = ConfigDict(extra="allow", strict=True)
    format_version: Literal[1]
    rung: Literal["prompt", "tune", "distill", "baseline", "probe", "calibrated", "cascade", "onnx"]
    kind: Literal["classification", "regression", "multilabel"]
    labels: list[Annotated[str, Field(min_length=1)]]
    fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    params_total: Annotated[int, Field(ge=1)]
    params_trainable: Annotated[int, Field(ge=0)]
    value_range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None  # JSON has no tuples
    text_fields: list[Annotated[str, Field(min_length=1)]] = []  # several input fields, in the record's order
    thresholds: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = None  # multilabel: one a label
    format: _PromptFormatFields | None = None
    config: dict = {}

    @model_validator(mode="after")
    def _label_space(self):
        if self.kind != "regression" and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            raise ValueError("a classifier needs two or more distinct labels")
        if self.kind == "multilabel" and (self.thresholds is None or len(self.thresholds) != len(self.labels)):
            raise ValueError("a multi-label artifact needs one threshold for each label")
        if self.kind == "regression" and self.value_range is None and self.rung not in ("distill", "onnx"):
            raise ValueError("a regression artifact needs its value_range")
        return self


def read_artifact_json(directory: str | Path) -> dict:
    """The parsed and checked tunelab.json of an artifact folder.

    Raises:
        ModelError: the folder is not a tunelab artifact, or its tunelab.json is unreadable or lacks a field
            (the message names the file and the field).
    """
    path = Path(directory) / ARTIFACT_FILE
    if not path.is_file():
        raise ModelError(f"{directory}: not a tunelab predictor folder (no {ARTIFACT_FILE})")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{path}: unreadable ({err})") from None
    if not isinstance(payload, dict):
        raise ModelError(f"{path}: not a JSON object")
    try:
        ArtifactFile.model_validate(payload)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ModelError(f'{path}: field "{where}" {first["msg"].lower()}') from None
    return payload
def save_base_reference(model: Model, directory: Path) -> dict:
    """How an artifact names its base model; a model built in memory is written into the artifact itself."""
    base = model.source
    if base is None:
        model.save(directory / "base")
        base = "base"
    return {"base_model": base, "base_fingerprint": model.fingerprint,
            **({"base_weights": "bf16"} if model.weights_precision == "bf16" else {})}


def load_base_model(directory: Path, payload: dict) -> Model:
    """The base model an artifact names, checked against the fingerprint it was made with.

    Raises:
        ModelError: the base model is missing or its weights differ.
    """
    base = payload["base_model"]
    from tunelab.models import load_model

    model = load_model(directory / base if base == "base" else base, precision=payload.get("base_weights", "fp32"))
    if model.fingerprint != payload["base_fingerprint"]:
        raise ModelError(f"{directory}: base model {base} has fingerprint {model.fingerprint}, "
                         f"but this predictor was made with {payload['base_fingerprint']}")
    return model


def is_artifact(path: str | Path) -> bool:
    """Whether `path` is a tunelab artifact folder (rather than a model spec)."""
    return (Path(path) / ARTIFACT_FILE).is_file()


def describe_artifact(predictor: Predictor) -> dict:
    """What `tunelab info` shows of a saved predictor: its rung, its model's facts, its parameter counts."""
    model = getattr(predictor, "model", None)
    facts = model.describe() if hasattr(model, "describe") and hasattr(model, "lm") else {}
    if hasattr(predictor, "describe_model"):  # predictors that are not a causal LM (an encoder student, a baseline)
        facts = predictor.describe_model()
    return {"rung": predictor.rung, "kind": predictor.kind, "labels": list(predictor.label_names), **facts,
            "params_total": predictor.params_total, "params_trainable": predictor.params_trainable,
            "fingerprint": predictor.fingerprint}


def load_predictor(directory: str | Path) -> Predictor:
    """Load any saved predictor, whatever rung made it, and check it is the predictor its tunelab.json describes.

    Raises:
        ModelError: not an artifact, a damaged one, or one whose weights or description were changed after saving
            (the fingerprint recomputed from what was loaded differs from the recorded one).
    """
    payload = read_artifact_json(directory)
    module_name, attribute_path = _RUNG_LOADERS[payload["rung"]].split(":")
    loader = importlib.import_module(module_name)
    for attribute in attribute_path.split("."):
        loader = getattr(loader, attribute)
    try:
        predictor = loader(Path(directory), payload)
    except TunelabError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged folder can fail anywhere in a library; say which folder
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ModelError(f"{directory}: damaged artifact, cannot be loaded ({type(err).__name__}: {first})") from None
    if predictor.fingerprint != payload["fingerprint"]:
        raise ModelError(f"{directory}: the artifact was changed after it was saved (recorded fingerprint "
                         f"{payload['fingerprint']}, loaded {predictor.fingerprint}); save it again with tunelab")
    predictor.text_fields = tuple(payload.get("text_fields", ()))
    return predictor


def text_fields_of(predictor: Predictor) -> tuple[str, ...]:
    """The input fields a loaded predictor reads as a record (tasks/fields.py); empty for one text."""
    return tuple(getattr(predictor, "text_fields", ()))
