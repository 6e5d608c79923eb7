import json

import numpy as np
import pytest
import torch
from helpers import one_error_line, run_cli, task_args

from tunelab.errors import ConfigError
from tunelab.predictor import load_predictor, predict, save_predictor
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.rungs.search import SearchConfig, candidates, search
from tunelab.tasks import Example, make_task, split_examples

WORDS = {"positive": ["good", "great", "nice", "happy", "lovely", "superb", "fine", "kind"],
         "negative": ["bad", "awful", "poor", "sad", "nasty", "grim", "vile", "cruel"]}


@pytest.fixture
def word_task():
    examples = [Example(w, label) for label, words in WORDS.items() for w in words]
    return make_task("words", "classification", examples[::2] + examples[1::2][:6], examples[1::2][6:],
                     instruction="Classify each word .\n", template="Word: {text}\nSentiment: {label}")


def test_search_starts_from_zero_shot_and_keeps_the_best_clear_gain_on_validation(tiny_model, word_task,
                                                                                  letter_embedder):
    config = SearchConfig(max_configs=12, validation_size=4)
    result = search(tiny_model, word_task, PromptConfig(), config, embedder=letter_embedder)
    assert len(result.rows) == 12 and result.stopped_by == "max_configs"
    assert result.rows[0]["config"] == "K=0"  # the task's own zero-shot prompt comes first
    for row in result.rows:  # a clear gain: the paired interval against zero-shot lies above 0
        assert row["clear_gain"] == (row["vs_zero_interval"][0] > 0)
    eligible = [result.rows[0]] + [r for r in result.rows if r["clear_gain"]]
    kept = max(eligible, key=lambda r: r["validation"])  # the first of equals: the cheaper one
    assert kept["config"].startswith(f"K={result.config.shots}") and result.validation == kept["validation"]
    assert result.validation >= result.rows[0]["validation"]
    again = search(tiny_model, word_task, PromptConfig(), config, embedder=letter_embedder)
    assert [(r["config"], r["validation"]) for r in again.rows] == [(r["config"], r["validation"]) for r in result.rows]


def test_search_never_shows_validation_examples_as_shots(tiny_model, word_task, letter_embedder):
    result = search(tiny_model, word_task, PromptConfig(), SearchConfig(max_configs=100, validation_size=4),
                    embedder=letter_embedder)
    assert result.n_validation == 4 and result.stopped_by == "exhausted"
    assert len(result.rows) == len(candidates(word_task, PromptConfig(), len(word_task.train) - 4))
    _, validation = split_examples(list(word_task.train), "classification", 4 / len(word_task.train), 0)
    assert not set(result.predictor.shots) & set(validation)
    assert max(c.shots for c in candidates(word_task, PromptConfig(), len(word_task.train) - 4)) == 8  # K <= pool


def test_search_respects_its_time_budget(tiny_model, word_task):
    result = search(tiny_model, word_task, PromptConfig(), SearchConfig(budget_s=1e-9, validation_size=4))
    assert len(result.rows) == 1 and result.stopped_by == "budget"  # the first one always runs


def test_bad_search_settings_are_one_config_error():
    with pytest.raises(ConfigError) as caught:
        SearchConfig(budget_s=0, max_configs=0, validation_size=1)
    assert len(caught.value.problems) == 3


def test_prompt_search_command_reports_validation_and_saves_what_eval_reproduces(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m")
    out = tmp_path / "searched"
    result = run_cli("prompt", *task_args(), "--model", tmp_path / "m", "--search", "--max-configs", "6",
                     "--validation-size", "2", "--save", out, "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["configs_tried"] == 6 and "searched" in found and found["n_validation"] == 2
    evaluated = json.loads(run_cli("eval", "--model", out, *task_args(), "--json").stdout)
    assert evaluated["accuracy"] == found["accuracy"] and evaluated["fingerprint"] == found["fingerprint"]
    table = run_cli("prompt", *task_args(), "--model", tmp_path / "m", "--search", "--max-configs", "3",
                    "--validation-size", "2")
    assert table.exit_code == 0 and "kept: K=" in table.stdout and table.stdout.count(" s  K=") == 3
    assert "--max-configs must be >= 1" in one_error_line(run_cli("prompt", *task_args(), "--model", tmp_path / "m",
                                                                  "--search", "--max-configs", "0"))


@pytest.mark.parametrize("calibration", ["contextual", "batch"])
def test_calibration_is_checked_on_held_out_examples_and_a_loss_is_said(tiny_model, word_task, calibration):
    predictor = few_shot(tiny_model, word_task, PromptConfig(shots=2, calibrate=True, calibration=calibration))
    check = predictor.calibration_check
    assert check["n"] == len(word_task.train) - 2 and 0 <= check["with"] <= 1 and 0 <= check["without"] <= 1
    assert bool(predictor.notes) == (check["with"] < check["without"])
    if calibration == "batch":  # the bias is the mean label distribution over real inputs
        held_out = [e.text for e in word_task.train if e not in predictor.shots]
        calibration_before, predictor.calibration = predictor.calibration, None
        mean = torch.softmax(predictor.log_likelihoods(held_out), -1).mean(0)
        assert np.allclose(calibration_before, torch.log(mean).numpy(), atol=1e-5)


def test_label_words_are_what_the_prompt_says_and_predictions_keep_the_labels(tiny_model, word_task, tmp_path):
    predictor = few_shot(tiny_model, word_task, PromptConfig(shots=2, label_words="kind,cruel"))
    assert predictor.verbalizer.label_texts == [" kind", " cruel"] and "cruel" in predictor.prefix_text()
    plain = few_shot(tiny_model, word_task, PromptConfig(shots=2))
    texts = [e.text for e in word_task.test]
    assert predict(predictor, texts).label_names == ("negative", "positive")
    assert not np.allclose(predict(predictor, texts).probs, predict(plain, texts).probs)
    save_predictor(predictor, tmp_path / "p")
    assert np.allclose(predict(load_predictor(tmp_path / "p"), texts).probs, predict(predictor, texts).probs)
    with pytest.raises(ConfigError, match="--label-words needs 2 words"):
        few_shot(tiny_model, word_task, PromptConfig(label_words="one"))


class CountingEmbedder:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def encode(self, texts):
        self.calls.append(len(texts))
        return self.inner.encode(texts)


def test_similar_selection_embeds_its_pool_once(tiny_model, word_task, letter_embedder):
    embedder = CountingEmbedder(letter_embedder)
    predictor = few_shot(tiny_model, word_task, PromptConfig(shots=2, select="similar"), embedder=embedder)
    predict(predictor, [e.text for e in word_task.test] + ["good", "bad", "nice"], batch_size=2)
    assert embedder.calls.count(len(word_task.train)) == 1  # the pool, once; then one call per batch of queries
