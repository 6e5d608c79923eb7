"""The verbalizer: score every label by the log-likelihood of its tokens after a prompt, on any causal LM.

Shared by every rung built on a causal LM (prompted, fine-tuned, pruned students), so that they are compared on
the same footing. Regression uses a numeric verbalizer: ratings "1".."9", read as an expected value.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import asdict, dataclass

import torch

from tunelab.predictor import Predictions

SCALE_POINTS = 9  # regression verbalizer: ratings "1".."9", one digit token each in SmolLM2's tokenizer


def template_problems(template: str) -> list[str]:
    problems = []
    if template.count("{text}") != 1:
        problems.append(f"--template must contain {{text}} exactly once, got {template!r}")
    if not template.rstrip().endswith("{label}") or template.count("{label}") != 1:
        problems.append(f"--template must end with {{label}} (the label is scored after it), got {template!r}")
    return problems


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


# --------------------------------------------------------------------------------------------------------------
# Scoring: log-likelihood of continuations after prefix + query


def _cache_name(decoder) -> str:
    """transformers 5.x renames the key/value cache argument and output `past_key_values` -> `cache`."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


@dataclass
class PrefixCache:
    """The shared prompt prefix, encoded once: its token ids and key/value cache (batch of one).

    `owned`: the cache was made for one scoring call, which may extend it in place (training, where it carries
    gradients and so cannot be copied); otherwise it is shared between calls and copied before use.
    """

    ids: list[int]
    kv: object | None  # a transformers Cache, or None for an empty prefix
    owned: bool = False


def _encode(lm: torch.nn.Module, prefix_ids: list[int], owned: bool) -> PrefixCache:
    if not prefix_ids:
        return PrefixCache([], None)
    device = next(lm.parameters()).device
    decoder = lm.get_decoder()
    out = decoder(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True)
    return PrefixCache(list(prefix_ids), out[_cache_name(decoder)], owned)


@torch.no_grad()
def encode_prefix(lm: torch.nn.Module, prefix_ids: list[int]) -> PrefixCache:
    """The prefix's cache for inference, shared by every later scoring call."""
    return _encode(lm, prefix_ids, owned=False)


def training_log_likelihoods(lm, prefix_ids: list[int], queries: list[list[int]], continuations: list[list[int]],
                             pad_id: int) -> torch.Tensor:
    """`label_log_likelihoods` of `prefix_ids + query` rows, with gradients, the prefix encoded once per call.

    The same numbers as scoring the full rows, but the instruction every row starts with is run through the model
    once (batch of one) instead of once per row, and its gradient is accumulated over the batch. With a 13-token
    instruction and ~7-token queries that is 2.5x fewer tokens per training step.
    """
    return label_log_likelihoods(lm, _encode(lm, prefix_ids, owned=True), queries, continuations, pad_id)


@torch.no_grad()
def score_continuations(lm, prefix: PrefixCache, queries: list[list[int]], continuations: list[list[int]],
                        pad_id: int) -> torch.Tensor:
    """`label_log_likelihoods` for inference: no gradients, result on the CPU."""
    return label_log_likelihoods(lm, prefix, queries, continuations, pad_id).cpu()


def label_log_likelihoods(
    lm: torch.nn.Module,
    prefix: PrefixCache,
    queries: list[list[int]],
    continuations: list[list[int]],
    pad_id: int,
) -> torch.Tensor:
    """Summed log p(continuation | prefix + query) for every query and continuation: (n_queries, n_continuations).

    One batched forward pass over the queries, on top of the cached prefix. Tokens that every continuation starts
    with (" 1".." 9" all begin with a space token in SmolLM2) are scored once, as part of the query. When what is
    left is a single token per continuation (the usual case), each query needs one row; otherwise each (query,
    continuation) pair gets its own. The output head is applied only at positions that predict a scored token.
    """
    device = next(lm.parameters()).device
    if any(not query for query in queries):
        raise ValueError("every query must encode to at least one token")
    shared = _shared_start(continuations)
    rests = [c[len(shared):] for c in continuations]
    single_token = all(len(rest) == 1 for rest in rests)
    rows, targets = [], []  # targets: (row, position, token, query index, continuation index)
    for qi, query in enumerate(queries):
        stem = query + shared
        shared_targets = [(len(query) - 1 + t, token) for t, token in enumerate(shared)]
        for ci, rest in enumerate(rests):
            if not single_token or ci == 0:
                rows.append(stem + rest[:-1])
            targets += [(len(rows) - 1, position, token, qi, ci) for position, token in shared_targets]
            targets += [(len(rows) - 1, len(stem) - 1 + t, token, qi, ci) for t, token in enumerate(rest)]
    hidden = _hidden_states(lm, prefix, rows, pad_id, device)  # (rows, seq, hidden)
    row_index, position, token, query_index, continuation_index = (
        torch.tensor(column, device=device) for column in zip(*targets))
    log_probs = torch.log_softmax(lm.get_output_embeddings()(hidden[row_index, position]).float(), dim=-1)
    token_log_probs = log_probs.gather(1, token[:, None]).squeeze(1)  # (n_targets,)
    scores = torch.zeros(len(queries), len(continuations), device=device, dtype=torch.float32)
    return scores.index_put((query_index, continuation_index), token_log_probs, accumulate=True)


