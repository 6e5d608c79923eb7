"""Prompt engineering: zero-, one- and few-shot prompts, scored by label log-likelihood. Changes no parameter.

A prompt is `instruction + shot + separator + shot + ... + separator + query`; every label is scored by the summed
log-probability of its tokens after the query (never by parsing generated text). The shared prefix (instruction
and shots) is encoded once and its key/value cache reused for every query.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from tunelab.config import PromptConfig, parse_shot_counts, template_problems
from tunelab.errors import ConfigError
from tunelab.measure.evaluate import deciding_metric, evaluate, gold_and_outputs
from tunelab.measure.multilabel import choose_thresholds, label_matrix
from tunelab.models import MiniLMEmbedder, Model
from tunelab.predictor import (
    Predictions,
    length_batches,
    load_base_model,
    save_base_reference,
    save_predictor,
    write_artifact_json,
)
from tunelab.scoring.length import check_max_length, context_window, text_tokens
from tunelab.scoring.precision import autocast, choose_precision
from tunelab.scoring.tokens import PrefixCache, encode_prefix, label_log_likelihoods
from tunelab.scoring.verbalizer import PromptFormat, Verbalizer, choose_label_thresholds, rating_label
from tunelab.tasks import Example, Task
from tunelab.tasks.fields import probe_record

CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")  # Zhao et al. 2021, "Calibrate Before Use", section 5


# ----------------------------------------------------------------------------------------------------------------
# Shot selection


class Embedder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray:  # (n, dim), L2-normalised rows
        ...


def select_shots(train: list[Example], k: int, method: str, rng: random.Random, key=lambda e: e.label):
    """K shots from `train`: `random`, or `balanced` (equal count per key, interleaved: a b c a b c ...)."""
    if method == "random":
        return rng.sample(train, k)
    by_key: dict = {}
    for example in train:
        by_key.setdefault(key(example), []).append(example)
    groups = [by_key[name] for name in sorted(by_key)]
    rng.shuffle(groups)
    for group in groups:
        rng.shuffle(group)
    shots, depth = [], 0
    while len(shots) < k:
        shots += [group[depth] for group in groups if depth < len(group)][: k - len(shots)]
        depth += 1
    return shots


def similar_shots(pool: list[Example], queries: list[str], k: int, embedder: Embedder,
                  pool_vectors: np.ndarray | None = None) -> list[list[Example]]:
    """For each query its K nearest training examples by embedding, the nearest placed last (next to the query).
    `pool_vectors`: the pool's embeddings when already known (a predictor embeds its pool once)."""
    if pool_vectors is None:
        pool_vectors = embedder.encode([e.text for e in pool])  # (n_pool, dim)
    query_vectors = embedder.encode(queries)  # (n_queries, dim)
    similarity = query_vectors @ pool_vectors.T  # (n_queries, n_pool)
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return [[pool[j] for j in reversed(row)] for row in nearest]


# ----------------------------------------------------------------------------------------------------------------
# The predictor


