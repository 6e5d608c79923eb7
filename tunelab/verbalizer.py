"""The scoring core: every label's log-likelihood after a prompt, exactly as the causal LM itself defines it.

The invariant every causal-LM rung (prompted, tuned, pruned) keeps, and every test checks against
`score_reference`: a label's score is the summed log-probability, under the model's own `forward()` logits
(softcapping, scaling and all), of the label's tokens in the tokenization of the *whole* string
`prefix + query + label`. Regression uses a numeric verbalizer: ratings "1".."9", read as an expected value.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from tunelab.errors import ConfigError, InputError, ModelError
from tunelab.models import Model, load_model, make_model
from tunelab.predictor import Predictions, load_base_model, save_base_reference, write_artifact_json

SCALE_POINTS = 9  # regression verbalizer: ratings "1".."9"
TRUNCATION_MARKER = " [...] "  # stands between the head and the tail of a text cut to fit (see fit_text)
LENGTH_QUANTILE = 0.99  # a derived max_length holds this share of the training prompts whole
TRAIN_MAX_TOKENS = 512  # memory cap of a derived training max_length: with gradient checkpointing and token-budget
# micro-batches, LoRA on SmolLM2 at 512 tokens stays within a few GiB of this 2-core / 24 GiB machine
FALLBACK_CONTEXT = 2048  # when a config names no context window


@dataclass(frozen=True)
class PromptFormat:
    """How examples become text: `query(text) + label_text(label)` is one shot."""

    instruction: str
    query_format: str  # the template up to {label}, trailing whitespace removed
    label_lead: str  # the whitespace before {label}: it belongs to the label's text, as in lm-eval-harness
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
# Whole-string tokenization


@dataclass(frozen=True)
class Pair:
    """One (query, label) prompt tokenized whole: `ids` of prefix + query + label, and the index of the label's
    first token (a token that straddles the query/label boundary counts as the label's: it holds label text)."""

    ids: tuple[int, ...]
    label_start: int


@lru_cache(maxsize=16)
def _special_lead(tokenizer) -> tuple[int, ...]:
    """The special tokens the tokenizer puts before a text (BOS for Llama, Gemma; none for GPT-2, Qwen)."""
    plain = tokenizer("x", add_special_tokens=False).input_ids
    special = tokenizer("x", add_special_tokens=True).input_ids
    for start in range(len(special) - len(plain) + 1):
        if special[start : start + len(plain)] == plain:
            return tuple(special[:start])
    return ()


def tokenize_pairs(tokenizer, prefix: str, queries: list[str], label_texts: list[str]) -> list[list[Pair]]:
    """Tokenize `prefix + query + label` whole for every query and label: pairs[query][label].

    Raises:
        InputError: a label that contributes no token of its own in some prompt.
    """
    lead = list(_special_lead(tokenizer))
    texts = [prefix + query + label for query in queries for label in label_texts]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    pairs, index = [], 0
    for query in queries:
        row = []
        label_char = len(prefix) + len(query)
        for label in label_texts:
            ids, offsets = encoded["input_ids"][index], encoded["offset_mapping"][index]
            index += 1
            start = next((i for i, (_, end) in enumerate(offsets) if end > label_char), len(ids))
            if start == len(ids):
                raise InputError(f"label {label!r} adds no token after the prompt {(prefix + query)[-40:]!r}")
            if start + len(lead) == 0:
                raise InputError(f"nothing comes before label {label!r}: give an instruction or a template")
            row.append(Pair(tuple(lead + ids), len(lead) + start))
        pairs.append(row)
    return pairs


def context_window(lm: torch.nn.Module) -> int:
    """The most positions the model was built for (its config's max_position_embeddings or n_positions)."""
    config = lm.config
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
               or FALLBACK_CONTEXT)


def fit_texts(tokenizer, texts: list[str], max_tokens: int) -> list[tuple[str, bool]]:
    """Each text cut to at most about `max_tokens` tokens, keeping its head and its tail with a marker between
    (a subject line and a signature both carry signal); the cut falls on token boundaries of the text's own
    tokenization, all texts tokenized in one call. Returns (text, whether it was cut) per text."""
    if not texts:
        return []
    marker = len(tokenizer(TRUNCATION_MARKER, add_special_tokens=False).input_ids)
    head, tail = (max(2, max_tokens - marker) + 1) // 2, max(2, max_tokens - marker) // 2
    fitted = []
    for text, offsets in zip(texts, tokenizer(texts, add_special_tokens=False,
                                              return_offsets_mapping=True)["offset_mapping"]):
        if len(offsets) <= max_tokens:
            fitted.append((text, False))
        else:
            fitted.append((text[: offsets[head - 1][1]] + TRUNCATION_MARKER + text[offsets[len(offsets) - tail][0]:],
                           True))
    return fitted


