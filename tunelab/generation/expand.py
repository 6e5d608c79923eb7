"""Offline generation of term lists: for each concept and language the model proposes names, which are normalised,
de-duplicated, optionally verified, and written to a term store with their provenance (terms.py); `serve --terms`
then finds them in live text. This is the generation half of offline inference: the seed's search engine that had
an LLM list 800+ names of "Covid vaccine" in 50+ languages once, and matched live queries against the list.

Generation is transformers' `generate()` on the rungs' own `Model`: prompts batched and left-padded, several
candidates per prompt (beam search, or sampling), scored by the mean log-probability of their tokens. The instruct
chat template is used when the tokenizer has one. The shared start of the prompts (instruction and shots) is
encoded once: each batch is laid out as [prefix | padding | rest], the padding masked, so the prefix's key/value
cache serves every row.

The built-in evaluation `countries` measures it on real public data: the Unicode CLDR names of territories
(shipped in babel), concept = a country, seed = its English name, reference = its names in each language.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from tunelab.config import ExpandConfig, language_codes
from tunelab.errors import ConfigError, InputError
from tunelab.generation.terms import Term, TermStore, match_key, normalise_term
from tunelab.models import Model
from tunelab.tasks import read_rows

COUNTRIES = "countries"  # the built-in concepts and reference (its held-out half; `countries-train` the other)
# The default shots: real CLDR names of three countries, which the built-in evaluation leaves out.
SHOT_COUNTRIES = (("DE", "fr"), ("JP", "es"), ("BR", "de"))
NOT_COUNTRIES = {"EU", "EZ", "UN", "ZZ", "QO", "XA", "XB"}  # CLDR territory codes that are groupings or pseudo


@dataclass(frozen=True)
class Concept:
    id: str
    names: tuple[str, ...]  # the seed names (the first one is the prompt's)


@dataclass(frozen=True)
class Shot:
    source: str
    language: str
    name: str


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def language_name(code: str) -> str:
    from babel import Locale

    return Locale.parse(code).get_display_name("en")


def read_concepts(path: str | Path) -> list[Concept]:
    """Concepts from JSONL, one `{"id": ..., "names": [...]}` a line; or the built-in `countries`.

    Raises:
        InputError: a missing or empty id or names field, or an id used twice (file and line named).
    """
    if str(path) in (COUNTRIES, f"{COUNTRIES}-train"):
        return country_concepts(str(path))
    concepts, seen = [], {}
    for line, row in read_rows(path, ("id", "--concepts"), ("names", "--concepts")):
        concept_id, names = row.get("id"), row.get("names")
        if not isinstance(concept_id, str) or not concept_id.strip():
            raise InputError("must be a non-empty string", path=path, line=line, field="id")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise InputError("must be a non-empty list of names", path=path, line=line, field="names")
        if concept_id in seen:
            raise InputError(f"duplicate concept id {concept_id!r} (first on line {seen[concept_id]})", path=path,
                             line=line, field="id")
        seen[concept_id] = line
        concepts.append(Concept(concept_id, tuple(n.strip() for n in names)))
    if not concepts:
        raise InputError("holds no concepts", path=path)
    return concepts


def read_shots(path: str | Path | None) -> list[Shot]:
    """Few-shot examples from JSONL, one `{"source": "Germany", "language": "fr", "name": "Allemagne"}` a line;
    without a file, three real CLDR country names."""
    if path is None:
        from babel import Locale

        english = Locale("en").territories
        return [Shot(english[code], lang, Locale.parse(lang).territories[code]) for code, lang in SHOT_COUNTRIES]
    shots = []
    for line, row in read_rows(path, ("source", "--examples"), ("language", "--examples"), ("name", "--examples")):
        for field in ("source", "language", "name"):
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise InputError("must be a non-empty string", path=path, line=line, field=field)
        shots.append(Shot(row["source"].strip(), language_codes(row["language"])[0], row["name"].strip()))
    return shots


def read_reference(path: str | Path, languages: tuple[str, ...]) -> dict[tuple[str, str], set[str]]:
    """(concept, language) -> the match keys of its reference names; from JSONL lines
    `{"id": ..., "language": ..., "names": [...]}`, or the built-in `countries` (CLDR)."""
    if str(path) in (COUNTRIES, f"{COUNTRIES}-train"):
        return country_reference([c.id for c in country_concepts(str(path))], languages)
    reference: dict[tuple[str, str], set[str]] = {}
    for line, row in read_rows(path, ("id", "--evaluate"), ("language", "--evaluate"), ("names", "--evaluate")):
        names = row.get("names")
        if not isinstance(row.get("id"), str) or not isinstance(row.get("language"), str):
            raise InputError("needs string fields id and language", path=path, line=line, field="id")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError("must be a list of names", path=path, line=line, field="names")
        key = (row["id"], row["language"].replace("-", "_"))
        reference.setdefault(key, set()).update(match_key(normalise_term(n)) for n in names)
    return reference


def country_concepts(which: str = COUNTRIES) -> list[Concept]:
    """The CLDR countries (two-letter territory codes, groupings left out, the shots' countries left out), split
    in two halves by a fixed seed: `countries` to evaluate, `countries-train` to tune a generator on."""
    from babel import Locale

    english = Locale("en").territories
    shot_codes = {code for code, _ in SHOT_COUNTRIES}
    codes = sorted(c for c in english if len(c) == 2 and c.isalpha() and c not in NOT_COUNTRIES | shot_codes)
    random.Random(0).shuffle(codes)
    half = codes[: len(codes) // 2] if which == COUNTRIES else codes[len(codes) // 2 :]
    return [Concept(code, (english[code],)) for code in sorted(half)]


def country_pairs(which: str, languages: tuple[str, ...]) -> list[Shot]:
    """(English name, language, CLDR name) for the countries of `which` in each language: a generator's training
    pairs (from `countries-train`, which the evaluation leaves alone)."""
    from babel import Locale

    concepts = country_concepts(which)
    pairs = []
    for language in languages:
        names = Locale.parse(language).territories
        pairs += [Shot(c.names[0], language, names[c.id]) for c in concepts if c.id in names]
    return pairs


def read_pairs(path: str | Path, languages: tuple[str, ...]) -> list[Shot]:
    """Training pairs: the built-in `countries-train`, or a JSONL file in the --examples format."""
    return country_pairs(str(path), languages) if str(path) in (COUNTRIES, f"{COUNTRIES}-train") else read_shots(path)


def country_reference(codes: list[str], languages: tuple[str, ...]) -> dict[tuple[str, str], set[str]]:
    from babel import Locale

    reference = {}
    for language in languages:
        names = Locale.parse(language).territories
        for code in codes:
            if code in names:
                reference[(code, language)] = {match_key(normalise_term(names[code]))}
    return reference


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
    from tunelab.scoring.tokens import cache_argument_name, returned_cache

    tokenizer, lm = model.tokenizer, model.lm
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
    torch.manual_seed(config.seed)
    size = batch_size or config.batch_size
    for start in range(0, len(prompts), size):
        ids, mask, cached = _batch_inputs(tokenizer, prompts[start : start + size], prefix, chat, pad_id)
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
        if cache is not None:
            cache.batch_repeat_interleave(n)  # generate() expands rows by n but not a given cache
            options[cache_argument_name(lm)] = cache
        else:
            options.pop(cache_argument_name(lm), None)
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
        results += [candidates[i : i + n] for i in range(0, len(candidates), n)]
    return results


def _positive_probability(verifier, texts: list[str]) -> list[float]:
    from tunelab.predictor import predict

    labels = list(verifier.label_names)
    positive = next((name for name in ("yes", "true", "positive") if name in labels), labels[-1])
    return predict(verifier, texts).probs[:, labels.index(positive)].tolist()


VERIFY_FORMAT = "{source} in {language}: {candidate}"  # what a --verify predictor is asked to judge


def expand(
    model: Model,
    concepts: list[Concept],
    store_path: str | Path,
    config: ExpandConfig,
    *,
    shots: list[Shot] | None = None,
    verifier=None,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """Generate terms for every (concept, language) pair not yet done by this generator and prompt, and store them
    batch by batch (one transaction each: a kill loses at most the batch in flight).

    Returns counts: pairs, already done, generated now, candidates, kept (new distinct terms), dropped by the
    score or the verifier, seconds and terms per second.
    """
    if not config.languages:
        raise ConfigError("--languages needs at least one language code")
    shots = read_shots(None) if shots is None else shots
    store = TermStore(store_path)
    try:
        store.check_generator(model.fingerprint, config.append)
        chat = bool(getattr(model.tokenizer, "chat_template", None))
        prefix = shared_prefix(model.tokenizer, shots)
        hashed = prompt_hash(shots, config, chat)
        done = store.done_pairs(model.fingerprint, hashed)
        pairs = [(c, lang) for c in concepts for lang in config.languages if (c.id, lang) not in done]
        if on_total:
            on_total(len(pairs))
        counts = {"pairs": len(concepts) * len(config.languages), "already_done": len(concepts) *
                  len(config.languages) - len(pairs), "generated": 0, "candidates": 0, "kept": 0,
                  "dropped_score": 0, "dropped_verifier": 0, "empty": 0, "unfinished": 0}
        started = time.perf_counter()
        for start in range(0, len(pairs), config.batch_size):
            batch = pairs[start : start + config.batch_size]
            prompts = [render_prompt(model.tokenizer, shots, c.names[0], lang)[0] for c, lang in batch]
            generated = generate_candidates(model, prompts, config, chat=chat, prefix=prefix)
            terms, finished = _select(batch, generated, config, verifier, counts)
            counts["kept"] += store.put_batch(terms, finished, model.fingerprint, hashed)
            counts["generated"] += len(batch)
            if on_progress:
                on_progress(len(batch))
        seconds = time.perf_counter() - started
        return {**counts, "seconds": seconds, "terms_per_s": counts["candidates"] / seconds if seconds else 0.0,
                "fingerprint": model.fingerprint, "prompt_hash": hashed, "store": str(store_path),
                "terms_in_store": store.count()}
    finally:
        store.close()


def _select(batch, generated, config: ExpandConfig, verifier, counts: dict):
    """Normalise, de-duplicate within each pair, drop by score and verifier; the terms and the finished pairs."""
    terms, finished, verify_texts = [], [], []
    for (concept, language), candidates in zip(batch, generated):
        seen, kept = set(), []
        for text, score, ended in candidates:
            counts["candidates"] += 1
            if not ended:  # ran out of --max-new-tokens: possibly half a name; counted, not stored
                counts["unfinished"] += 1
                continue
            term = normalise_term(text)
            if not term:
                counts["empty"] += 1
                continue
            if match_key(term) in seen:
                continue
            seen.add(match_key(term))
            if config.min_score is not None and score < config.min_score:
                counts["dropped_score"] += 1
                continue
            kept.append(Term(concept.id, language, term, float(score)))
        terms += kept
        finished.append([concept.id, language, len(candidates), len(kept)])
        verify_texts += [VERIFY_FORMAT.format(source=concept.names[0], language=language_name(language),
                                              candidate=t.text) for t in kept]
    if verifier is not None and terms:
        probabilities = _positive_probability(verifier, verify_texts)
        judged = [Term(t.concept, t.language, t.text, t.score, p) for t, p in zip(terms, probabilities)]
        terms = [t for t in judged if t.verifier_score >= 0.5]
        counts["dropped_verifier"] += len(judged) - len(terms)
        kept_per_pair: dict = {}
        for t in terms:
            kept_per_pair[(t.concept, t.language)] = kept_per_pair.get((t.concept, t.language), 0) + 1
        for row in finished:
            row[3] = kept_per_pair.get((row[0], row[1]), 0)
    return terms, [tuple(row) for row in finished]


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate_terms(store_path: str | Path, reference: dict[tuple[str, str], set[str]], fingerprint: str,
                   concepts: list[Concept], languages: tuple[str, ...]) -> dict:
    """Per language: recall (share of the concepts with a reference name whose list holds one of its names) and
    precision (share of generated terms that are a reference name of their concept); means over languages."""
    store = TermStore(store_path, read_only=True)
    try:
        generated: dict[tuple[str, str], set[str]] = {}
        for term in store.terms(fingerprint):
            generated.setdefault((term.concept, term.language), set()).add(match_key(term.text))
    finally:
        store.close()
    wanted = {c.id for c in concepts}
    per_language = {}
    for language in languages:
        pairs = [(c, language) for c in sorted(wanted) if (c, language) in reference]
        if not pairs:
            continue
        hits = sum(bool(generated.get(p, set()) & reference[p]) for p in pairs)
        produced = sum(len(generated.get(p, ())) for p in pairs)
        correct = sum(len(generated.get(p, set()) & reference[p]) for p in pairs)
        per_language[language] = {"recall": hits / len(pairs), "precision": correct / produced if produced else 0.0,
                                  "concepts": len(pairs), "terms": produced}
    if not per_language:
        raise InputError("the reference has no names for these concepts and languages", path=str(store_path))
    mean = lambda key: sum(v[key] for v in per_language.values()) / len(per_language)  # noqa: E731
    return {"recall": mean("recall"), "precision": mean("precision"), "per_language": per_language}


def summary_lines(report: dict) -> list[str]:
    lines = [f"{report['generated']:,} of {report['pairs']:,} (concept, language) pairs generated now "
             f"({report['already_done']:,} were done); {report['candidates']:,} candidates at "
             f"{report['terms_per_s']:.1f}/s, {report['kept']:,} new terms kept "
             f"({report['dropped_score']:,} under --min-score, {report['dropped_verifier']:,} refused by the "
             f"verifier, {report['empty']:,} empty, {report['unfinished']:,} unfinished at --max-new-tokens); "
             f"{report['terms_in_store']:,} terms in {report['store']}"]
    if "evaluation" in report:
        evaluation = report["evaluation"]
        lines.append(f"against the reference: recall {evaluation['recall']:.3f}, precision "
                     f"{evaluation['precision']:.3f} (means over {len(evaluation['per_language'])} languages)")
        lines.append(f"{'language':<10}{'recall':>8}{'precision':>11}{'concepts':>10}{'terms':>8}")
        for language, row in evaluation["per_language"].items():
            lines.append(f"{language:<10}{row['recall']:>8.3f}{row['precision']:>11.3f}{row['concepts']:>10}"
                         f"{row['terms']:>8}")
    return lines


def run_expand(load: Callable[[], Model], concepts_path: str, store_path: str | Path, config: ExpandConfig, *,
               model_spec: str | Path | None = None, examples: str | Path | None = None,
               verify: str | Path | None = None, limit: int | None = None, reference: str | Path | None = None,
               on_total=None, on_progress=None) -> dict:
    """`tunelab expand`: read and check every input before the model loads, generate, then evaluate when a
    reference is given (the built-in `countries` evaluates the `countries` concepts in COUNTRY_LANGUAGES)."""
    from tunelab.generation.tuning import generator_shots

    concepts = read_concepts(concepts_path)
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {limit}")
        concepts = concepts[:limit]
    trained_shots = generator_shots(model_spec) if model_spec is not None else None
    shots = read_shots(examples) if examples is not None else trained_shots
    verifier = None
    if verify is not None:
        from tunelab.predictor import load_predictor

        verifier = load_predictor(verify)
        if verifier.kind != "classification":
            raise ConfigError(f"--verify {verify}: a verifier must be a classifier (yes/no), not {verifier.kind}")
    gold = read_reference(reference, config.languages) if reference is not None else None
    model = load()
    report = expand(model, concepts, store_path, config, shots=shots, verifier=verifier, on_total=on_total,
                    on_progress=on_progress)
    if gold is not None:
        report["evaluation"] = evaluate_terms(store_path, gold, model.fingerprint, concepts, config.languages)
        report.update(precision=report["evaluation"]["precision"], recall=report["evaluation"]["recall"],
                      per_language=report["evaluation"]["per_language"])
    return report
