"""The probe rung: frozen base model states read whole (windows), cached once, a linear head chosen on validation."""

import numpy as np
import pytest
import torch

from tunelab.config import ProbeConfig
from tunelab.errors import ConfigError
from tunelab.models import weights_fingerprint
from tunelab.predictor import load_predictor, predict
from tunelab.rungs.probe import fit_probe
from tunelab.scoring.feature_cache import FeatureCache
from tunelab.scoring.hidden import HiddenStates, Reading
from tunelab.scoring.length import window_spans


def test_window_spans_cover_every_token_and_end_at_the_end():
    assert window_spans(5, 8, 6) == [(0, 5)]
    spans = window_spans(20, 8, 6)
    assert spans == [(0, 8), (6, 14), (12, 20)]
    covered = set().union(*(range(a, b) for a, b in spans))
    assert covered == set(range(20)) and all(b - a == 8 for a, b in spans)


def test_a_long_text_is_read_whole_in_windows_and_averaged(tiny_model):
    states = HiddenStates(tiny_model, Reading(layers=(1, 2), window=4, stride=3))
    text = "good bad nice sad fine poor kind grim"  # 8 tokens: windows (0,4) (3,7) (4,8)
    features, windows, _ = states.features([text, "good"])
    assert list(windows) == [3, 1] and features.shape == (2, 2, 2, 32)
    # The average of the windows, each read on its own.
    parts, _, _ = states.features(["good bad nice sad", "sad fine poor kind", "fine poor kind grim"])
    assert np.allclose(features[0], parts.mean(axis=0), atol=1e-5)


def test_features_are_computed_once_and_read_back_from_the_cache(tiny_model, tmp_path):
    cache = FeatureCache(tmp_path / "features.sqlite")
    states = HiddenStates(tiny_model, Reading(layers=(2,), window=16, stride=12), cache)
    first, _, from_cache = states.features(["good", "bad", "good"])
    assert from_cache == 0 and cache.size_bytes() > 0
    again, _, from_cache = states.features(["bad", "good"])
    assert from_cache == 2 and np.array_equal(again, first[[1, 0]])
    other = HiddenStates(tiny_model, Reading(layers=(1,), window=16, stride=12), cache)  # other layers: other key
    assert other.features(["good"])[2] == 0
    (tmp_path / "features.sqlite").unlink()  # safe to delete: recomputed, same numbers
    assert np.allclose(states.features(["good"])[0], first[:1], atol=1e-5)  # batch shapes differ: float noise


def test_the_cache_evicts_the_entries_used_longest_ago_past_its_limit(tmp_path):
    cache = FeatureCache(tmp_path / "f.sqlite", limit_mb=0.01)  # 10,000 bytes
    block = np.zeros((1000,), dtype=np.float32)  # 4,000 bytes each
    for key in ("a", "b", "c"):
        cache.put_many({key: (block, 1)})
    assert set(cache.get_many(["a", "b", "c"])) == {"b", "c"} and cache.size_bytes() <= 10_000


def test_probe_is_a_predictor_that_round_trips_and_changes_no_weight(tiny_model, tiny_task, tmp_path):
    before = weights_fingerprint(tiny_model.lm)
    probe = fit_probe(tiny_model, tiny_task, ProbeConfig(validation_size=4), out_dir=tmp_path / "p")
    assert weights_fingerprint(tiny_model.lm) == before
    assert probe.params_trainable == probe.linear.coef_.size + probe.linear.intercept_.size
    assert probe.params_total == tiny_model.params_total + probe.params_trainable
    assert probe.layer in (1, 2) and probe.pooling in ("mean", "last", "mean+last")
    assert len(probe.meta["selection"]) == 2 * 3 * 4  # layers x poolings x strengths, all scored on validation
    assert {"accuracy", "windows_per_text", "params_total"} <= set(probe.meta["metrics"])
    loaded = load_predictor(tmp_path / "p")
    texts = [e.text for e in tiny_task.test]
    assert loaded.fingerprint == probe.fingerprint and loaded.rung == "probe"
    assert np.allclose(predict(loaded, texts).probs, predict(probe, texts).probs, atol=1e-6)
    assert not any(p.suffix in (".pkl", ".pickle") for p in (tmp_path / "p").rglob("*"))


def test_probe_regression_clips_to_the_task_range(tiny_model, tiny_regression_task):
    probe = fit_probe(tiny_model, tiny_regression_task, ProbeConfig(validation_size=3, pooling="mean"))
    values = predict(probe, ["good", "bad"]).values
    low, high = probe.value_range
    assert np.all((low <= values) & (values <= high)) and {r["pooling"] for r in probe.meta["selection"]} == {"mean"}


def test_probe_learns_what_the_states_separate(tiny_model, tiny_task):
    # The tiny model is random, but its states of distinct words differ: a probe fitted on the test words themselves
    # must classify them, which a probe whose head ignored the states could not.
    import dataclasses

    task = dataclasses.replace(tiny_task, train=tiny_task.train + tiny_task.test)
    probe = fit_probe(tiny_model, task, ProbeConfig(validation_size=4, layers="2"))
    assert probe.meta["metrics"]["accuracy"] >= 0.75


def test_probe_refuses_a_layer_the_model_lacks(tiny_model, tiny_task):
    with pytest.raises(ConfigError, match="--layers 7"):
        fit_probe(tiny_model, tiny_task, ProbeConfig(layers="7"))
    with pytest.raises(ConfigError, match="--overlap"):
        ProbeConfig(window=16, overlap=8)


def test_auto_precision_of_the_probe_records_its_parity_check(tiny_model, tiny_task, monkeypatch):
    monkeypatch.setattr("tunelab.scoring.precision.bf16_speedup", lambda device_type: 4.0)
    monkeypatch.setattr("tunelab.rungs.probe.bf16_is_fast", lambda device_type: True)
    probe = fit_probe(tiny_model, tiny_task, ProbeConfig(validation_size=4, layers="2"))
    record = probe.meta["training"]["precision"]
    assert record["requested"] == "auto" and record["parity"]["n"] == len(tiny_task.train)
    assert record["precision"] == ("bf16" if record["parity"]["passes"] else "fp32") == probe.reading.precision


def test_the_cached_prompt_prefix_gives_the_states_of_reading_the_whole_prompt(tiny_model):
    framed = HiddenStates(tiny_model, Reading(layers=(1, 2), window=16, stride=12, before="Word : ",
                                              after=" Sentiment :"))
    features, _, _ = framed.features(["good bad", "nice"])
    # The same states read the obvious way: the whole prompt in one forward pass, no cache.
    ids = tiny_model.tokenizer("Word : good bad Sentiment :", add_special_tokens=False).input_ids  # 6 tokens
    with torch.no_grad():
        hidden = tiny_model.lm.base_model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    for j, layer in enumerate((1, 2)):
        assert torch.allclose(torch.tensor(features[0, j, 0]), hidden[layer][0, 2:4].mean(0), atol=1e-5)  # text
        assert torch.allclose(torch.tensor(features[0, j, 1]), hidden[layer][0, -1], atol=1e-5)  # last token
