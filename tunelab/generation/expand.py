"""Offline generation of term lists: for each concept and language the model proposes names, which are normalised,
de-duplicated, optionally verified, and written to a term store with their provenance (terms.py); `serve --terms`
then finds them in live text. This is the generation half of offline inference: the seed's search engine that had
an LLM list 800+ names of "Covid vaccine" in 50+ languages once, and matched live queries against the list.
Inputs are read in concepts.py, prompts rendered and candidates generated in prompts.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

from tunelab.errors import ConfigError, InputError
from tunelab.generation.concepts import Concept, Shot, language_name, read_concepts, read_reference, read_shots
from tunelab.generation.config import ExpandConfig
from tunelab.generation.prompts import generate_candidates, prompt_hash, render_prompt, shared_prefix
from tunelab.generation.tuning import generator_shots
from tunelab.models import Model
from tunelab.offline.matching import match_key
from tunelab.offline.terms import Term, TermStore, normalise_term


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
                  "dropped_score": 0, "dropped_verifier": 0, "dropped_agreement": 0, "dropped_confidence": 0,
                  "dropped_back_translation": 0, "empty": 0, "unfinished": 0}
        started = time.perf_counter()
        for start in range(0, len(pairs), config.batch_size):
            batch = pairs[start : start + config.batch_size]
            prompts = [render_prompt(model.tokenizer, shots, c.names[0], lang)[0] for c, lang in batch]
            generated = generate_candidates(model, prompts, config, chat=chat, prefix=prefix)
            terms, finished = _select(batch, generated, config, verifier, counts)
            if config.back_translate and terms:
                terms, finished = _back_translated(model, terms, finished, batch, shots, chat, config, counts)
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
        agreeing: dict[str, int] = {}  # self-consistency: how many finished candidates normalise to each term
        for text, _, ended in candidates:
            if ended and normalise_term(text):
                agreeing[match_key(normalise_term(text))] = agreeing.get(match_key(normalise_term(text)), 0) + 1
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
            agreement = agreeing[match_key(term)]
            confidence = (agreement / len(candidates) if config.decoding == "sample"
                          else float(math.exp(score)))
            if config.min_score is not None and score < config.min_score:
                counts["dropped_score"] += 1
                continue
            if agreement < config.min_agreement:
                counts["dropped_agreement"] += 1
                continue
            if config.min_confidence is not None and confidence < config.min_confidence:
                counts["dropped_confidence"] += 1
                continue
            kept.append(Term(concept.id, language, term, float(score), agreement=agreement, confidence=confidence,
                             evidence=json.dumps(_why_kept(config, score, agreement, len(candidates), confidence))))
        terms += kept
        finished.append([concept.id, language, len(candidates), len(kept)])
        verify_texts += [VERIFY_FORMAT.format(source=concept.names[0], language=language_name(language),
                                              candidate=t.text) for t in kept]
    if verifier is not None and terms:
        probabilities = _positive_probability(verifier, verify_texts)
        judged = [dataclasses.replace(t, verifier_score=p, evidence=json.dumps(
            {**json.loads(t.evidence), "verified": p >= 0.5, "verifier_score": p}))
            for t, p in zip(terms, probabilities)]
        terms = [t for t in judged if t.verifier_score >= 0.5]
        counts["dropped_verifier"] += len(judged) - len(terms)
        finished = _recount(finished, terms)
    return terms, [tuple(row) for row in finished]


def _recount(finished: list, terms: list[Term]) -> list:
    """The finished pairs' kept counts after a check dropped some of their terms."""
    kept_per_pair: dict = {}
    for t in terms:
        kept_per_pair[(t.concept, t.language)] = kept_per_pair.get((t.concept, t.language), 0) + 1
    return [(*row[:3], kept_per_pair.get((row[0], row[1]), 0)) for row in finished]


def _back_translated(model: Model, terms: list[Term], finished: list, batch, shots: list[Shot], chat: bool,
                     config: ExpandConfig, counts: dict) -> tuple[list[Term], list]:
    """The terms whose back-translation gives their concept back: the model, prompted with the same shots turned
    around (name in the language -> English), names each term in English by greedy decoding; a term is kept when
    that answer normalises to one of the concept's seed names. Each term's evidence records the answer."""
    seeds = {c.id: {match_key(normalise_term(name)) for name in c.names} for c, _ in batch}
    reverse = [Shot(shot.name, "en", shot.source) for shot in shots]
    prompts = [render_prompt(model.tokenizer, reverse, t.text, "en")[0] for t in terms]
    greedy = dataclasses.replace(config, per_language=1, decoding="beam")
    answers = [candidates[0][0] for candidates in generate_candidates(
        model, prompts, greedy, chat=chat, prefix=shared_prefix(model.tokenizer, reverse))]
    kept = []
    for term, answer in zip(terms, answers):
        back = normalise_term(answer)
        agrees = bool(back) and match_key(back) in seeds[term.concept]
        evidence = {**json.loads(term.evidence), "back_translation": back, "back_translated": agrees}
        if agrees:
            evidence["kept_because"] = [*(c for c in evidence["kept_because"] if not c.startswith("no check")),
                                        f"back-translated to {back!r}"]
            kept.append(dataclasses.replace(term, evidence=json.dumps(evidence)))
    counts["dropped_back_translation"] += len(terms) - len(kept)
    return kept, _recount(finished, kept)


