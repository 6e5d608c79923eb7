"""Classical baselines: fitted by scikit-learn, saved without pickle, loaded back to the same predictor."""

import dataclasses
import json

import numpy as np
import pytest
from helpers import one_error_line, run_cli

from tunelab.errors import ConfigError, ModelError
from tunelab.predictor import load_predictor, predict
from tunelab.rungs.baseline import BaselineConfig, fit_baseline
from tunelab.tasks import Example, make_task


def polarity_task():
    good = ["good", "great", "lovely", "nice", "superb", "happy", "glad", "kind", "fine", "bright"]
    bad = ["bad", "awful", "nasty", "sad", "grim", "cruel", "poor", "vile", "dull", "sour"]
    train = [Example(f"a {w} day", "positive") for w in good[:7]] + [Example(f"a {w} day", "negative") for w in bad[:7]]
    test = [Example(f"so {w}", "positive") for w in good] + [Example(f"so {w}", "negative") for w in bad]
    return make_task("polarity", "classification", train, test)


def test_tfidf_baseline_round_trips_through_a_folder_without_pickle(tmp_path):
    task = polarity_task()
    fitted = fit_baseline(task, BaselineConfig("tfidf"), out_dir=tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["baseline.safetensors", "tunelab.json",
                                                                  "vocabulary.json"]
    loaded = load_predictor(tmp_path / "b")
    texts = [e.text for e in task.test]
    assert np.allclose(predict(loaded, texts).probs, predict(fitted, texts).probs)
    assert loaded.fingerprint == fitted.fingerprint and loaded.rung == "baseline"
    # Parameters: one weight per feature (binary logistic regression) and an intercept.
    vocabulary = json.loads((tmp_path / "b" / "vocabulary.json").read_text())
    features = sum(len(terms) for terms in vocabulary.values())
    assert fitted.params_trainable == fitted.params_total == features + 1
    assert fitted.meta["metrics"]["accuracy"] >= 0.7  # the test words were seen in training
    low, high = fitted.meta["metrics"]["intervals"]["accuracy"]
    assert low <= fitted.meta["metrics"]["accuracy"] <= high


def test_a_changed_coefficient_is_caught_on_load(tmp_path):
    from safetensors.numpy import load_file, save_file

    fit_baseline(polarity_task(), out_dir=tmp_path / "b")
    tensors = load_file(str(tmp_path / "b" / "baseline.safetensors"))
    tensors["coef"][0, 0] += 1.0
    save_file(tensors, str(tmp_path / "b" / "baseline.safetensors"))
    with pytest.raises(ModelError, match="changed after it was saved"):
        load_predictor(tmp_path / "b")


def test_ridge_baseline_for_regression_stays_in_the_value_range(tiny_regression_task, tmp_path):
    fitted = fit_baseline(tiny_regression_task, out_dir=tmp_path / "r")
    values = predict(load_predictor(tmp_path / "r"), ["good", "bad", "zzz unseen"]).values
    low, high = tiny_regression_task.value_range
    assert np.all((values >= low) & (values <= high))
    assert "spearman" in fitted.meta["metrics"]["intervals"]


def test_embed_baseline_uses_the_frozen_encoder(tmp_path):
    task = polarity_task()
    fitted = fit_baseline(task, BaselineConfig("embed"), out_dir=tmp_path / "e")
    assert fitted.params_trainable == 384 + 1  # MiniLM's 384 dimensions, one output, an intercept
    assert fitted.params_total > 20_000_000  # the frozen encoder counts in the total
    loaded = load_predictor(tmp_path / "e")
    texts = [e.text for e in task.test]
    assert np.allclose(predict(loaded, texts).probs, predict(fitted, texts).probs, atol=1e-5)
    long_text = " ".join(f"word{i}" for i in range(300))  # past 256 tokens: read whole in windows, not cut
    assert loaded.count_truncated([long_text, "short"]) == 0
    assert loaded.count_windows([long_text, "short"])[1] == 1 and loaded.count_windows([long_text])[0] >= 2
    # The long text's vector is the normalised mean of its windows' vectors, each read on its own.
    embed = loaded.embed
    windows = embed.windows([long_text])[0]
    parts = embed.embedder.encode_ids(windows)
    mean = parts.sum(axis=0) / np.linalg.norm(parts.sum(axis=0))
    assert np.allclose(embed([long_text])[0], mean, atol=1e-5)


def test_embed_baseline_can_cut_long_texts_instead(tmp_path):
    fitted = fit_baseline(polarity_task(), BaselineConfig("embed", long_texts="cut"), out_dir=tmp_path / "e")
    loaded = load_predictor(tmp_path / "e")
    assert loaded.embed.long_texts == "cut" and loaded.fingerprint == fitted.fingerprint
    assert loaded.count_truncated(["word " * 400, "short"]) == 1  # cut to 256 tokens, head and tail, and counted


def test_a_training_split_without_every_label_is_refused():
    task = polarity_task()
    one_label = dataclasses.replace(task, train=tuple(e for e in task.train if e.label == "positive"))
    with pytest.raises(ConfigError, match="needs training examples of every label"):
        fit_baseline(one_label)


def test_baseline_command_saves_a_predictor_every_command_accepts(tmp_path):
    done = run_cli("baseline", "--task", "subjectivity", "--out", tmp_path / "b", "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout.splitlines()[0])
    assert result["rung"] == "baseline" and result["intervals"]["accuracy"][0] <= result["accuracy"]
    evaluated = run_cli("eval", "--model", tmp_path / "b", "--task", "subjectivity", "--json")
    assert json.loads(evaluated.stdout)["accuracy"] == result["accuracy"]
    info = run_cli("info", "--model", tmp_path / "b", "--json")
    assert json.loads(info.stdout)["params_trainable"] == result["params_trainable"]
    line = one_error_line(run_cli("baseline", "--task", "subjectivity", "--method", "bow", "--out", tmp_path / "c"))
    assert "--method must be one of tfidf, embed" in line
