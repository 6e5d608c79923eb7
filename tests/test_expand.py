"""Offline term generation (expand), the term store, term matching in live text, and the tuned generator."""

import dataclasses
import json
import unicodedata

import pytest
import torch
from helpers import LoopbackServer, one_error_line, run_cli

from tunelab.errors import ConfigError, InputError
from tunelab.generation.concepts import Concept, Shot, country_concepts, country_reference, read_concepts, read_pairs
from tunelab.generation.config import COUNTRY_LANGUAGES, ExpandConfig, language_codes
from tunelab.generation.expand import evaluate_terms, expand
from tunelab.generation.tuning import GENERATOR_FILE, generator_shots, tune_generator
from tunelab.models import load_model
from tunelab.offline.matching import build_automaton, find_terms
from tunelab.offline.serve import ServeConfig, create_app
from tunelab.offline.terms import Term, TermStore, normalise_term, term_entries

SHOTS = [Shot("good", "fr", "bon")]


def automaton(*texts):
    return build_automaton(term_entries([Term(f"c{i}", "xx", text, 0.0) for i, text in enumerate(texts)]))


def found(text, *terms):
    return [(m["term"], m["start"], m["end"]) for m in find_terms(automaton(*terms), text, 100)[0]]


def test_terms_match_at_word_boundaries_in_spaced_scripts_and_anywhere_in_unspaced_ones():
    assert found("Perugia is not Peru.", "Peru") == [("Peru", 15, 19)]
    assert found("I flew to peru's capital", "Peru") == [("Peru", 10, 14)]  # case-folded; "'" is a boundary
    assert found("日本語を話します", "日本") == [("日本", 0, 2)]  # Japanese: no spaces, substring match
    assert found("ประเทศไทยสวย", "ไทย") == [("ไทย", 6, 9)]


def test_case_folding_and_nfc_keep_spans_on_the_original_text():
    text = "Die STRASSE und die Straße"
    assert found(text, "Straße") == [("Straße", 4, 11), ("Straße", 20, 26)]  # "ß" folds to "ss"
    decomposed = unicodedata.normalize("NFD", "Café Zürich")
    matches, _ = find_terms(automaton("café"), decomposed, 10)
    assert matches[0]["matched"] == "Café"  # spans index the NFC form of the text


def test_match_lists_every_concept_of_a_shared_term_and_respects_the_limit():
    shared = build_automaton(term_entries([Term("A", "en", "Georgia", 0.0), Term("B", "en", "Georgia", 0.0)]))
    matches, truncated = find_terms(shared, "Georgia and Georgia", 3)
    assert [m["concept"] for m in matches] == ["A", "B", "A"] and truncated


def test_normalise_term_trims_quotes_and_collapses_spaces():
    assert normalise_term(' "Estados   Unidos". ') == "Estados Unidos"
    assert normalise_term("«Allemagne»") == "Allemagne"
    assert normalise_term(" . ") == ""


def test_expand_stores_terms_with_provenance_and_resumes_without_generating_twice(tiny_model, tmp_path,
                                                                                   monkeypatch):
    # A random model seldom ends a line: let every token end a candidate, so that each one is finished and stored.
    monkeypatch.setattr("tunelab.generation.prompts.stop_token_ids", lambda tokenizer: list(range(len(tokenizer))))
    concepts = [Concept("P", ("good",)), Concept("N", ("bad",))]
    config = ExpandConfig(languages=("fr", "de"), per_language=2, max_new_tokens=3, batch_size=3,
                          decoding="sample")
    first = expand(tiny_model, concepts, tmp_path / "t.sqlite", config, shots=SHOTS)
    assert first["generated"] == 4 and first["candidates"] == 8 and first["already_done"] == 0
    store = TermStore(tmp_path / "t.sqlite")
    rows = store.db.execute("SELECT concept, language, fingerprint, prompt_hash FROM terms").fetchall()
    assert rows and {r[2] for r in rows} == {tiny_model.fingerprint} and {r[3] for r in rows} == {first["prompt_hash"]}
    assert store.db.execute("SELECT count(*) FROM done").fetchone()[0] == 4
    again = expand(tiny_model, concepts, tmp_path / "t.sqlite", config, shots=SHOTS)
    assert again["generated"] == 0 and again["already_done"] == 4 and again["terms_in_store"] == first["kept"]
    wider = dataclasses.replace(config, languages=("fr", "de", "it"))
    more = expand(tiny_model, concepts, tmp_path / "t.sqlite", wider, shots=SHOTS)
    assert more["generated"] == 2  # only the new language


