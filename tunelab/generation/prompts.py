"""Prompts and candidates for term generation: few-shot chat prompts, and transformers' `generate()` on batches.

Prompts are batched and left-padded, several candidates per prompt (beam search, or sampling), scored by the mean
log-probability of their tokens. The instruct chat template is used when the tokenizer has one. The shared start of
the prompts (instruction and shots) is encoded once: each batch is laid out as [prefix | padding | rest], the
padding masked, so the prefix's key/value cache serves every row; with several candidates a prompt, the rest of
each prompt is encoded once too, its cache copied per beam.
"""

from __future__ import annotations

import copy
import hashlib
import json
import weakref
from dataclasses import asdict

import torch

from tunelab.generation.concepts import Shot, language_name
from tunelab.generation.config import ExpandConfig
from tunelab.models import Model
from tunelab.scoring.tokens import cache_argument_name, returned_cache

# ----------------------------------------------------------------------------------------------------------------
# Prompts and generation


def render_prompt(tokenizer, shots: list[Shot], source: str, language: str) -> tuple[str, bool]:
    """The prompt for one (seed name, language), and whether it is in the chat template (which then holds the
    special tokens itself)."""
    prompt, _, chat = _render(tokenizer, shots, source, language)
    return prompt, chat


def shared_prefix(tokenizer, shots: list[Shot]) -> str:
    """The start every prompt with these shots shares (instruction and shots): encoded once, its key/value cache
    serves every prompt of a batch."""
    return _render(tokenizer, shots, "", "en")[1]


def _render(tokenizer, shots: list[Shot], source: str, language: str) -> tuple[str, str, bool]:
    def ask(name: str, code: str) -> str:
        return f"{name} in {language_name(code)}:"

    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": "Give the name the user asks for, in that language. Answer with "
                                                  "the name only."}]
        for shot in shots:
            messages += [{"role": "user", "content": ask(shot.source, shot.language)},
                         {"role": "assistant", "content": shot.name}]
        prefix = tokenizer.apply_chat_template(messages, tokenize=False)
        messages.append({"role": "user", "content": ask(source, language)})
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt, prefix if prompt.startswith(prefix) else "", True
    prefix = "".join(f"{ask(shot.source, shot.language)} {shot.name}\n" for shot in shots)
    return prefix + ask(source, language), prefix, False


def prompt_hash(shots: list[Shot], config: ExpandConfig, chat: bool) -> str:
    """Names the prompt format, shots and decoding settings: a store resumes only work done the same way."""
    decided_by = {"shots": [asdict(s) for s in shots], "chat": chat, "per_language": config.per_language,
                  "decoding": config.decoding, "temperature": config.temperature if config.decoding == "sample"
                  else None, "max_new_tokens": config.max_new_tokens, "min_score": config.min_score,
                  "seed": config.seed}
    if config.back_translate:  # a filter that decides what a done pair stored (absent when off: older hashes hold)
        decided_by["back_translate"] = True
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:16]


_STOP_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its stop ids, found once


def stop_token_ids(tokenizer) -> list[int]:
    """The end-of-sequence token and every token that holds a line break: a name ends at either. (generate()'s
    `stop_strings` would do it, but it cannot read every tokenizer's vocabulary; these ids work for all.)"""
    key = tokenizer
    if key not in _STOP_IDS:
        ids = list(range(len(tokenizer)))
        texts = tokenizer.batch_decode([[i] for i in ids])
        stops = {i for i, text in zip(ids, texts) if "\n" in text}
        if tokenizer.eos_token_id is not None:
            stops.add(tokenizer.eos_token_id)
        _STOP_IDS[key] = sorted(stops)
    return _STOP_IDS[key]


def _batch_inputs(tokenizer, prompts: list[str], prefix: str, chat: bool, pad_id: int):
    """Token ids and attention mask of a batch, and the length of the shared prefix they start with: [prefix |
    left-padded rest] when every prompt starts with `prefix` and tokenizes as the prefix's tokens followed by the
    rest's (the padding sits between them, masked: positions still count only real tokens); otherwise plain left
    padding and a prefix length of 0."""
    special = not chat
    whole = tokenizer(prompts, add_special_tokens=special).input_ids
    if prefix and all(p.startswith(prefix) for p in prompts):
        prefix_ids = tokenizer(prefix, add_special_tokens=special).input_ids
        rests = tokenizer([p[len(prefix) :] for p in prompts], add_special_tokens=False).input_ids
        if all(w == prefix_ids + r for w, r in zip(whole, rests)):
            width = max(map(len, rests))
            ids = [prefix_ids + [pad_id] * (width - len(r)) + r for r in rests]
            mask = [[1] * len(prefix_ids) + [0] * (width - len(r)) + [1] * len(r) for r in rests]
            return torch.tensor(ids), torch.tensor(mask), len(prefix_ids)
    width = max(map(len, whole))
    ids = [[pad_id] * (width - len(w)) + w for w in whole]
    mask = [[0] * (width - len(w)) + [1] * len(w) for w in whole]
    return torch.tensor(ids), torch.tensor(mask), 0