class PromptPredictor:
    """A base model plus a prompt. Classification: label probabilities; regression: the expected rating."""

    rung = "prompt"

    def __init__(self, model: Model, verbalizer: Verbalizer, config: PromptConfig, shots: list[Example], *,
                 embedder: Embedder | None = None, calibration: list[float] | None = None):
        self.model, self.verbalizer, self.config = model, verbalizer, config
        self.kind, self.label_names = verbalizer.kind, verbalizer.label_names
        self.shots = shots  # the fixed shots, or for `similar` the pool they are drawn from
        self._embedder = embedder
        self.calibration = calibration  # log of the mean label distribution on content-free inputs
        self.shots_dropped = 0  # shots left out so that the prompt fits max_length (few_shot says so)
        self.notes: list[str] = []  # what the user should know about this predictor (a calibration that hurt)
        self.calibration_check: dict | None = None  # quality with and without the calibration, held out
        self._pool_vectors: np.ndarray | None = None
        self._prefix: PrefixCache | None = None
        self.precision_record: dict | None = None  # how `auto` was resolved (scoring/precision.py)

    @property
    def fmt(self) -> PromptFormat:
        return self.verbalizer.fmt

    @property
    def params_total(self) -> int:
        return self.model.params_total

    @property
    def params_trainable(self) -> int:
        return 0  # prompting trains nothing

    @property
    def max_length(self) -> int:
        return self.config.max_length or context_window(self.model.lm)

    def _fitted(self, texts: list[str], query_prefixes: list[str] | None) -> tuple[list[str], int]:
        if query_prefixes is None:
            return self.verbalizer.fit(texts, self.max_length, prefix=self.prefix_text())
        fitted = [self.verbalizer.fit([text], self.max_length, prefix=self.prefix_text() + shots)
                  for text, shots in zip(texts, query_prefixes)]
        return [texts[0] for texts, _ in fitted], sum(cut for _, cut in fitted)

    def _query_prefixes(self, texts: list[str]) -> list[str] | None:
        if self.config.select != "similar" or self.config.shots == 0:
            return None
        if self._pool_vectors is None:  # the pool is embedded once per predictor, not once per batch
            self._pool_vectors = self.embedder.encode([e.text for e in self.shots])
        return [self.fmt.shots_block(self.verbalizer.shot_pairs(shots))
                for shots in similar_shots(self.shots, texts, self.config.shots, self.embedder, self._pool_vectors)]

    def count_truncated(self, texts: list[str]) -> int:
        return self._fitted(texts, self._query_prefixes(texts))[1]

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens of `texts` as the model reads them, after the length policy's cut (shots not counted)."""
        return text_tokens(self.model.tokenizer, self._fitted(texts, self._query_prefixes(texts))[0])

    @property
    def fingerprint(self) -> str:
        description = json.dumps([self.model.fingerprint, self._describe()], sort_keys=True)
        return hashlib.sha256(description.encode()).hexdigest()[:16]

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = MiniLMEmbedder()
        return self._embedder

    def prefix_text(self) -> str:
        """The shared part of every prompt: the instruction, and the shots unless they differ per query."""
        if self.config.select == "similar":
            return self.fmt.instruction
        return self.fmt.instruction + self.fmt.shots_block(self.verbalizer.shot_pairs(self.shots))

    @torch.no_grad()
    def log_likelihoods(self, texts: list[str]) -> torch.Tensor:
        """Summed log-likelihood of every label (rating) after each text's prompt: (n, n_labels)."""
        lm, verbalizer = self.model.inference_lm(self.config.precision), self.verbalizer
        prefix_text = self.prefix_text()
        query_prefixes = self._query_prefixes(texts)
        pairs = verbalizer.pairs(prefix_text, self._fitted(texts, query_prefixes)[0], query_prefixes)
        with autocast(self.model.device, self.config.precision):
            if self._prefix is None:
                self._prefix = encode_prefix(lm, verbalizer.prefix_ids(prefix_text))
            scores, counts = label_log_likelihoods(lm, self._prefix, pairs, self.model.tokenizer.pad_token_id)
        return (scores / counts if self.config.length_normalize else scores).float().cpu()

    def set_precision(self, precision: str) -> None:
        """Score in `precision` from now on (the cached prefix was computed in the old one)."""
        self.config, self._prefix = dataclasses.replace(self.config, precision=precision), None

    def predict_batch(self, texts: list[str]) -> Predictions:
        return self.verbalizer.predictions(self.log_likelihoods(texts), self.calibration)

    def calibrate(self, texts: list[str] | None = None, *, scores: torch.Tensor | None = None) -> None:
        """Divide out the label distribution the prompt favours whatever the input: measured on content-free
        inputs (contextual calibration, Zhao et al. 2021) or, given `texts` (or their `scores`, already computed),
        on real unlabeled inputs (batch calibration, Zhou et al. 2023: the mean label probability over a batch of
        inputs is the bias)."""
        self.calibration = None
        if scores is None:
            fields = self.verbalizer.fmt.fields  # several fields: every field content-free
            probe = ([probe_record(text, fields) if fields else text for text in CONTENT_FREE_INPUTS]
                     if texts is None else texts)
            scores = self.log_likelihoods(probe)
        self.calibration = torch.log(torch.softmax(scores, dim=-1).mean(0)).tolist()

    # -- artifact -------------------------------------------------------------------------------------------------
    def _describe(self) -> dict:
        config = asdict(self.config)
        if config["precision"] != "bf16":  # fp32 artifacts keep the fingerprints they had before precision existed
            del config["precision"]
        return {**self.verbalizer.describe(), "config": config,
                "shots": [[e.text, e.label] for e in self.shots], "calibration": self.calibration}

    def save(self, directory: Path) -> None:
        write_artifact_json(directory, {
            "rung": self.rung, **save_base_reference(self.model, directory),
            "params_total": self.params_total, "params_trainable": self.params_trainable,
            "fingerprint": self.fingerprint, **self._describe(),
        })

    @classmethod
    def load(cls, directory: Path, payload: dict) -> PromptPredictor:
        model = load_base_model(directory, payload)
        shots = [Example(text, label) for text, label in payload["shots"]]
        return cls(model, Verbalizer.from_description(model.tokenizer, payload), PromptConfig(**payload["config"]),
                   shots, calibration=payload["calibration"])