def test_candidates_cut_at_max_new_tokens_are_counted_not_stored():
    from tunelab.generation.expand import _select

    counts = dict.fromkeys(("candidates", "unfinished", "empty", "dropped_score", "dropped_verifier",
                            "dropped_agreement", "dropped_confidence"), 0)
    generated = [[("Allem", -0.2, False), ("Allemagne", -0.5, True), ("allemagne", -0.6, True), (" . ", -1.0, True)]]
    terms, finished = _select([(Concept("DE", ("Germany",)), "fr")], generated, ExpandConfig(languages=("fr",)),
                              None, counts)
    assert [t.text for t in terms] == ["Allemagne"] and finished == [("DE", "fr", 4, 1)]
    assert counts == {"candidates": 4, "unfinished": 1, "empty": 1, "dropped_score": 0, "dropped_verifier": 0,
                      "dropped_agreement": 0, "dropped_confidence": 0}


def test_a_store_of_another_generator_is_refused_without_append(tiny_model, tiny_bpe_model, tmp_path):
    config = ExpandConfig(languages=("fr",), per_language=1, max_new_tokens=2)
    expand(tiny_model, [Concept("P", ("good",))], tmp_path / "t.sqlite", config, shots=SHOTS)
    with pytest.raises(InputError, match="holds terms of another model"):
        expand(tiny_bpe_model, [Concept("P", ("good",))], tmp_path / "t.sqlite", config, shots=SHOTS)
    mixed = expand(tiny_bpe_model, [Concept("P", ("good",))], tmp_path / "t.sqlite",
                   ExpandConfig(languages=("fr",), per_language=1, max_new_tokens=2, append=True), shots=SHOTS)
    assert mixed["generated"] == 1


def test_precision_and_recall_against_a_reference(tmp_path):
    store = TermStore(tmp_path / "t.sqlite")
    terms = [Term("DE", "fr", "Allemagne", -0.1), Term("DE", "fr", "Germanie", -0.9), Term("JP", "fr", "Nippon", -1),
             Term("DE", "es", "Alemania", -0.2)]
    store.put_batch(terms, [("DE", "fr", 2, 2), ("JP", "fr", 1, 1), ("DE", "es", 1, 1)], "f" * 16, "h" * 16)
    reference = {("DE", "fr"): {"allemagne"}, ("JP", "fr"): {"japon"}, ("DE", "es"): {"alemania"},
                 ("JP", "es"): {"japón"}}
    result = evaluate_terms(tmp_path / "t.sqlite", reference, "f" * 16, [Concept("DE", ("Germany",)),
                                                                         Concept("JP", ("Japan",))], ("fr", "es"))
    assert result["per_language"]["fr"] == {"recall": 0.5, "precision": pytest.approx(1 / 3), "concepts": 2,
                                            "terms": 3, "no_term_share": 0.0}
    assert result["per_language"]["es"] == {"recall": 0.5, "precision": 1.0, "concepts": 2, "terms": 1,
                                            "no_term_share": 0.5}  # JP has no Spanish term
    assert result["recall"] == 0.5 and result["precision"] == pytest.approx((1 / 3 + 1) / 2)


def test_countries_come_from_cldr_in_two_disjoint_halves():
    evaluated, training = country_concepts("countries"), country_concepts("countries-train")
    assert len(evaluated) > 100 and not {c.id for c in evaluated} & {c.id for c in training}
    assert not {"DE", "JP", "BR", "EU", "ZZ"} & {c.id for c in evaluated + training}  # shots and groupings left out
    reference = country_reference(["FR"], COUNTRY_LANGUAGES)
    assert len(COUNTRY_LANGUAGES) == 50 and reference[("FR", "de")] == {"frankreich"}
    assert reference[("FR", "ja")] == {"フランス"}