@torch.no_grad()
def generate_candidates(model: Model, prompts: list[str], config: ExpandConfig, *, chat: bool,
                        batch_size: int | None = None, prefix: str = "") -> list[list[tuple[str, float, bool]]]:
    """`config.per_language` (text, mean token log-probability, whether it ended) candidates per prompt, by
    generate() on batches of left-padded prompts; the text is cut at the first line break, and a candidate that ran
    to max_new_tokens without a line break or end token says so (it may be a cut name). With `prefix` (the start
    all prompts share), the prefix is encoded once and its key/value cache reused by every batch."""
    tokenizer = model.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n = config.per_language
    stops = stop_token_ids(tokenizer)
    options = dict(max_new_tokens=config.max_new_tokens, num_return_sequences=n, pad_token_id=pad_id,
                   return_dict_in_generate=True, output_scores=True, eos_token_id=stops)
    beams = config.decoding == "beam" and n > 1  # one beam is greedy decoding
    if config.decoding == "beam":
        options.update(num_beams=n, do_sample=False, **({"early_stopping": True} if beams else {}))
    else:
        options.update(do_sample=True, temperature=config.temperature, top_p=0.95)
    prefix_cache, results = {}, []
    size = batch_size or config.batch_size
    with torch.random.fork_rng(devices=[]):  # sampling in generate() reads only the global RNG: fork it, so that
        torch.manual_seed(config.seed)       # the host's random state is left as it was
        for start in range(0, len(prompts), size):
            results += _generate_batch(model, prompts[start : start + size], prefix, chat, n, beams, stops, pad_id,
                                       options, prefix_cache)
    return results


def _generate_batch(model: Model, prompts: list[str], prefix: str, chat: bool, n: int, beams: bool, stops, pad_id,
                    options: dict, prefix_cache: dict) -> list[list[tuple[str, float, bool]]]:
    """One batch of generate_candidates; `prefix_cache` holds the shared prefix's cache across batches."""
    tokenizer, lm = model.tokenizer, model.lm
    ids, mask, cached = _batch_inputs(tokenizer, prompts, prefix, chat, pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    cache = None
    if cached:
        if cached not in prefix_cache:
            prefix_cache[cached] = returned_cache(lm(input_ids=ids[:1, :cached], use_cache=True))
        cache = copy.deepcopy(prefix_cache[cached])
        cache.batch_repeat_interleave(len(ids))
    if n > 1 and ids.shape[1] - cached > 1:
        # generate() copies each prompt n times before encoding it (one per beam or sample); encode the rest of
        # each prompt but its last token once here instead, at the positions generate() gives them (real tokens
        # counted, padding masked), so that generate() only runs the last token n times.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = returned_cache(lm(input_ids=ids[:, cached:-1], attention_mask=mask[:, :-1],
                                  position_ids=positions[:, cached:-1], use_cache=True,
                                  **{cache_argument_name(lm): cache}))
    options = dict(options)
    if cache is not None:
        cache.batch_repeat_interleave(n)  # generate() expands rows by n but not a given cache
        options[cache_argument_name(lm)] = cache
    out = lm.generate(input_ids=ids, attention_mask=mask, **options)
    new = out.sequences[:, ids.shape[1] :]
    if beams:
        scores = out.sequences_scores.float().tolist()  # the beam's log-probability over its length
    else:
        steps = lm.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).float()
        real = (new != pad_id) & torch.isfinite(steps)
        scores = (torch.where(real, steps, 0).sum(1) / real.sum(1).clamp(min=1)).tolist()
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    ended = torch.isin(new, torch.tensor(stops, device=new.device)).any(1).tolist()
    candidates = [(text.split("\n")[0], score, end) for text, score, end in zip(texts, scores, ended)]
    return [candidates[i : i + n] for i in range(0, len(candidates), n)]
