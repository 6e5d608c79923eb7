"""Offline (bulk) inference: stream inputs, normalise, de-duplicate, skip what is stored, commit per batch.

Resuming is the normal path, not a special case: a rerun (or a run after a kill) computes only the missing keys.
The same job runs on Ray Data (`engine="ray"`): an actor pool holds the model, the driver writes the store.
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from pathlib import Path
from typing import Callable, Iterable

from tunelab.errors import ConfigError, InputError
from tunelab.measure.evaluate import truncation
from tunelab.offline.config import BulkConfig
from tunelab.offline.store import Store
from tunelab.predictor import Predictions, Predictor, length_batches, load_predictor, read_artifact_json, text_fields_of
from tunelab.tasks import read_rows
from tunelab.tasks.fields import join_fields, split_fields
from tunelab.tasks.files import JSONL_SUFFIXES, input_text


def normalise(text: str, casefold: bool = False, fields: tuple[str, ...] = ()) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, trimmed; optionally case-folded. A record of several
    `fields` is normalised field by field (its lines, and its field names, stay as they are).

    Raises:
        InputError: with `fields`, a text that is not a record of them.
    """
    if fields:
        values = split_fields(text, fields)
        return join_fields({name: normalise(value, casefold) for name, value in values.items()}, fields)
    text = " ".join(unicodedata.normalize("NFC", text).split())
    return text.casefold() if casefold else text


def text_key(normalised: str) -> str:
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:32]


def read_inputs(path: str | Path, text_field: str = "text", text_fields: tuple[str, ...] = ()) -> list[str]:
    """Texts from a file: one per line (.txt and others; blank lines skipped), JSONL objects, or a CSV column; with
    `text_fields`, the record of those fields of each JSONL object or CSV row.

    Raises:
        InputError: a missing file, undecodable bytes, a bad JSON line or a missing field, with its line.
    """
    names = text_fields or (text_field,)
    if text_fields and Path(path).suffix.lower() not in (".csv", *JSONL_SUFFIXES):
        raise InputError(f"this model reads the fields {', '.join(text_fields)}: give a JSONL or CSV file", path=path)
    flag = "--text-fields" if text_fields else "--text-field"
    hint = f"the model reads the fields {', '.join(text_fields)}"
    return [input_text(Path(path), line, row, names, hint) if text_fields else _one_text(path, line, row, text_field)
            for line, row in read_rows(path, *((name, flag) for name in names))]


def _one_text(path, line: int, row: dict, text_field: str) -> str:
    if not isinstance(row.get(text_field), str):
        raise InputError("is missing or not a string", path=path, line=line, field=text_field,
                         hint="use --text-field to name it")
    return row[text_field]


def _rows(predictions: Predictions, keys: list[str], texts: list[str]) -> list[tuple[str, str, dict]]:
    return [(key, text, predictions.row(i)) for i, (key, text) in enumerate(zip(keys, texts))]


