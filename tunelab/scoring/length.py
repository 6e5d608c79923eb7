"""The one length policy: how long a prompt may be, and how a text that does not fit is cut (head and tail kept) or
read whole in overlapping windows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.errors import ConfigError
from tunelab.tasks.fields import join_fields, split_fields

if TYPE_CHECKING:  # annotations only: an exported (ONNX) predictor uses this policy without torch
    import torch

TRUNCATION_MARKER = " [...] "  # stands between the head and the tail of a text cut to fit (see fit_text)
LENGTH_QUANTILE = 0.99  # a derived max_length holds this share of the training prompts whole
TRAIN_MAX_TOKENS = 512  # memory cap of a derived training max_length: with gradient checkpointing and token-budget
# micro-batches, LoRA on SmolLM2 at 512 tokens stays within a few GiB of this 2-core / 24 GiB machine
FALLBACK_CONTEXT = 2048  # when a config names no context window


def context_window(lm: torch.nn.Module) -> int:
    """The most positions the model was built for (its config's max_position_embeddings or n_positions)."""
    config = lm.config
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
               or FALLBACK_CONTEXT)


def check_max_length(wanted: int | None, model: torch.nn.Module, whose: str = "the model's") -> int:
    """The model's context window, after checking that `wanted` (--max-length, when given) fits in it: the one
    context-window check of every rung.

    Raises:
        ConfigError: --max-length larger than the context window.
    """
    context = context_window(model)
    if wanted is not None and wanted > context:
        raise ConfigError(f"--max-length {wanted} is larger than {whose} context window ({context} tokens)")
    return context


def fit_texts(tokenizer, texts: list[str], max_tokens: int, fields: tuple[str, ...] = ()) -> list[tuple[str, bool]]:
    """Each text cut to at most about `max_tokens` tokens, keeping its head and its tail with a marker between
    (a subject line and a signature both carry signal); the cut falls on token boundaries of the text's own
    tokenization, all texts tokenized in one call. Returns (text, whether it was cut) per text.

    With `fields`, the texts are records (tasks/fields.py) and the tokens are counted per field: fields within an
    equal share of the budget stay whole, the longer ones share the rest and each is cut on its own."""
    if not texts:
        return []
    if fields:
        return _fit_records(tokenizer, texts, max_tokens, fields)
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


def _fit_records(tokenizer, records: list[str], max_tokens: int, fields: tuple[str, ...]) -> list[tuple[str, bool]]:
    values = [split_fields(record, fields) for record in records]
    lengths = tokenizer([v[name] for v in values for name in fields], add_special_tokens=False).input_ids
    fitted = []
    for i, record_values in enumerate(values):
        sizes = {name: len(lengths[i * len(fields) + k]) for k, name in enumerate(fields)}
        shares, left = {}, max_tokens
        for k, name in enumerate(sorted(fields, key=sizes.get)):  # shortest first: what they leave, the rest share
            shares[name] = min(sizes[name], left // (len(fields) - k))
            left -= shares[name]
        cut = {name: fit_text(tokenizer, record_values[name], max(shares[name], 4))
               if sizes[name] > shares[name] else (record_values[name], False) for name in fields}
        fitted.append((join_fields({name: text for name, (text, _) in cut.items()}, fields),
                       any(was_cut for _, was_cut in cut.values())))
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


def window_spans(n_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of each window over `n_tokens` tokens: every `stride` tokens, the last one ending at the end."""
    if n_tokens <= window:
        return [(0, n_tokens)]
    starts = list(range(0, n_tokens - window, stride)) + [n_tokens - window]
    return [(start, start + window) for start in starts]


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (e.g. [CLS] and [SEP]; a BOS), to frame a
    window of token ids the way it frames a whole text."""
    bare = tokenizer("a", add_special_tokens=False).input_ids
    framed = tokenizer("a", add_special_tokens=True).input_ids
    start = next(i for i in range(len(framed) - len(bare) + 1) if framed[i : i + len(bare)] == bare)
    return framed[:start], framed[start + len(bare):]