def test_training_pairs_come_from_several_cldr_types_and_an_unknown_type_is_named():
    pairs = read_pairs("countries-train,regions,days", ("de",))
    assert Shot("Western Europe", "de", "Westeuropa") in pairs and Shot("Monday", "de", "Montag") in pairs
    countries = {c.names[0] for c in country_concepts("countries-train")}
    assert len(pairs) == len(read_pairs("countries-train", ("de",))) + 31 + 7  # 31 CLDR regions, 7 days
    assert countries <= {p.source for p in pairs}
    with pytest.raises(InputError, match="not a built-in concept type: planets"):
        read_pairs("regions,planets", ("de",))
    units = read_pairs("units", ("de",))
    assert Shot("square kilometers", "de", "Quadratkilometer") in units and len(units) > 100


@pytest.mark.parametrize("lines, message", [
    (['{"id": "A", "names": ["a"]}', '{"id": "A", "names": ["b"]}'], "c.jsonl:2: field \"id\" duplicate concept id"),
    (['{"id": "A", "names": []}'], 'c.jsonl:1: field "names" must be a non-empty list'),
    (['{"id": "", "names": ["x"]}'], 'c.jsonl:1: field "id" must be a non-empty string'),
])
def test_bad_concept_files_name_the_line_and_field(tmp_path, lines, message):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=message):
        read_concepts(path)


def test_unknown_language_codes_are_refused_with_the_accepted_list():
    assert language_codes("pt,de,ja,pt-BR") == ("pt", "de", "ja", "pt_BR")
    with pytest.raises(ConfigError, match=r"unknown language code 'klingon'; accepted \(CLDR\): .*\bde\b.*\bja\b"):
        language_codes("de,klingon")


def test_the_tuned_generator_learns_its_pairs_and_keeps_the_parameter_count(tiny_model, tmp_path):
    pairs = [Shot("good", "fr", "bon"), Shot("bad", "fr", "mal")] * 8
    facts = tune_generator(tiny_model, pairs, tmp_path / "g", shots=[])
    assert facts["epoch_losses"][-1] < facts["epoch_losses"][0]
    assert facts["params_total"] == tiny_model.params_total and 0 < facts["params_trainable"] < facts["params_total"]
    loaded = load_model(tmp_path / "g")
    assert loaded.params_total == tiny_model.params_total and loaded.fingerprint != tiny_model.fingerprint
    assert generator_shots(tmp_path / "g") == [] and json.loads((tmp_path / "g" / GENERATOR_FILE).read_text())
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        tune_generator(tiny_model, pairs, tmp_path / "g")


def test_serve_terms_answers_match_with_concept_language_and_span(tmp_path):
    store = TermStore(tmp_path / "t.sqlite")
    store.put_batch([Term("JP", "ja", "日本", -0.1), Term("PE", "es", "Perú", -0.2)],
                    [("JP", "ja", 1, 1), ("PE", "es", 1, 1)], "f" * 16, "h" * 16)
    with LoopbackServer(create_app(ServeConfig(terms=tmp_path / "t.sqlite"))) as client:
        answer = client.post("/match", json={"text": "Vuelo de PERÚ a 日本です"}).json()
        assert [(m["concept"], m["language"], m["start"], m["end"]) for m in answer["matches"]] == [
            ("PE", "es", 9, 13), ("JP", "ja", 16, 18)]
        assert client.get("/predict", params={"text": "x"}).status_code == 404  # no prediction store given
    with pytest.raises(ConfigError, match="give --store"):
        ServeConfig()