def text_tokens(tokenizer, texts: list[str]) -> int:
    """How many tokens `texts` hold, tokenized in one call (throughput in tokens/s)."""
    return sum(map(len, tokenizer(texts, add_special_tokens=False).input_ids)) if texts else 0


def fit_text(tokenizer, text: str, max_tokens: int) -> tuple[str, bool]:
    """fit_texts for one text."""
    return fit_texts(tokenizer, [text], max_tokens)[0]


def length_quantile(lengths: list[int], default: int) -> int:
    """The LENGTH_QUANTILE point of `lengths` (`default` when there are none): what a derived max_length holds."""
    ordered = sorted(lengths)
    return ordered[int(LENGTH_QUANTILE * (len(ordered) - 1))] if ordered else default


# --------------------------------------------------------------------------------------------------------------
# Scoring: one left-padded forward pass over the rows, on top of the shared prefix's key/value cache


def cache_argument_name(lm) -> str:
    """transformers 5 renames the key/value cache argument `past_key_values` -> `cache` (a PEFT wrapper's forward
    takes **kwargs: ask the model it wraps)."""
    model = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(output):
    """The key/value cache a forward pass returned (`cache` in transformers 5, `past_key_values` before)."""
    return output["cache"] if "cache" in output else output["past_key_values"]


@dataclass
class PrefixCache:
    """The shared start of every prompt: its token ids and, for inference, their key/value cache (batch of one).

    With `kv=None` (training) the part of the prefix a batch can use is encoded in the scoring call itself, with
    gradients, once per call instead of once per row.
    """

    ids: list[int]
    kv: object | None = None


@torch.no_grad()
def encode_prefix(lm: torch.nn.Module, prefix_ids: list[int]) -> PrefixCache:
    """The prefix's cache for inference, shared (copied, then cropped) by every later scoring call."""
    if not prefix_ids:
        return PrefixCache([], None)
    device = next(lm.parameters()).device
    out = lm(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True, logits_to_keep=1)
    return PrefixCache(list(prefix_ids), returned_cache(out))


