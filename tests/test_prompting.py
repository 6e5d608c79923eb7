import json
import random
import re
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.errors import ConfigError, ModelError
from tunelab.predictor import load_predictor, predict, save_predictor
from tunelab.rungs.prompting import PromptConfig, few_shot, select_shots, similar_shots
from tunelab.scoring.tokens import PrefixCache, encode_prefix, label_log_likelihoods, score_reference, tokenize_pairs
from tunelab.scoring.verbalizer import PromptFormat
from tunelab.tasks import Example


def _naive_scores(predictor, texts):
    """Every (query, label) pair scored from scratch on the whole prompt string."""
    model, fmt = predictor.model, predictor.fmt
    prefix = predictor.prefix_text()
    return torch.tensor([[score_reference(model.lm, model.tokenizer, prefix, fmt.query(t), label)
                          for label in predictor.verbalizer.label_texts] for t in texts])


@pytest.mark.parametrize("shots", [0, 1, 3])
def test_cached_prefix_scores_equal_uncached(tiny_model, tiny_task, shots):
    predictor = few_shot(tiny_model, tiny_task, PromptConfig(shots=shots))
    texts = ["good", "awful nasty grim", "kind : fine"]  # different lengths: the batch is padded
    cached = predictor.log_likelihoods(texts)
    assert torch.allclose(cached, _naive_scores(predictor, texts), atol=1e-4)


def test_multi_token_labels_are_summed_and_match_uncached(tiny_bpe_model, tiny_task):
    predictor = few_shot(tiny_bpe_model, tiny_task, PromptConfig(shots=2))
    pairs = predictor.verbalizer.pairs(predictor.prefix_text(), ["good"])[0]
    assert all(len(p.ids) - p.label_start > 1 for p in pairs), "the BPE fixture must split the labels"
    texts = ["good", "vile cruel"]
    assert torch.allclose(predictor.log_likelihoods(texts), _naive_scores(predictor, texts), atol=1e-4)


def test_scoring_equals_direct_computation(tiny_model):
    """Label score = log softmax of the full-vocabulary logits after the prompt, read at the label token."""
    lm, tokenizer = tiny_model.lm, tiny_model.tokenizer
    prefix, query = "Classify each word .", " Word : good Sentiment :"
    pairs = tokenize_pairs(tokenizer, prefix, [query], [" positive", " negative"])
    prefix_ids = tokenizer(prefix).input_ids
    scores, counts = label_log_likelihoods(lm, encode_prefix(lm, prefix_ids), pairs, tokenizer.pad_token_id)
    ids = tokenizer(prefix + query).input_ids
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([ids])).logits[0, -1]  # (vocab,)
    labels = [tokenizer.convert_tokens_to_ids(word) for word in ("positive", "negative")]
    assert torch.allclose(scores[0], torch.log_softmax(logits, -1)[labels], atol=1e-5)
    assert counts.tolist() == [[1.0, 1.0]]


def test_empty_prefix_scores_equal_uncached(tiny_model, tiny_task):
    predictor = few_shot(tiny_model, tiny_task, PromptConfig(shots=0, instruction=""))
    assert predictor.log_likelihoods(["good"]).shape == (1, 2)
    assert torch.allclose(predictor.log_likelihoods(["good", "bad"]), _naive_scores(predictor, ["good", "bad"]),
                          atol=1e-4)


def test_probabilities_are_softmax_of_label_scores(tiny_model, tiny_task):
    predictor = few_shot(tiny_model, tiny_task, PromptConfig(shots=2))
    probs = predictor.predict_batch(["good", "bad"]).probs
    assert np.allclose(probs, torch.softmax(predictor.log_likelihoods(["good", "bad"]), -1).numpy())
    assert np.allclose(probs.sum(1), 1.0)


def test_prompting_changes_no_parameter(tiny_model, tiny_task):
    before = {k: v.clone() for k, v in tiny_model.lm.state_dict().items()}
    predictor = few_shot(tiny_model, tiny_task, PromptConfig(shots=4, calibrate=True))
    predict(predictor, [e.text for e in tiny_task.test])
    after = tiny_model.lm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert predictor.params_trainable == 0
    assert predictor.params_total == tiny_model.params_total


def test_calibration_divides_out_content_free_distribution(tiny_model, tiny_task):
    plain = few_shot(tiny_model, tiny_task, PromptConfig(shots=2))
    calibrated = few_shot(tiny_model, tiny_task, PromptConfig(shots=2, calibrate=True))
    bias = np.exp(calibrated.calibration)
    assert np.isclose(bias.sum(), 1.0) and not np.allclose(bias, 0.5)
    texts = ["good", "vile"]
    expected = plain.predict_batch(texts).probs / bias
    expected /= expected.sum(1, keepdims=True)
    assert np.allclose(calibrated.predict_batch(texts).probs, expected, atol=1e-6)