def test_expand_command_refuses_bad_input_before_loading_a_model(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "A", "names": ["a"]}\n{"id": "A", "names": ["b"]}\n')
    line = one_error_line(run_cli("expand", "--concepts", path, "--languages", "de", "--store", tmp_path / "t"))
    assert 'c.jsonl:2: field "id" duplicate concept id' in line and not (tmp_path / "t").exists()
    line = one_error_line(run_cli("expand", "--concepts", path, "--languages", "xx1", "--store", tmp_path / "t"))
    assert "unknown language code 'xx1'" in line


def test_the_shared_prefix_cache_changes_no_candidate(tiny_model):
    from tunelab.generation.prompts import (
        generate_candidates,
        render_prompt,
        shared_prefix,
        stop_token_ids,
    )

    shots = [Shot("good", "fr", "bon"), Shot("bad", "de", "schlecht")]
    prompts = [render_prompt(tiny_model.tokenizer, shots, source, lang)[0]
               for source in ("good", "bad", "nice day") for lang in ("fr", "de")]
    prefix = shared_prefix(tiny_model.tokenizer, shots)
    assert prefix and all(p.startswith(prefix) for p in prompts)
    with torch.no_grad():  # sharp attention: a token at a wrong position would change the scores
        for name, weight in tiny_model.lm.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                weight.mul_(30)
    for per_language in (1, 3):  # greedy, and beam search over 3 beams (each prompt encoded once, not per beam)
        config = ExpandConfig(languages=("fr",), per_language=per_language, max_new_tokens=4, batch_size=6)
        plain = generate_candidates(tiny_model, prompts, config, chat=False)
        cached = generate_candidates(tiny_model, prompts, config, chat=False, prefix=prefix)
        one_by_one = generate_candidates(tiny_model, prompts, config, chat=False, batch_size=1)
        for other in (plain, one_by_one):  # the same candidates whatever the batching and caching
            assert [[c[0] for c in row] for row in cached] == [[c[0] for c in row] for row in other]
            assert [c[1] for row in cached for c in row] == pytest.approx([c[1] for row in other for c in row],
                                                                          abs=1e-4)
    # and the same as generate()'s own path, which encodes each prompt once per beam
    for prompt, row in zip(prompts, cached):
        ids = tiny_model.tokenizer(prompt, return_tensors="pt").input_ids
        out = tiny_model.lm.generate(input_ids=ids, max_new_tokens=4, num_beams=3, num_return_sequences=3,
                                     do_sample=False, early_stopping=True, eos_token_id=stop_token_ids(
                                         tiny_model.tokenizer), pad_token_id=tiny_model.tokenizer.pad_token_id,
                                     return_dict_in_generate=True, output_scores=True)
        texts = tiny_model.tokenizer.batch_decode(out.sequences[:, ids.shape[1]:], skip_special_tokens=True)
        assert [text.split("\n")[0] for text in texts] == [c[0] for c in row]
        assert out.sequences_scores.tolist() == pytest.approx([c[1] for c in row], abs=1e-4)


def test_a_kept_term_carries_its_evidence_and_one_failing_every_check_is_not_stored():
    from tunelab.generation.expand import _select

    counts = dict.fromkeys(("candidates", "unfinished", "empty", "dropped_score", "dropped_verifier",
                            "dropped_agreement", "dropped_confidence"), 0)
    # four samples: three agree on "Allemagne" (two spellings of case), one says "Germanie"
    generated = [[("Allemagne", -0.3, True), ("allemagne", -0.4, True), ("Allemagne", -0.35, True),
                  ("Germanie", -0.2, True)]]
    config = ExpandConfig(languages=("fr",), per_language=4, decoding="sample", min_agreement=2)
    terms, finished = _select([(Concept("DE", ("Germany",)), "fr")], generated, config, None, counts)
    assert [t.text for t in terms] == ["Allemagne"] and counts["dropped_agreement"] == 1  # Germanie: 1 of 4
    term = terms[0]
    assert term.agreement == 3 and term.confidence == 0.75
    evidence = json.loads(term.evidence)
    assert evidence["agreement"] == 3 and evidence["of"] == 4 and evidence["kept_because"] == ["agreement 3 of 4 >= 2"]
    assert finished == [("DE", "fr", 4, 1)]
    floor = ExpandConfig(languages=("fr",), per_language=4, decoding="sample", min_confidence=0.9)
    assert _select([(Concept("DE", ("Germany",)), "fr")], generated, floor, None, dict(counts))[0] == []