def check_fits(config: PromptConfig, task: Task) -> None:
    """Raises ConfigError when K exceeds the training set or the task's template cannot be scored."""
    problems = template_problems(config.template or task.template, task.text_fields)
    if config.shots > len(task.train):
        problems.append(f"--shots {config.shots} is larger than the training set ({len(task.train)} examples)")
    if problems:
        raise ConfigError(problems)


def _drop_shots_that_do_not_fit(predictor: PromptPredictor, texts: list[str]) -> None:
    """Shots count against the context window: while instruction + shots + a typical long text (the 99th
    percentile of the training texts) would not fit in max_length, the shot farthest from the query goes.
    The predictor records how many shots were dropped; the text rule (fit_text) handles the rest."""
    verbalizer = predictor.verbalizer
    text_tokens = verbalizer.derive_max_length(texts, context=10**9) - verbalizer.overhead()
    while predictor.shots and verbalizer.overhead(predictor.prefix_text()) + text_tokens > predictor.max_length:
        predictor.shots = predictor.shots[1:]
        predictor.shots_dropped += 1


CALIBRATION_CHECK_EXAMPLES = 64  # held-out training examples on which a calibration is checked before it is kept


def _calibrate_and_check(predictor: PromptPredictor, held_out: list[Example], task: Task, rng: random.Random) -> None:
    """Calibrate, then compare quality with and without it on training examples that are not shots; when the
    calibration lowered it, say so in the predictor's notes (calibration can halve accuracy: issue #14). The check
    examples are scored once: batch calibration is measured on those scores, and both qualities are read from them
    (three passes over the examples before, most of a calibrated prompt's cost in the prompt search)."""
    check = rng.sample(held_out, min(CALIBRATION_CHECK_EXAMPLES, len(held_out)))
    batch = predictor.config.calibration == "batch"
    if batch and not check:
        raise ConfigError(f"batch calibration is measured on training examples that are not shots, and K="
                          f"{predictor.config.shots} uses all {len(predictor.shots)}: use fewer shots or "
                          "--calibration contextual")
    scores = _scores(predictor, [e.text for e in check]) if batch or len(check) >= 2 else None
    if batch:
        predictor.calibrate(scores=scores)
    else:
        predictor.calibrate()
    if len(check) < 2:
        return
    with_it = _held_out_quality(predictor.verbalizer.predictions(scores, predictor.calibration), check, task)
    without = _held_out_quality(predictor.verbalizer.predictions(scores), check, task)
    predictor.calibration_check = {"n": len(check), "with": with_it, "without": without}
    if with_it < without:
        predictor.notes.append(f"{predictor.config.calibration} calibration lowered quality on {len(check)} held-out "
                               f"training examples from {without:.3f} to {with_it:.3f}; consider --no-calibrate")


def _scores(predictor: PromptPredictor, texts: list[str]) -> torch.Tensor:
    """The label log-likelihoods of `texts` (n, n_labels), in the length-sorted batches predict() runs."""
    batches = length_batches(texts, predictor.config.batch_size)
    batch_scores = torch.cat([predictor.log_likelihoods([texts[i] for i in batch]) for batch in batches])
    order = torch.tensor([i for batch in batches for i in batch])
    return batch_scores[torch.argsort(order)]