@pytest.mark.parametrize("calibration", ["batch", "contextual"])
def test_calibration_check_reads_one_pass_as_predicting_twice_would(tiny_model, tiny_task, calibration):
    config = PromptConfig(shots=2, calibrate=True, calibration=calibration)
    calibrated = few_shot(tiny_model, tiny_task, config)
    held_out = [e for e in tiny_task.train if e not in calibrated.shots]
    check = random.Random(config.seed + 1).sample(held_out, len(held_out))  # the examples the check drew
    texts, gold = [e.text for e in check], np.array([e.label for e in check])

    def accuracy(predictor):
        return float(np.mean(np.array(predictor.label_names)[predict(predictor, texts).probs.argmax(1)] == gold))

    plain = few_shot(tiny_model, tiny_task, PromptConfig(shots=2))
    if calibration == "batch":  # the mean label distribution over the check examples, as calibrate(texts) measures
        assert np.allclose(np.exp(calibrated.calibration), predict(plain, texts).probs.mean(0), atol=1e-5)
    assert calibrated.calibration_check == {"n": len(check), "with": accuracy(calibrated),
                                            "without": accuracy(plain)}


def test_batch_calibration_without_examples_left_is_refused(tiny_model, tiny_task):
    with pytest.raises(ConfigError, match="fewer shots or --calibration contextual"):
        few_shot(tiny_model, tiny_task, PromptConfig(shots=len(tiny_task.train), calibrate=True, calibration="batch"))


def test_balanced_selection_is_equal_per_label_and_interleaved():
    train = [Example(f"p{i}", "pos") for i in range(10)] + [Example(f"n{i}", "neg") for i in range(3)]
    shots = select_shots(train, 6, "balanced", random.Random(1))
    labels = [s.label for s in shots]
    assert Counter(labels) == {"pos": 3, "neg": 3}
    assert all(a != b for a, b in zip(labels, labels[1:]))
    assert len(set(s.text for s in shots)) == 6
    # an odd K and a class that runs out: the rest comes from the other class
    labels = [s.label for s in select_shots(train, 9, "balanced", random.Random(1))]
    assert Counter(labels) == {"pos": 6, "neg": 3}


def test_random_selection_is_reproducible_by_seed(tiny_task):
    a = select_shots(list(tiny_task.train), 4, "random", random.Random(3))
    b = select_shots(list(tiny_task.train), 4, "random", random.Random(3))
    assert a == b and len(set(a)) == 4


def test_similar_selection_puts_the_nearest_example_last(letter_embedder):
    pool = [Example("apple", "x"), Example("zebra", "y"), Example("apples", "x"), Example("quartz", "y")]
    chosen = similar_shots(pool, ["apple", "zebras"], 2, letter_embedder)
    assert chosen[0][-1].text == "apple" and chosen[0][0].text == "apples"
    assert chosen[1][-1].text == "zebra"


def test_similar_shots_score_like_the_same_prompt_built_by_hand(tiny_model, tiny_task, letter_embedder):
    predictor = few_shot(tiny_model, tiny_task, PromptConfig(shots=2, select="similar"), embedder=letter_embedder)
    scores = predictor.log_likelihoods(["good"])
    shots = similar_shots(list(tiny_task.train), ["good"], 2, letter_embedder)[0]
    fmt = predictor.fmt
    query = fmt.shots_block([(e.text, e.label) for e in shots]) + fmt.query("good")
    naive = [score_reference(tiny_model.lm, tiny_model.tokenizer, fmt.instruction, query, label)
             for label in predictor.verbalizer.label_texts]
    assert torch.allclose(scores[0], torch.tensor(naive), atol=1e-4)


def test_regression_predicts_expected_rating_within_range(tiny_model, tiny_regression_task):
    predictor = few_shot(tiny_model, tiny_regression_task, PromptConfig(shots=3))
    values = predict(predictor, [e.text for e in tiny_regression_task.test]).values
    assert values.shape == (len(tiny_regression_task.test),)
    assert np.all(values >= -4) and np.all(values <= 4)
    shot_ratings = [pair[1] for pair in predictor.verbalizer.shot_pairs(predictor.shots)]
    assert all(r in [str(i) for i in range(1, 10)] for r in shot_ratings)


def test_template_splits_label_lead_whitespace():
    fmt = PromptFormat.from_template("{text}: {label}", "")
    assert fmt.query("plum") == "plum:" and fmt.label_text("drupe") == " drupe" and fmt.separator == "\n"
    assert fmt.shots_block([("plum", "drupe"), ("pear", "pome")]) == "plum: drupe\npear: pome\n"


@pytest.mark.parametrize("template", ["{label} {text}", "no text here {label}", "{text} {label} {label}"])
def test_bad_templates_are_config_errors(template):
    with pytest.raises(ConfigError, match="--template"):
        PromptConfig(template=template)


def test_too_many_shots_is_a_config_error(tiny_model, tiny_task):
    with pytest.raises(ConfigError, match="--shots 99 is larger than the training set"):
        few_shot(tiny_model, tiny_task, PromptConfig(shots=99))