def _why_kept(config: ExpandConfig, score: float, agreement: int, of: int, confidence: float) -> dict:
    """A kept term's evidence: its figures and the checks it passed."""
    passed = [f"agreement {agreement} of {of} >= {config.min_agreement}"] if config.min_agreement > 1 else []
    if config.min_score is not None:
        passed.append(f"score {score:.3f} >= {config.min_score}")
    if config.min_confidence is not None:
        passed.append(f"confidence {confidence:.3f} >= {config.min_confidence}")
    return {"score": round(score, 4), "agreement": agreement, "of": of, "confidence": round(confidence, 4),
            "kept_because": passed or ["no check asked for (every finished candidate is kept)"]}


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


CURVE_POINTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # confidence floors of the curve


def evaluate_terms(store_path: str | Path, reference: dict[tuple[str, str], set[str]], fingerprint: str,
                   concepts: list[Concept], languages: tuple[str, ...]) -> dict:
    """Per language: recall (share of the concepts with a reference name whose list holds one of its names),
    precision (share of generated terms that are a reference name of their concept) and the share of concepts for
    which no term was kept; means over languages; and the precision/recall curve over a confidence floor (what
    `/match --min-confidence` would answer with)."""
    store = TermStore(store_path, read_only=True)
    try:
        generated: dict[tuple[str, str], list[tuple[str, float]]] = {}
        for term in store.terms(fingerprint):
            generated.setdefault((term.concept, term.language), []).append(
                (match_key(term.text), term.confidence if term.confidence is not None else 0.0))
    finally:
        store.close()
    wanted = {c.id for c in concepts}
    pairs_of = {language: [(c, language) for c in sorted(wanted) if (c, language) in reference]
                for language in languages}
    pairs_of = {language: pairs for language, pairs in pairs_of.items() if pairs}
    if not pairs_of:
        raise InputError("the reference has no names for these concepts and languages", path=str(store_path))

    def measure(floor: float) -> dict:
        per_language = {}
        for language, pairs in pairs_of.items():
            kept = {p: {key for key, confidence in generated.get(p, []) if confidence >= floor} for p in pairs}
            produced = sum(map(len, kept.values()))
            correct = sum(len(kept[p] & reference[p]) for p in pairs)
            per_language[language] = {
                "recall": sum(bool(kept[p] & reference[p]) for p in pairs) / len(pairs),
                "precision": correct / produced if produced else 0.0, "concepts": len(pairs), "terms": produced,
                "no_term_share": sum(not kept[p] for p in pairs) / len(pairs)}
        mean = lambda key: sum(v[key] for v in per_language.values()) / len(per_language)  # noqa: E731
        return {"recall": mean("recall"), "precision": mean("precision"), "no_term_share": mean("no_term_share"),
                "per_language": per_language}

    found = measure(0.0)
    found["curve"] = [{"min_confidence": floor, **{k: v for k, v in measure(floor).items() if k != "per_language"}}
                      for floor in CURVE_POINTS]
    return found


def summary_lines(report: dict) -> list[str]:
    lines = [f"{report['generated']:,} of {report['pairs']:,} (concept, language) pairs generated now "
             f"({report['already_done']:,} were done); {report['candidates']:,} candidates at "
             f"{report['terms_per_s']:.1f}/s, {report['kept']:,} new terms kept "
             f"({report['dropped_score']:,} under --min-score, {report['dropped_agreement']:,} under "
             f"--min-agreement, {report['dropped_confidence']:,} under --min-confidence, "
             f"{report['dropped_verifier']:,} refused by the verifier, {report['dropped_back_translation']:,} not "
             f"back-translated to their concept, {report['empty']:,} empty, "
             f"{report['unfinished']:,} unfinished at --max-new-tokens); "
             f"{report['terms_in_store']:,} terms in {report['store']}"]
    if "evaluation" in report:
        evaluation = report["evaluation"]
        lines.append(f"against the reference: recall {evaluation['recall']:.3f}, precision "
                     f"{evaluation['precision']:.3f} (means over {len(evaluation['per_language'])} languages)")
        lines.append(f"{'language':<10}{'recall':>8}{'precision':>11}{'concepts':>10}{'terms':>8}{'none kept':>11}")
        for language, row in evaluation["per_language"].items():
            lines.append(f"{language:<10}{row['recall']:>8.3f}{row['precision']:>11.3f}{row['concepts']:>10}"
                         f"{row['terms']:>8}{row['no_term_share']:>11.1%}")
        lines.append("precision/recall over a confidence floor (/match min_confidence): " + ", ".join(
            f"{p['min_confidence']:.2f}: {p['precision']:.3f}/{p['recall']:.3f}" for p in evaluation["curve"]))
    return lines


def run_expand(load: Callable[[], Model], concepts_path: str, store_path: str | Path, config: ExpandConfig, *,
               model_spec: str | Path | None = None, examples: str | Path | None = None,
               verify: str | Path | None = None, limit: int | None = None, reference: str | Path | None = None,
               on_total=None, on_progress=None) -> dict:
    """`tunelab expand`: read and check every input before the model loads, generate, then evaluate when a
    reference is given (the built-in `countries` evaluates the `countries` concepts in COUNTRY_LANGUAGES)."""
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