def test_back_translation_keeps_a_term_only_when_the_model_names_its_concept_in_english(tiny_model, monkeypatch):
    from tunelab.generation import expand as module

    asked = []

    def answers(model, prompts, config, *, chat, prefix=""):  # the model's English names, one greedy answer each
        asked.extend(prompts)
        assert config.per_language == 1 and config.decoding == "beam"
        return [[("Germany", -0.1, True)], [("Austria", -0.2, True)]]

    monkeypatch.setattr(module, "generate_candidates", answers)
    unchecked = json.dumps({"kept_because": ["no check asked for (every finished candidate is kept)"]})
    terms = [Term("DE", "fr", "Allemagne", -0.3, evidence=unchecked),
             Term("DE", "fr", "Autriche", -0.5, evidence=unchecked)]
    counts = {"dropped_back_translation": 0}
    kept, finished = module._back_translated(tiny_model, terms, [("DE", "fr", 3, 2)],
                                             [(Concept("DE", ("Germany",)), "fr")], SHOTS, False,
                                             ExpandConfig(languages=("fr",), back_translate=True), counts)
    assert [t.text for t in kept] == ["Allemagne"] and finished == [("DE", "fr", 3, 1)]
    assert counts["dropped_back_translation"] == 1
    evidence = json.loads(kept[0].evidence)
    assert evidence["back_translated"] and evidence["kept_because"] == ["back-translated to 'Germany'"]
    assert asked[0].endswith("Allemagne in English:") and "bon in English: good" in asked[0]  # the shots reversed


def test_expand_with_back_translation_runs_end_to_end_and_changes_the_prompt_hash(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr("tunelab.generation.prompts.stop_token_ids", lambda tokenizer: list(range(len(tokenizer))))
    config = ExpandConfig(languages=("fr",), per_language=2, max_new_tokens=2, decoding="sample")
    plain = expand(tiny_model, [Concept("P", ("good",))], tmp_path / "a.sqlite", config, shots=SHOTS)
    checked = expand(tiny_model, [Concept("P", ("good",))], tmp_path / "b.sqlite",
                     dataclasses.replace(config, back_translate=True), shots=SHOTS)
    assert checked["prompt_hash"] != plain["prompt_hash"]
    # a random model almost never answers "good": what it kept plus what it dropped is what it would have kept
    assert checked["kept"] + checked["dropped_back_translation"] == plain["kept"] > 0


def test_evidence_is_stored_and_match_honours_a_confidence_floor(tmp_path):
    from fastapi.testclient import TestClient

    from tunelab.offline.config import ServeConfig
    from tunelab.offline.serve import create_app

    store = TermStore(tmp_path / "t.sqlite")
    store.put_batch([Term("DE", "fr", "Allemagne", -0.1, agreement=3, confidence=0.75, evidence='{"of": 4}'),
                     Term("DE", "fr", "Germanie", -2.0, agreement=1, confidence=0.25, evidence='{"of": 4}')],
                    [("DE", "fr", 4, 2)], "f" * 16, "h" * 16)
    stored = {t.text: t for t in store.terms()}
    store.close()
    assert stored["Allemagne"].agreement == 3 and json.loads(stored["Germanie"].evidence) == {"of": 4}
    client = TestClient(create_app(ServeConfig(terms=tmp_path / "t.sqlite")))
    text = "Allemagne ou Germanie"
    every = client.post("/match", json={"text": text}).json()["matches"]
    assert sorted(m["term"] for m in every) == ["Allemagne", "Germanie"]
    sure = client.post("/match", json={"text": text, "min_confidence": 0.5}).json()["matches"]
    assert [m["term"] for m in sure] == ["Allemagne"] and sure[0]["confidence"] == 0.75
    assert client.post("/match", json={"text": text, "min_confidence": 2}).status_code == 422