def test_config_lists_every_problem_at_once():
    with pytest.raises(ConfigError) as caught:
        PromptConfig(shots=-1, batch_size=0, select="best")
    assert len(caught.value.problems) == 3


def test_save_load_roundtrip_reproduces_predictions(tiny_model, tiny_task, tmp_path):
    predictor = few_shot(tiny_model, tiny_task, PromptConfig(shots=3, calibrate=True))
    texts = [e.text for e in tiny_task.test]
    before = predict(predictor, texts).probs
    assert not np.allclose(before, 0.5), "a trivial output would make the round trip meaningless"
    save_predictor(predictor, tmp_path / "prompt")
    loaded = load_predictor(tmp_path / "prompt")
    assert loaded.fingerprint == predictor.fingerprint
    assert np.allclose(predict(loaded, texts).probs, before, atol=1e-6)


def test_labels_with_a_shared_start_score_like_the_reference(tiny_model):
    lm, tokenizer = tiny_model.lm, tiny_model.tokenizer
    prefix, queries = "Classify each word .", [" Word : good", " Word : vile cruel Rating"]
    for labels in ([" : positive", " : negative"],  # the same first token, then one token each
                   [" : positive", " : negative", " : 9 positive"]):
        pairs = tokenize_pairs(tokenizer, prefix, queries, labels)
        for prefix_cache in (encode_prefix(lm, tokenizer(prefix).input_ids), PrefixCache(tokenizer(prefix).input_ids)):
            scores, _ = label_log_likelihoods(lm, prefix_cache, pairs, tokenizer.pad_token_id)
            reference = torch.tensor([[score_reference(lm, tokenizer, prefix, q, label) for label in labels]
                                      for q in queries])
            assert torch.allclose(scores.detach(), reference, atol=1e-4)


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(labels="ab"), 'field "labels"'),
    (lambda p: p.update(kind="bogus"), 'field "kind"'),
    (lambda p: p.pop("fingerprint"), 'field "fingerprint"'),
    (lambda p: p.update(labels=["positive", "positive"]), "two or more distinct labels"),
    (lambda p: p.update(labels=["negative", "positive", "neutral"]), "changed after it was saved"),
    (lambda p: p["format"].update(instruction="Say positive.\n"), "changed after it was saved"),
    (lambda p: p.update(shots="x"), "damaged artifact"),
])
def test_a_tampered_artifact_is_refused_with_one_line(tiny_model, tiny_task, tmp_path, edit, message):
    save_predictor(few_shot(tiny_model, tiny_task, PromptConfig(shots=2)), tmp_path / "p")
    path = tmp_path / "p" / "tunelab.json"
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))
    with pytest.raises(ModelError, match=re.escape(message)) as caught:
        load_predictor(tmp_path / "p")
    assert "\n" not in str(caught.value)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(["rung", "kind", "labels", "fingerprint", "params_total", "format",
                                                "value_range", "config", "format_version", "shots"]), JSON_VALUES,
                               max_size=3))
def test_any_edit_of_tunelab_json_loads_or_is_a_model_error(tiny_model, tiny_task, tmp_path_factory, changes):
    folder = tmp_path_factory.mktemp("artifact")
    predictor = few_shot(tiny_model, tiny_task, PromptConfig(shots=1))
    save_predictor(predictor, folder)
    payload = {**json.loads((folder / "tunelab.json").read_text()), **changes}
    (folder / "tunelab.json").write_text(json.dumps(payload))
    try:
        loaded = load_predictor(folder)
    except ModelError as err:
        assert "\n" not in str(err) and str(folder) in str(err)
    else:
        assert loaded.fingerprint == predictor.fingerprint  # whatever loads is the predictor that was saved


def test_shots_that_do_not_fit_the_context_are_dropped_and_counted(tiny_model, tiny_task):
    fits = few_shot(tiny_model, tiny_task, PromptConfig(shots=6, max_length=500))
    assert fits.shots_dropped == 0 and len(fits.shots) == 6
    tight = few_shot(tiny_model, tiny_task, PromptConfig(shots=6, max_length=30))
    assert tight.shots_dropped > 0 and len(tight.shots) == 6 - tight.shots_dropped
    assert tight.verbalizer.overhead(tight.prefix_text()) + 1 <= 30
    assert tight.shots == fits.shots[tight.shots_dropped:]  # the shots nearest the query stay


def test_a_megabyte_of_text_is_cut_to_the_context_and_counted(tiny_model, tiny_task):
    predictor = few_shot(tiny_model, tiny_task, PromptConfig(shots=2, max_length=64))
    huge = "good " * 200_000  # a megabyte
    scores = predictor.log_likelihoods([huge, "bad"])
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()
    assert predictor.count_truncated([huge, "bad"]) == 1
    with pytest.raises(ConfigError, match="larger than the model's context window"):
        few_shot(tiny_model, tiny_task, PromptConfig(max_length=100_000))
