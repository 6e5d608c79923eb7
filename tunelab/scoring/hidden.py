"""How a frozen causal LM reads whole texts into features: pooled hidden states of chosen layers, long texts in
overlapping windows, every text computed once (scoring/feature_cache.py).

A text longer than the window is never cut: it is read as windows of `window` tokens that start every `stride`
tokens (the last one ends at the text's end), and its features are the average of its windows' pooled states; how
many windows each text took is counted and reported. Pooling gives two vectors per layer: the mean over the window's
tokens and the state at its last token (which, in a causal LM, has read the whole window). A window can be framed
by the task's own prompt (text before and after it): the last token is then where the model would say the label.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from tunelab.models import Model
from tunelab.predictor import size_batches
from tunelab.scoring.feature_cache import FeatureCache, feature_key
from tunelab.scoring.length import special_frame, window_spans
from tunelab.scoring.precision import autocast
from tunelab.scoring.tokens import cache_argument_name, returned_cache
from tunelab.tasks.fields import fill

BATCH_TOKENS = 2048  # padded tokens per forward pass: small batches keep a CPU's activations in cache (predictor.py)
FORMAT = 1  # bump when the way features are computed changes: old cache entries then stop matching


def candidate_layers(n_layers: int) -> tuple[int, ...]:
    """The layers a probe tries by default: a quarter, half, three quarters of the way up, and the top. Middle
    layers of a decoder often carry more linearly readable meaning than the top one, which is shaped for the next
    token; four points cover that at the cost of one forward pass."""
    return tuple(sorted({max(1, round(n_layers * q)) for q in (0.25, 0.5, 0.75, 1.0)}))


@dataclass(frozen=True)
class Reading:
    """What decides the features: which layers, the window and its stride, and the precision of the forward pass."""

    layers: tuple[int, ...]
    window: int
    stride: int
    precision: str = "fp32"
    before: str = ""  # text placed before each window (the task's prompt up to its text), "" for none
    after: str = ""  # and after it (the prompt from the text to its label): the last token is then the prompt's
    inner: str = ""  # several fields: the prompt between `before` and `after` ("{subject}\nBody: {body}")


class HiddenStates:
    """Features of texts under one Reading of one model: an array (n_texts, n_layers, 2, hidden) of mean- and
    last-token-pooled states, and the windows each text took."""

    def __init__(self, model: Model, reading: Reading, cache: FeatureCache | None = None, *,
                 reads_cache: bool = True):
        n_layers = model.lm.config.num_hidden_layers
        if not reading.layers or min(reading.layers) < 0 or max(reading.layers) > n_layers:
            raise ValueError(f"layers must lie in 0..{n_layers}, got {list(reading.layers)}")
        self.model, self.reading, self.cache, self.reads_cache = model, reading, cache, reads_cache
        self.tokenizer, self._cached_prefix = model.tokenizer, None
        special_before, special_after = special_frame(self.tokenizer)  # e.g. a BOS, given to every window
        self._prefix = special_before + (self._ids(reading.before) if reading.before else [])
        self._suffix = (self._ids(reading.after) if reading.after else []) + special_after
        frame_parts = [reading.before, reading.after] + ([reading.inner] if reading.inner else [])
        frame = hashlib.sha256(json.dumps(frame_parts).encode()).hexdigest()[:16]
        self._settings = (f"v{FORMAT}|{model.fingerprint}|layers={','.join(map(str, reading.layers))}|"
                          f"window={reading.window}|stride={reading.stride}|{reading.precision}|frame={frame}|"
                          "mean,last")

    @property
    def decoder(self) -> torch.nn.Module:
        """The decoder without its LM head, in the reading's precision (bf16: the model's bf16 copy)."""
        return self.model.inference_lm(self.reading.precision).base_model

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @property
    def room(self) -> int:
        """Text tokens per window: the window less the frame around them."""
        return max(1, self.reading.window - len(self._prefix) - len(self._suffix))

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        if self.reading.inner:  # records: the fields as the prompt shows them
            texts = [fill(self.reading.inner, text) for text in texts]
        ids = self.tokenizer(texts, add_special_tokens=False).input_ids
        filler = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.tokenizer.pad_token_id
        return [row or [filler] for row in ids]  # an empty text still gets one token to read

    def count_windows(self, texts: list[str]) -> list[int]:
        return [len(window_spans(len(row), self.room, self.reading.stride)) for row in self.token_ids(texts)]

    def features(self, texts: list[str], on_progress: Callable[[int], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, int]:
        """(features, windows per text, how many texts came from the cache). `on_progress(n)` counts texts."""
        keys = [feature_key(self._settings, text) for text in texts]
        found = self.cache.get_many(list(dict.fromkeys(keys))) if self.cache and self.reads_cache else {}
        missing = [i for i, key in enumerate(keys) if key not in found]
        if on_progress and len(texts) - len(missing):
            on_progress(len(texts) - len(missing))
        computed = self._compute([texts[i] for i in missing], on_progress)
        fresh = {keys[i]: value for i, value in zip(missing, computed)}
        if self.cache:
            self.cache.put_many(fresh)
        values = [found.get(key) or fresh[key] for key in keys]
        return (np.stack([array for array, _ in values]), np.array([windows for _, windows in values]),
                len(texts) - len(missing))

    @torch.inference_mode()
    def _compute(self, texts: list[str], on_progress) -> list[tuple[np.ndarray, int]]:
        if not texts:
            return []
        pieces = []  # (text index, token ids of one window and the frame after it; the prefix is cached)
        for index, row in enumerate(self.token_ids(texts)):
            pieces += [(index, row[start:end] + self._suffix)
                       for start, end in window_spans(len(row), self.room, self.reading.stride)]
        pooled = [None] * len(pieces)
        windows_left = np.bincount([index for index, _ in pieces], minlength=len(texts))
        for batch in size_batches([len(ids) for _, ids in pieces], len(pieces), BATCH_TOKENS):
            for i, vector in zip(batch, self._pool([pieces[i][1] for i in batch])):
                pooled[i] = vector
            if on_progress:
                finished = [pieces[i][0] for i in batch]
                windows_left -= np.bincount(finished, minlength=len(texts))
                on_progress(int(sum(windows_left[j] == 0 for j in set(finished))))
        by_text: list[list[np.ndarray]] = [[] for _ in texts]
        for (index, _), vector in zip(pieces, pooled):
            by_text[index].append(vector)
        return [(np.mean(vectors, axis=0).astype(np.float32), len(vectors)) for vectors in by_text]

    def _prefix_cache(self):
        """The key/value cache of the prefix (special tokens and the prompt before the text), encoded once: every
        window continues from a copy of it instead of reading the same instruction again."""
        if self._cached_prefix is None and self._prefix:
            device = self.model.device
            with autocast(device, self.reading.precision):
                out = self.decoder(input_ids=torch.tensor([self._prefix], device=device), use_cache=True)
            self._cached_prefix = returned_cache(out)
        return self._cached_prefix

    def _pool(self, rows: list[list[int]]) -> list[np.ndarray]:
        """One forward pass over windows padded on the right, after the cached prefix: per window
        (n_layers, 2, hidden)."""
        device = self.model.device
        longest, keep = max(map(len, rows)), len(self._prefix)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([row + [pad] * (longest - len(row)) for row in rows], device=device)
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows], device=device)
        cache = None
        if keep:  # the forward pass appends to the cache: the shared one is copied first
            cache = copy.deepcopy(self._prefix_cache())
            cache.batch_repeat_interleave(len(rows))
        with autocast(device, self.reading.precision):
            # the decoder without its LM head (a vocabulary-sized product per token that is not needed)
            out = self.decoder(input_ids=ids, attention_mask=torch.cat([mask.new_ones(len(rows), keep), mask], 1),
                               position_ids=torch.arange(keep, keep + longest, device=device).expand(len(rows), -1),
                               use_cache=cache is not None, output_hidden_states=True,
                               **({cache_argument_name(self.decoder): cache} if cache is not None else {}))
        # the mean is over the window's own text tokens: the frame is the same for every text
        text_mask = mask.clone()
        for i, row in enumerate(rows):
            text_mask[i, len(row) - len(self._suffix) : len(row)] = 0
        weights = text_mask.unsqueeze(-1).float()
        last = torch.tensor([len(row) - 1 for row in rows], device=device)
        per_layer = []
        for layer in self.reading.layers:
            hidden = out.hidden_states[layer].float()  # (batch, seq, hidden)
            mean = (hidden * weights).sum(1) / weights.sum(1)
            per_layer.append(torch.stack([mean, hidden[torch.arange(len(rows)), last]], dim=1))
        return list(torch.stack(per_layer, dim=1).cpu().numpy())  # (batch, n_layers, 2, hidden)