def _held_out_quality(predictions: Predictions, examples: list[Example], task: Task) -> float:
    if task.is_multilabel:  # each variant compared at its own best thresholds on these examples
        predictions.thresholds = choose_thresholds(predictions.probs, label_matrix(task, examples))
    return deciding_metric(task)(*gold_and_outputs(task, predictions, examples))


THRESHOLD_EXAMPLES = 128  # held-out training examples on which a multi-label prompt's thresholds are chosen


def few_shot(model: Model, task: Task, config: PromptConfig = PromptConfig(), *,
             embedder: Embedder | None = None) -> PromptPredictor:
    """A zero-, one- or few-shot predictor for `task` on `model` (K = config.shots).

    Raises:
        ConfigError: K larger than the training set, or a template that does not fit.
    """
    check_fits(config, task)
    train = list(task.train)
    rng = random.Random(config.seed)
    if config.select == "similar":
        shots = train  # the pool; each query gets its own nearest K
    elif task.kind != "regression":  # several labels: balanced over label sets
        shots = select_shots(train, config.shots, config.select, rng)
    else:  # regression: balanced means spread over the rating scale
        shots = select_shots(train, config.shots, config.select, rng,
                             key=lambda e: rating_label(e.label, task.value_range))
    words = tuple(w.strip() for w in config.label_words.split(",")) if config.label_words else None
    if words is not None and (len(words) != len(task.labels) or not all(words)) and task.kind != "regression":
        raise ConfigError(f"--label-words needs {len(task.labels)} words for the labels {list(task.labels)}, "
                          f"got {config.label_words!r}")
    verbalizer = Verbalizer.for_task(model.tokenizer, task, template=config.template, instruction=config.instruction,
                                     label_words=words)
    check_max_length(config.max_length, model.lm)
    predictor = PromptPredictor(model, verbalizer, config, shots, embedder=embedder)
    if config.select != "similar":
        _drop_shots_that_do_not_fit(predictor, [e.text for e in train])
    predictor.precision_record = choose_precision(predictor, config.precision, [e.text for e in train],
                                                  model.device, task.value_range)
    held_out = [e for e in train if e not in predictor.shots or config.select == "similar"]
    if config.calibrate:
        _calibrate_and_check(predictor, held_out, task, random.Random(config.seed + 1))
    if task.is_multilabel and held_out:
        sample = random.Random(config.seed + 2).sample(held_out, min(THRESHOLD_EXAMPLES, len(held_out)))
        choose_label_thresholds(predictor, sample, task)
    return predictor


# ----------------------------------------------------------------------------------------------------------------
# The prompt command's work: several K compared on one task


def prompt_configs(shots: str, *, save: Path | None = None, **fields) -> list[PromptConfig]:
    """One PromptConfig per K of `shots` ("0", or a comma list "0,1,4"); `\\n` and `\\t` in a template or
    instruction given on a command line become a newline and a tab.

    Raises:
        ConfigError: K that is not a whole number, no K, or --save with several K.
    """
    for name in ("template", "instruction"):
        if fields.get(name) is not None:
            fields[name] = fields[name].replace("\\n", "\n").replace("\\t", "\t")
    counts = parse_shot_counts(shots, "--shots")
    if save is not None and len(counts) > 1:
        raise ConfigError("--save needs a single --shots value")
    return [PromptConfig(shots=k, **fields) for k in counts]


def run_prompts(load_model, task: Task, configs: list[PromptConfig], *, save: Path | None = None,
                on_progress=None) -> list[dict]:
    """Evaluate each config on `task`; `load_model()` is called only once every config is known to fit.

    `on_progress(config)` returns the progress callback for that config's scoring. With `save`, the (single)
    predictor is written there. Returns one evaluate() result per config, with its K, selection and calibration.
    """
    for config in configs:
        check_fits(config, task)  # before the slow model load
    model = load_model()
    results = []
    for config in configs:
        predictor = few_shot(model, task, config)
        metrics = evaluate(predictor, task, batch_size=config.batch_size,
                           on_progress=on_progress(config) if on_progress else None)
        results.append({**metrics, "shots": config.shots, "select": config.select, "calibrate": config.calibrate,
                        "shots_dropped": predictor.shots_dropped, "notes": predictor.notes, "model": model.name})
        if save is not None:
            save_predictor(predictor, save, task.text_fields)
    return results