def _common_length(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _usable_prefix(prefix: PrefixCache, pairs: list[list[Pair]]) -> int:
    """How many prefix tokens every whole-string tokenization starts with, leaving at least the token before each
    label in the rows. A tokenizer may merge the prefix's last characters with the query's first (byte-level BPE
    turns "\\n\\n" + "Word" into "\\n", "\\n", "Word"); then the cache is cut back to where they agree."""
    keep = len(prefix.ids)
    for row in pairs:
        for pair in row:
            keep = min(keep, _common_length(prefix.ids, pair.ids), pair.label_start - 1)
    return max(keep, 0)


def _cache_for(lm, prefix: PrefixCache, keep: int, n_rows: int):
    if keep == 0:
        return None
    if prefix.kv is None:  # training: encode the usable prefix here, with gradients
        device = next(lm.parameters()).device
        out = lm(input_ids=torch.tensor([prefix.ids[:keep]], device=device), use_cache=True, logits_to_keep=1)
        cache = returned_cache(out)
    else:  # the forward pass appends to the cache: a shared one is copied first
        cache = copy.deepcopy(prefix.kv)
        if keep < len(prefix.ids):
            cache.crop(keep - len(prefix.ids))  # a negative count drops that many of the newest positions
    cache.batch_repeat_interleave(n_rows)
    return cache


def label_log_likelihoods(lm: torch.nn.Module, prefix: PrefixCache, pairs: list[list[Pair]], pad_id: int):
    """Summed log p(label tokens | everything before them) for every pair: ((queries, labels), token counts).

    Each pair needs one row, `ids[keep:-1]`, whose last tokens predict the label's tokens; identical rows are run
    once (when every label is one token after the same context, a query needs one row, whatever the label count).
    Rows are left-padded so that every scored position is among the last `n_keep` columns, and the model's own
    forward computes logits only there (`logits_to_keep`), with whatever final transform its architecture has.
    """
    device = next(lm.parameters()).device
    keep = _usable_prefix(prefix, pairs)
    rows: dict[tuple[int, ...], int] = {}
    targets = []  # (row, position in row, token, query, label)
    for qi, row_pairs in enumerate(pairs):
        for li, pair in enumerate(row_pairs):
            row = pair.ids[keep:-1]
            r = rows.setdefault(row, len(rows))
            targets += [(r, t - 1 - keep, pair.ids[t], qi, li) for t in range(pair.label_start, len(pair.ids))]
    row_list = list(rows)
    lengths = [len(row) for row in row_list]
    n_keep = max(lengths[r] - position for r, position, *_ in targets)
    width = max(lengths)
    input_ids = torch.full((len(row_list), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(row_list), keep + width), dtype=torch.long)
    attention_mask[:, :keep] = 1
    position_ids = torch.full((len(row_list), width), keep, dtype=torch.long)
    for i, row in enumerate(row_list):
        input_ids[i, width - len(row):] = torch.tensor(row)
        attention_mask[i, keep + width - len(row):] = 1
        position_ids[i, width - len(row):] = torch.arange(keep, keep + len(row))
    cache = _cache_for(lm, prefix, keep, len(row_list))
    out = lm(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
             position_ids=position_ids.to(device), use_cache=cache is not None, logits_to_keep=n_keep,
             **{cache_argument_name(lm): cache})
    log_probs = torch.log_softmax(out.logits.float(), dim=-1)  # (rows, n_keep, vocab)
    row_index, position, token, query_index, label_index = (torch.tensor(c, device=device) for c in zip(*targets))
    column = position - torch.tensor(lengths, device=device)[row_index] + n_keep
    token_log_probs = log_probs[row_index, column, token]  # (n_targets,)
    shape = (len(pairs), len(pairs[0]))
    scores = torch.zeros(shape, device=device).index_put((query_index, label_index), token_log_probs, accumulate=True)
    counts = torch.zeros(shape, device=device).index_put((query_index, label_index), torch.ones_like(token_log_probs),
                                                         accumulate=True)
    return scores, counts


@torch.no_grad()
def score_reference(lm: torch.nn.Module, tokenizer, prefix: str, query: str, label: str) -> float:
    """The exactness invariant computed the obvious way: the whole string tokenized once, the model's full
    forward logits at every position, the log-probabilities of the tokens from the one holding the label's first
    character on. The reference that tests and the benchmark's naive baseline compare the fast path against."""
    encoding = tokenizer(prefix + query + label, add_special_tokens=False)
    first = len(prefix) + len(query)
    token = None
    while token is None and first < len(prefix + query + label):  # a dropped character (a space) maps to no token
        token, first = encoding.char_to_token(first), first + 1
    lead = list(_special_lead(tokenizer))
    ids = torch.tensor([lead + encoding.input_ids], device=next(lm.parameters()).device)
    log_probs = torch.log_softmax(lm(input_ids=ids).logits[0].float(), dim=-1)  # (seq, vocab)
    start = len(lead) + token
    return float(sum(log_probs[t - 1, ids[0, t]] for t in range(start, ids.shape[1])))


def resolve_max_length(verbalizer: Verbalizer, texts: list[str], wanted: int | None, lm) -> int:
    """`wanted` (--max-length) checked against the model's context window, or a length derived from `texts`.

    Raises:
        ConfigError: --max-length larger than the context window.
    """
    context = context_window(lm)
    if wanted is not None and wanted > context:
        raise ConfigError(f"--max-length {wanted} is larger than the model's context window ({context} tokens)")
    return wanted or verbalizer.derive_max_length(texts, context=context, cap=TRAIN_MAX_TOKENS)


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
                 value_range: tuple[float, float] | None = None, label_words: tuple[str, ...] | None = None):
        self.tokenizer, self.kind, self.fmt = tokenizer, kind, fmt
        self.label_names, self.value_range = tuple(label_names), value_range
        self.label_words = tuple(label_words) if label_words else None  # words the prompt uses for the labels
        if kind == "classification":
            self.words = list(self.label_words or label_names)
        else:
            self.words = [str(i) for i in range(1, SCALE_POINTS + 1)]
        self.label_texts = [fmt.label_text(word) for word in self.words]
        self._overheads: dict[str, int] = {}  # per prefix: computed once, asked for on every batch

    @classmethod
    def for_task(cls, tokenizer, task, *, template: str | None = None, instruction: str | None = None,
                 label_words: tuple[str, ...] | None = None):
        """The verbalizer of `task` (its template, instruction and label names unless others are given)."""
        fmt = PromptFormat.from_template(template or task.template,
                                         task.instruction if instruction is None else instruction)
        return cls(tokenizer, kind=task.kind, label_names=task.labels, fmt=fmt, value_range=task.value_range,
                   label_words=label_words)

    def encode(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special).input_ids

    def prefix_ids(self, prefix: str) -> list[int]:
        """The token ids of a prompt's shared start, as they begin the whole prompt (special tokens first)."""
        return list(_special_lead(self.tokenizer)) + self.encode(prefix)

    def pairs(self, prefix: str, texts: list[str], query_prefixes: list[str] | None = None) -> list[list[Pair]]:
        """Every (text, label) prompt tokenized whole; `query_prefixes` (per-text shots) go between prefix and query."""
        queries = [self.fmt.query(text) for text in texts]
        if query_prefixes is not None:
            queries = [shots + query for shots, query in zip(query_prefixes, queries)]
        return tokenize_pairs(self.tokenizer, prefix, queries, self.label_texts)

    def overhead(self, prefix: str | None = None) -> int:
        """Tokens a prompt holds besides its text: the prefix (default: the instruction), the query's template and
        the longest label (special tokens included)."""
        prefix = self.fmt.instruction if prefix is None else prefix
        if prefix not in self._overheads:
            if len(self._overheads) >= 64:  # per-query shot prefixes (similar selection) would grow it without end
                self._overheads.clear()
            self._overheads[prefix] = max(len(pair.ids) for pair in self.pairs(prefix, [""])[0])
        return self._overheads[prefix]

    def fit(self, texts: list[str], max_length: int, prefix: str | None = None) -> tuple[list[str], int]:
        """Texts cut (head and tail, fit_text) so that prefix + query + the longest label fits in `max_length`
        tokens: the template and the cue before the label always survive. Returns the texts and how many were cut."""
        fitted = fit_texts(self.tokenizer, texts, max(1, max_length - self.overhead(prefix)))
        return [text for text, _ in fitted], sum(cut for _, cut in fitted)

    def derive_max_length(self, texts: list[str], *, context: int, cap: int | None = None) -> int:
        """Enough tokens for LENGTH_QUANTILE of the prompts of `texts` (a fixed sample of at most 1,000), capped by
        the model's context window and by `cap` (a memory budget); never less than the template itself needs."""
        sample = texts[:: max(1, len(texts) // 1000)][:1000]
        overhead = self.overhead()
        lengths = [overhead + len(ids) for ids in self.tokenizer(sample, add_special_tokens=False).input_ids]
        wanted = length_quantile(lengths, overhead + 1)
        return max(overhead + 1, min(wanted, context, cap or context))

    def shot_pairs(self, examples) -> list[tuple[str, str]]:
        if self.kind == "classification":
            return [(e.text, self.words[self.label_names.index(e.label)]) for e in examples]
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
        words = {"label_words": list(self.label_words)} if self.label_words else {}
        return {"kind": self.kind, "labels": list(self.label_names), "value_range": self.value_range,
                "format": asdict(self.fmt), **words}

    @classmethod
    def from_description(cls, tokenizer, description: dict) -> Verbalizer:
        value_range = tuple(description["value_range"]) if description["value_range"] else None
        return cls(tokenizer, kind=description["kind"], label_names=tuple(description["labels"]),
                   fmt=PromptFormat(**description["format"]), value_range=value_range,
                   label_words=description.get("label_words"))


# --------------------------------------------------------------------------------------------------------------
# The causal-LM predictor of the tune and distill rungs

_META_KEYS = ("method", "base_name", "params_trainable", "config", "training", "metrics", "versions", "student_type",
              "teacher", "teacher_fingerprint", "spec", "params_teacher", "kept_layers", "max_length")


class CausalLMPredictor:
    """A causal LM (fine-tuned, or a pruned student) scored through the task's zero-shot prompt.

    `meta["config"]["max_length"]` bounds every prompt: texts are cut to fit (fit_text), the same rule in training
    and use. A LoRA run keeps its `adapter` (saved alone, loadable on `base_model`) besides the merged weights.
    """

    def __init__(self, model: Model, verbalizer: Verbalizer, meta: dict, *, rung: str, adapter: dict | None = None,
                 base_model: Model | None = None):
        self.model, self.verbalizer, self.meta, self.rung = model, verbalizer, meta, rung
        self.kind, self.label_names = verbalizer.kind, verbalizer.label_names
        self.adapter, self.base_model = adapter, base_model  # LoRA: {"config": LoraConfig, "state": tensors}
        self._prefix: PrefixCache | None = None

    @property
    def max_length(self) -> int:
        """Tokens per prompt (the run's --max-length, or the length derived from its training texts)."""
        return self.meta.get("max_length") or self.meta["config"]["max_length"]

    def count_truncated(self, texts: list[str]) -> int:
        return self.verbalizer.fit(texts, self.max_length)[1]

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens of `texts` as the model reads them, after the length policy's cut."""
        return text_tokens(self.model.tokenizer, self.verbalizer.fit(texts, self.max_length)[0])

    @property
    def params_total(self) -> int:
        return self.model.params_total  # a merged LoRA model: exactly the base model's count

    @property
    def params_trainable(self) -> int:
        return self.meta.get("params_trainable", self.model.params_total)

    @property
    def fingerprint(self) -> str:
        """Covers what decides a prediction: the weights, the label space and kind, the prompt, the length bound."""
        decided_by = [self.model.fingerprint, self.verbalizer.describe(), self.max_length]
        return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:16]

    def label_scores(self, texts: list[str], *, train: bool = False) -> torch.Tensor:
        """(n, n_labels) label log-likelihoods; with `train`, with gradients (the instruction encoded per call)."""
        verbalizer = self.verbalizer
        pairs = verbalizer.pairs(verbalizer.fmt.instruction, verbalizer.fit(texts, self.max_length)[0])
        if train:
            prefix = PrefixCache(verbalizer.prefix_ids(verbalizer.fmt.instruction))
            return label_log_likelihoods(self.model.lm, prefix, pairs, self.model.tokenizer.pad_token_id)[0]
        if self._prefix is None:
            self._prefix = encode_prefix(self.model.lm, verbalizer.prefix_ids(verbalizer.fmt.instruction))
        with torch.no_grad():
            return label_log_likelihoods(self.model.lm, self._prefix, pairs, self.model.tokenizer.pad_token_id)[0]

    def predict_batch(self, texts: list[str]) -> Predictions:
        return self.verbalizer.predictions(self.label_scores(texts).cpu())

    def forget_cache(self) -> None:
        """Drop the instruction's cached keys and values (after the weights changed)."""
        self._prefix = None

    def save(self, directory: Path) -> None:
        directory, weights = Path(directory), []
        if self.adapter is not None:
            (directory / "adapter").mkdir(parents=True, exist_ok=True)
            self.adapter["config"].save_pretrained(directory / "adapter")
            from safetensors.torch import save_file

            save_file(self.adapter["state"], directory / "adapter" / "adapter_model.safetensors")
            weights.append("adapter")
        if self.adapter is None or self.meta["config"].get("merge"):
            self.model.save(directory / "model")
            weights.append("model")
        base = save_base_reference(self.base_model, directory) if self.base_model is not None else {}
        write_artifact_json(directory, {
            "rung": self.rung, **self.meta, **base, "weights": weights, **self.verbalizer.describe(),
            "params_total": self.params_total, "params_trainable": self.params_trainable,
            "fingerprint": self.fingerprint,
        })

    @classmethod
    def load(cls, directory: Path, payload: dict) -> CausalLMPredictor:
        """From an artifact folder: the full model in `model/`, or the LoRA `adapter/` on the base it names."""
        if "model" in payload.get("weights", ["model"]):
            model = load_model(directory / "model")
        else:
            from peft import PeftModel

            base = load_base_model(directory, payload)
            try:
                adapted = PeftModel.from_pretrained(copy.deepcopy(base.lm), directory / "adapter",
                                                    local_files_only=True)
            except (OSError, ValueError, KeyError, RuntimeError) as err:
                raise ModelError(f"{directory / 'adapter'}: cannot load the LoRA adapter ({err})") from None
            model = make_model(adapted.merge_and_unload(), base.tokenizer, name=f"{base.name}+lora", device=base.device)
        meta = {key: payload[key] for key in _META_KEYS if key in payload}
        return cls(model, Verbalizer.from_description(model.tokenizer, payload), meta, rung=payload["rung"])

