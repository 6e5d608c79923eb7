"""Whole-string label scoring: every label's log-likelihood after a prompt, exactly as the causal LM defines it.

The invariant every causal-LM rung (prompted, tuned, pruned) keeps, and every test checks against
`score_reference`: a label's score is the summed log-probability, under the model's own `forward()` logits
(softcapping, scaling and all), of the label's tokens in the tokenization of the *whole* string
`prefix + query + label`. The shared prefix is encoded once and its key/value cache reused.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from tunelab.errors import InputError

# Whole-string tokenization


@dataclass(frozen=True)
class Pair:
    """One (query, label) prompt tokenized whole: `ids` of prefix + query + label, and the index of the label's
    first token (a token that straddles the query/label boundary counts as the label's: it holds label text)."""

    ids: tuple[int, ...]
    label_start: int


@lru_cache(maxsize=16)
def special_lead(tokenizer) -> tuple[int, ...]:
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
    lead = list(special_lead(tokenizer))
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
    shorter: dict = field(default_factory=dict)  # usable length -> the cache of that many prefix tokens

    def kv_for(self, lm, keep: int):
        """The inference cache of the first `keep` prefix tokens (not to be appended to: callers copy it). Cropped
        from the whole prefix's cache where that can be done; a sliding-window layer (Gemma 2 and 3, Mistral) that
        has filled its window keeps no states to crop back to, so there the shorter prefix is encoded once."""
        if keep == len(self.ids):
            return self.kv
        if keep not in self.shorter:
            try:
                cache = copy.deepcopy(self.kv)
                cache.crop(keep - len(self.ids))  # a negative count drops that many of the newest positions
            except RuntimeError:
                cache = encode_prefix(lm, self.ids[:keep]).kv
            self.shorter[keep] = cache
        return self.shorter[keep]


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


def row_tokens(prefix: PrefixCache, pairs: list[list[Pair]]) -> tuple[int, int]:
    """(real, run): the row tokens `label_log_likelihoods(lm, prefix, pairs, ...)` feeds the model, without and with
    its padding; counted without running anything (the trainers report their padding share from it)."""
    keep = _usable_prefix(prefix, pairs)
    lengths = [len(row) for row in {pair.ids[keep:-1] for row_pairs in pairs for pair in row_pairs}]
    return sum(lengths), len(lengths) * max(lengths, default=0)


def _cache_for(lm, prefix: PrefixCache, keep: int, n_rows: int):
    if keep == 0:
        return None
    if prefix.kv is None:  # training: encode the usable prefix here, with gradients
        device = next(lm.parameters()).device
        out = lm(input_ids=torch.tensor([prefix.ids[:keep]], device=device), use_cache=True, logits_to_keep=1)
        cache = returned_cache(out)
    else:  # the forward pass appends to the cache: a shared one is copied first
        cache = copy.deepcopy(prefix.kv_for(lm, keep))
    cache.batch_repeat_interleave(n_rows)
    return cache


def _query_context(row_pairs: list[Pair], keep: int) -> int:
    """How many tokens of one query's prompts every label shares and none of them scores: the query's context,
    read once for all its labels (at least `keep`, the shared prefix)."""
    first = row_pairs[0].ids
    common = min(_common_length(first, pair.ids) for pair in row_pairs)
    return max(keep, min(common, min(pair.label_start for pair in row_pairs) - 1))


# Reading each query once pays where it saves at least this share of the row tokens (two passes instead of one).
SHARED_QUERY_SAVING = 1.5


def _shared_query_saving(pairs: list[list[Pair]], keep: int) -> float:
    """Row tokens one pass runs (each distinct label row holds the whole query) over what reading each query once
    and then only its labels' tokens runs."""
    one_pass = sum(len(row) for row in {pair.ids[keep:-1] for row_pairs in pairs for pair in row_pairs})
    shared = 0
    for row_pairs in pairs:
        context = _query_context(row_pairs, keep)
        shared += context - keep + sum(len(row) for row in {pair.ids[context:-1] for pair in row_pairs})
    return one_pass / max(1, shared)


def label_log_likelihoods(lm: torch.nn.Module, prefix: PrefixCache, pairs: list[list[Pair]], pad_id: int):
    """Summed log p(label tokens | everything before them) for every pair: ((queries, labels), token counts).

    Each pair needs one row, `ids[keep:-1]`, whose last tokens predict the label's tokens; identical rows are run
    once (when every label is one token after the same context, a query needs one row, whatever the label count).
    Rows are left-padded so that every scored position is among the last `n_keep` columns, and the model's own
    forward computes logits only there (`logits_to_keep`), with whatever final transform its architecture has.
    """
    device = next(lm.parameters()).device
    keep = _usable_prefix(prefix, pairs)
    if prefix.kv is not None and _shared_query_saving(pairs, keep) >= SHARED_QUERY_SAVING:
        shared = _shared_query_scores(lm, prefix, pairs, pad_id, keep)
        if shared is not None:
            return shared
    rows: dict[tuple[int, ...], int] = {}
    targets = []  # (row, position in row, token, query, label)
    for qi, row_pairs in enumerate(pairs):
        for li, pair in enumerate(row_pairs):
            row = pair.ids[keep:-1]
            r = rows.setdefault(row, len(rows))
            targets += [(r, t - 1 - keep, pair.ids[t], qi, li) for t in range(pair.label_start, len(pair.ids))]
    row_list = list(rows)
    lengths = [len(row) for row in row_list]
    width = max(lengths)
    # Rows are left-padded, so that every scored position sits in the last columns and the head runs on few of
    # them; but a sliding-window layer counts its window in columns, pads included, so a left-padded row whose
    # prefix and row reach past the window would see fewer real tokens than it does alone. Then rows are
    # right-padded: every real token keeps its column, and the kept columns reach back to the earliest scored one.
    start = [0 if _window_reached(lm, keep + width) else width - length for length in lengths]
    n_keep = width - min(start[r] + position for r, position, *_ in targets)
    input_ids = torch.full((len(row_list), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(row_list), keep + width), dtype=torch.long)
    attention_mask[:, :keep] = 1
    position_ids = torch.full((len(row_list), width), keep, dtype=torch.long)
    for i, row in enumerate(row_list):
        input_ids[i, start[i] : start[i] + len(row)] = torch.tensor(row)
        attention_mask[i, keep + start[i] : keep + start[i] + len(row)] = 1
        position_ids[i, start[i] : start[i] + len(row)] = torch.arange(keep, keep + len(row))
    cache = _cache_for(lm, prefix, keep, len(row_list))
    out = lm(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
             position_ids=position_ids.to(device), use_cache=cache is not None, logits_to_keep=n_keep,
             **{cache_argument_name(lm): cache})
    return _gather_scores(out.logits, targets, start, width, n_keep, pairs, device)


def _gather_scores(logits, targets: list, start: list[int], width: int, n_keep: int, pairs, device):
    """Sum each (query, label)'s target tokens' log-probabilities out of the kept columns of `logits`
    (rows, n_keep, vocab); `start[r]` is the column where row r's first token sits."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (rows, n_keep, vocab)
    row_index, position, token, query_index, label_index = (torch.tensor(c, device=device) for c in zip(*targets))
    column = position + torch.tensor(start, device=device)[row_index] - (width - n_keep)
    token_log_probs = log_probs[row_index, column, token]  # (n_targets,)
    shape = (len(pairs), len(pairs[0]))
    scores = torch.zeros(shape, device=device).index_put((query_index, label_index), token_log_probs, accumulate=True)
    counts = torch.zeros(shape, device=device).index_put((query_index, label_index), torch.ones_like(token_log_probs),
                                                         accumulate=True)
    return scores, counts


def _shared_query_scores(lm, prefix: PrefixCache, pairs: list[list[Pair]], pad_id: int, keep: int):
    """label_log_likelihoods for many labels of several tokens: each query's context is read once (a pass whose
    key/value cache then holds every query), then every label's own tokens on top of its query's cache (a second
    pass), so the cost grows with the labels' tokens, not with the labels times the query. Both passes left-pad:
    masked columns sit between a query and its labels' tokens, which attention skips and the explicit positions
    ignore. None where a sliding window would see that padding (the one-pass path is exact there)."""
    device = next(lm.parameters()).device
    contexts = [_query_context(row_pairs, keep) for row_pairs in pairs]
    queries = [row_pairs[0].ids[keep:context] for row_pairs, context in zip(pairs, contexts)]
    rows: dict[tuple[int, tuple[int, ...]], int] = {}
    targets = []  # (row, position in row, token, query, label)
    for qi, (row_pairs, context) in enumerate(zip(pairs, contexts)):
        for li, pair in enumerate(row_pairs):
            r = rows.setdefault((qi, pair.ids[context:-1]), len(rows))
            targets += [(r, t - 1 - context, pair.ids[t], qi, li) for t in range(pair.label_start, len(pair.ids))]
    row_list = list(rows)
    query_width = max(map(len, queries))
    width = max(len(row) for _, row in row_list)
    if query_width == 0 or _window_reached(lm, keep + query_width + width):
        return None
    # pass 1: the queries after the shared prefix
    ids = torch.full((len(queries), query_width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(queries), keep + query_width), dtype=torch.long)
    mask[:, :keep] = 1
    positions = torch.full((len(queries), query_width), keep, dtype=torch.long)
    for i, query in enumerate(queries):
        start = query_width - len(query)
        ids[i, start:] = torch.tensor(query, dtype=torch.long)
        mask[i, keep + start:] = 1
        positions[i, start:] = torch.arange(keep, keep + len(query))
    cache = _cache_for(lm, prefix, keep, len(queries))
    out = lm(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
             use_cache=True, logits_to_keep=1, **{cache_argument_name(lm): cache})
    cache = returned_cache(out)
    owner = torch.tensor([qi for qi, _ in row_list], device=device)
    cache.reorder_cache(owner)  # each label row continues from its own query's keys and values
    # pass 2: each label's own tokens
    lengths = [len(row) for _, row in row_list]
    n_keep = max(lengths[r] - position for r, position, *_ in targets)
    ids = torch.full((len(row_list), width), pad_id, dtype=torch.long)
    row_mask = torch.zeros((len(row_list), width), dtype=torch.long)
    positions = torch.zeros((len(row_list), width), dtype=torch.long)
    for i, (qi, row) in enumerate(row_list):
        start, first = width - len(row), keep + len(queries[qi])
        ids[i, start:] = torch.tensor(row, dtype=torch.long)
        row_mask[i, start:] = 1
        positions[i, start:] = torch.arange(first, first + len(row))
    attention_mask = torch.cat([mask.to(device)[owner], row_mask.to(device)], dim=1)
    out = lm(input_ids=ids.to(device), attention_mask=attention_mask, position_ids=positions.to(device),
             use_cache=True, logits_to_keep=n_keep, **{cache_argument_name(lm): cache})
    return _gather_scores(out.logits, targets, [width - length for length in lengths], width, n_keep, pairs, device)


def _window_reached(lm, columns: int) -> bool:
    """Whether a sliding-window attention layer of `lm` (Gemma 2 and 3, Mistral) would drop some of `columns`."""
    model = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    window = getattr(model.config, "sliding_window", None)
    return isinstance(window, int) and columns > window


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
    lead = list(special_lead(tokenizer))
    ids = torch.tensor([lead + encoding.input_ids], device=next(lm.parameters()).device)
    log_probs = torch.log_softmax(lm(input_ids=ids).logits[0].float(), dim=-1)  # (seq, vocab)
    start = len(lead) + token
    return float(sum(log_probs[t - 1, ids[0, t]] for t in range(start, ids.shape[1])))