def predict_all(
    predictor: Predictor,
    texts: Iterable[str],
    store: Store,
    config: BulkConfig = BulkConfig(),
    *,
    predictor_dir: str | Path | None = None,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """Predict every distinct normalised text not yet stored for this predictor; commit batch by batch.

    `predictor_dir` (the saved predictor) is needed by the Ray engine, whose workers load their own copy.
    `on_total(n)` is told how many texts need predicting, `on_progress(n)` after each committed batch.
    Returns counts: read, distinct, already_stored, predicted, and examples_per_s of the predicting part.
    """
    fingerprint = predictor.fingerprint
    recorded = store.description(fingerprint)
    if recorded and recorded.get("casefold", False) != config.casefold:
        raise ConfigError(f"{store.path} holds this model's predictions with casefold={recorded['casefold']}; "
                          "use the same setting (or another store)")
    fields = text_fields_of(predictor)
    store.register(fingerprint, {"rung": predictor.rung, "kind": predictor.kind, "casefold": config.casefold,
                                 "labels": list(predictor.label_names), "path": str(predictor_dir or ""),
                                 **({"text_fields": list(fields)} if fields else {})})
    distinct: dict[str, str] = {}
    read = 0
    for text in texts:
        read += 1
        normalised = normalise(text, config.casefold, fields)
        if normalised:
            distinct.setdefault(text_key(normalised), normalised)
    already = store.stored_keys(fingerprint, distinct)
    todo = sorted((key for key in distinct if key not in already), key=lambda k: (len(distinct[k]), k))
    if on_total:
        on_total(len(todo))
    started = time.perf_counter()
    if config.engine == "ray":
        if predictor_dir is None:
            raise ConfigError("--engine ray needs a saved predictor folder (--model DIR)")
        _predict_with_ray(predictor_dir, fingerprint, todo, distinct, store, config, on_progress)
    else:
        texts = [distinct[key] for key in todo]
        for batch_ids in length_batches(texts, config.batch_size):
            keys, batch = [todo[i] for i in batch_ids], [texts[i] for i in batch_ids]
            store.put_batch(fingerprint, _rows(predictor.predict_batch(batch), keys, batch))
            if on_progress:
                on_progress(len(keys))
    seconds = time.perf_counter() - started
    texts = [distinct[key] for key in todo]
    tokens = predictor.count_tokens(texts) if hasattr(predictor, "count_tokens") else None
    rate = (lambda amount: amount / seconds if todo and seconds > 0 else 0.0)  # noqa: E731
    return {"read": read, "distinct": len(distinct), "already_stored": len(already), "predicted": len(todo),
            "examples_per_s": rate(len(todo)), "chars_per_s": rate(sum(map(len, texts))),
            "tokens_per_s": rate(tokens) if tokens is not None else None,  # None: TF-IDF reads words
            **truncation(predictor, texts), "store": str(store.path), "fingerprint": fingerprint,
            # a cascade: the share of texts its fast member passed to its strong one
            **({"escalated_share": predictor.escalated_share} if hasattr(predictor, "escalated_share") else {})}


def predict_file(
    predictor_dir: str | Path,
    input_path: str | Path,
    store_path: str | Path,
    config: BulkConfig = BulkConfig(),
    *,
    text_field: str = "text",
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """`predict_all` from files: the inputs are read (and checked) before the saved predictor is loaded; a model of
    several fields reads those fields (its tunelab.json names them) of each row."""
    fields = tuple(read_artifact_json(predictor_dir).get("text_fields", ()))
    texts = read_inputs(input_path, text_field, fields)
    predictor = load_predictor(predictor_dir)
    store = Store(store_path)
    try:
        return predict_all(predictor, texts, store, config, predictor_dir=predictor_dir, on_total=on_total,
                           on_progress=on_progress)
    finally:
        store.close()


class _RayPredictorActor:
    """Holds one loaded predictor per Ray actor; turns a batch of texts into store rows."""

    def __init__(self, predictor_dir: str):
        self.predictor = load_predictor(predictor_dir)

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        rows = _rows(self.predictor.predict_batch(texts), [str(k) for k in batch["key"]], texts)
        return {"key": [r[0] for r in rows], "text": [r[1] for r in rows],
                "output": [json.dumps(r[2]) for r in rows]}


def _predict_with_ray(predictor_dir, fingerprint, keys, distinct, store, config: BulkConfig, on_progress) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'ray[data]'") from None
    if not keys:
        return
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = ray.data.from_items([{"key": key, "text": distinct[key]} for key in keys])
        predicted = dataset.map_batches(_RayPredictorActor, fn_constructor_kwargs={"predictor_dir": str(predictor_dir)},
                                        batch_size=config.batch_size, concurrency=config.ray_actors,
                                        batch_format="numpy")
        for batch in predicted.iter_batches(batch_size=config.batch_size, batch_format="numpy"):
            rows = [(str(k), str(t), json.loads(str(o))) for k, t, o in zip(batch["key"], batch["text"],
                                                                             batch["output"])]
            store.put_batch(fingerprint, rows)
            if on_progress:
                on_progress(len(rows))
    finally:
        if started_here:
            ray.shutdown()