def _shared_start(continuations: list[list[int]]) -> list[int]:
    """The longest token prefix common to all continuations, leaving at least one token of each."""
    shared = []
    for tokens in zip(*(c[:-1] for c in continuations)):
        if len(set(tokens)) != 1:
            break
        shared.append(tokens[0])
    return shared


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
    if prefix.kv is not None:  # the forward pass appends to the cache: a shared one is copied first
        cache = prefix.kv if prefix.owned else copy.deepcopy(prefix.kv)
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


# --------------------------------------------------------------------------------------------------------------
# Ratings (regression)


def rating_label(value: float, value_range: tuple[float, float]) -> str:
    """The rating "1".."9" nearest to `value` on the task's scale."""
    return str(int(min(SCALE_POINTS, max(1, round(rating_value(value, value_range))))))


def rating_value(value: float, value_range: tuple[float, float]) -> float:
    """`value` mapped linearly from the task's scale onto the rating scale 1..9."""
    low, high = value_range
    return 1.0 + (float(value) - low) / (high - low) * (SCALE_POINTS - 1)


def expected_rating(rating_scores: torch.Tensor) -> torch.Tensor:
    """The expected rating (1..9) under the softmax of the ratings' scores: (n, 9) -> (n,). Differentiable."""
    ratings = torch.arange(1, SCALE_POINTS + 1, dtype=rating_scores.dtype, device=rating_scores.device)
    return torch.softmax(rating_scores, dim=-1) @ ratings


def rating_to_value(rating, value_range: tuple[float, float]):
    """A rating on 1..9 mapped back onto the task's scale (the inverse of rating_value)."""
    low, high = value_range
    return low + (rating - 1) / (SCALE_POINTS - 1) * (high - low)


# --------------------------------------------------------------------------------------------------------------
# One task's verbalizer


class Verbalizer:
    """Texts to label scores, and label scores to Predictions, for one tokenizer, task and prompt format."""

    def __init__(self, tokenizer, *, kind: str, label_names: tuple[str, ...], fmt: PromptFormat,
                 value_range: tuple[float, float] | None = None):
        self.tokenizer, self.kind, self.fmt = tokenizer, kind, fmt
        self.label_names, self.value_range = tuple(label_names), value_range
        self.words = list(label_names) if kind == "classification" else [str(i) for i in range(1, SCALE_POINTS + 1)]
        self.continuations = [self.encode(fmt.label_text(word)) for word in self.words]
        if any(len(c) == 0 for c in self.continuations):
            raise ValueError(f"a label tokenizes to nothing: {self.words}")

    def encode(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special).input_ids

    def queries(self, texts: list[str], max_tokens: int | None = None) -> list[list[int]]:
        """Token ids of each text's query; a long one keeps its last `max_tokens` (the cue before the label)."""
        encoded = [self.encode(self.fmt.query(text)) for text in texts]
        return encoded if max_tokens is None else [ids[-max_tokens:] for ids in encoded]

    @property
    def instruction_ids(self) -> list[int]:
        """The zero-shot prompt's shared start (tuned and pruned models are scored after the bare instruction)."""
        return self.encode(self.fmt.instruction, special=True)

    def bounded_queries(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Queries cut so that instruction + query fits in `max_length` tokens; the same rule in training and use."""
        return self.queries(texts, max_tokens=max(1, max_length - len(self.instruction_ids)))

    def shot_pairs(self, examples) -> list[tuple[str, str]]:
        if self.kind == "classification":
            return [(e.text, e.label) for e in examples]
        return [(e.text, rating_label(e.label, self.value_range)) for e in examples]

    def predictions(self, scores: torch.Tensor, calibration: list[float] | None = None) -> Predictions:
        """Label probabilities (softmax over labels), optionally with the content-free bias divided out."""
        if calibration is not None:
            scores = torch.log_softmax(scores, dim=-1) - torch.tensor(calibration)
        if self.kind == "classification":
            return Predictions("classification", self.label_names, probs=torch.softmax(scores, dim=-1).numpy())
        values = rating_to_value(expected_rating(scores.double()), self.value_range)
        return Predictions("regression", values=values.numpy())

    def describe(self) -> dict:
        return {"kind": self.kind, "labels": list(self.label_names), "value_range": self.value_range,
                "format": asdict(self.fmt)}

    @classmethod
    def from_description(cls, tokenizer, description: dict) -> Verbalizer:
        value_range = tuple(description["value_range"]) if description["value_range"] else None
        return cls(tokenizer, kind=description["kind"], label_names=tuple(description["labels"]),
                   fmt=PromptFormat(**description["format"]), value_range=value_range)


