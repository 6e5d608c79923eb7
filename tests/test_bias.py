import json

import numpy as np
import pytest
from helpers import DATA, one_error_line, run_cli

from tunelab.errors import InputError
from tunelab.measure.bias import counterfactual_gaps, load_probes, slice_metrics, task_slices
from tunelab.predictor import Predictions, save_predictor
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.tasks import Example, make_task


class NameSensitive:
    """P(positive) = 0.9 when the text holds a name from `favoured`, else 0.5 (or constant when favoured is empty)."""

    rung, kind, label_names, params_total, params_trainable, fingerprint = ("test", "classification",
                                                                            ("negative", "positive"), 1, 0, "x")

    def __init__(self, favoured=()):
        self.favoured = set(favoured)

    def predict_batch(self, texts):
        p = np.array([0.9 if any(name in t for name in self.favoured) else 0.4 for t in texts])
        return Predictions("classification", self.label_names, probs=np.stack([1 - p, p], axis=1))


PROBES = {"groups": {"a": ["Ann", "Amy"], "b": ["Bob", "Ben"]}, "templates": ["{name} is here.", "I met {name}."],
          "source": "test"}


def test_name_blind_predictor_passes_and_a_name_sensitive_one_fails():
    blind = counterfactual_gaps(NameSensitive(), PROBES, threshold=0.1)
    assert blind["gap"] == pytest.approx(0.0) and blind["max_gap"] == pytest.approx(0.0)
    assert blind["verdict"] == "pass" and blind["share_label_changed"] == 0.0
    biased = counterfactual_gaps(NameSensitive({"Ann"}), PROBES, threshold=0.1)
    assert biased["gap"] == pytest.approx(0.25)  # group a: mean(0.9, 0.4) = 0.65; group b: 0.4; in both templates
    assert biased["max_gap"] == pytest.approx(0.25) and biased["share_label_changed"] == 1.0
    assert biased["templates"][0]["group_means"] == {"a": pytest.approx(0.65), "b": pytest.approx(0.4)}
    # Two names a group: a resample may hold Amy twice (gap 0) or Ann twice (gap 0.5), so the interval straddles
    # the threshold and the verdict says so instead of guessing; it is wider than 0.3, so the rung is unjudgeable.
    assert biased["gap_interval"] == [pytest.approx(0.0), pytest.approx(0.5)] and biased["verdict"] == "unclear"
    assert biased["unjudgeable"]
    flip = biased["largest_flips"][0]
    assert flip["names"][0] == "Ann" and flip["groups"] == ["a", "b"] and flip["difference"] == pytest.approx(0.5)
    assert flip["labels"] == ["positive", "negative"]
    every_a = counterfactual_gaps(NameSensitive({"Ann", "Amy"}), PROBES, threshold=0.1)
    assert every_a["gap_interval"] == [pytest.approx(0.5), pytest.approx(0.5)] and every_a["verdict"] == "fail"


class GroupShift:
    """P(positive) = 0.5 + `shift` for names of group `favoured`, plus name noise that is the same in every template
    (some names read as words with a sentiment of their own) and template noise: a known gap, measured noisily."""

    rung, kind, label_names, params_total, params_trainable, fingerprint = ("test", "classification",
                                                                            ("negative", "positive"), 1, 0, "y")

    def __init__(self, probes: dict, favoured: str, shift: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.name_noise = {name: rng.normal(0, 0.05) for names in probes["groups"].values() for name in names}
        self.template_noise = {t: rng.normal(0, 0.05) for t in probes["templates"]}
        self.favoured, self.shift, self.probes = set(probes["groups"][favoured]), shift, probes

    def predict_batch(self, texts):
        p = []
        for text in texts:
            template = next(t for t in self.probes["templates"] if text.startswith(t.split("{name}")[0])
                            and text.endswith(t.split("{name}")[1]))
            name = text[len(template.split("{name}")[0]): len(text) - len(template.split("{name}")[1])]
            p.append(0.5 + self.shift * (name in self.favoured) + self.name_noise[name] + self.template_noise[template])
        p = np.clip(np.array(p), 0.01, 0.99)
        return Predictions("classification", self.label_names, probs=np.stack([1 - p, p], axis=1))


@pytest.mark.parametrize("names_per_group", [3, 10])  # the quick run's probe, and the shipped lists' size
def test_the_verdict_finds_a_known_gap_at_the_ladders_sample_sizes(names_per_group):
    shipped = load_probes("names")
    probes = {**shipped, "groups": {g: names[:names_per_group] for g, names in shipped["groups"].items()}}
    group = next(iter(probes["groups"]))
    n_pairs = len(probes["groups"]) * (len(probes["groups"]) - 1) / 2
    for shift, expected in ((0.0, "pass"), (0.6, "fail")):
        found = counterfactual_gaps(GroupShift(probes, group, shift), probes, threshold=0.1)
        # one group shifted: it differs from each of the others, so (groups - 1) of the pairs carry the shift
        true_gap = shift * (len(probes["groups"]) - 1) / n_pairs
        low, high = found["gap_interval"]
        assert found["verdict"] == expected, (shift, found["gap"], found["gap_interval"])
        assert high - low < 0.3 and low <= true_gap + 0.05 and high >= true_gap - 0.05


def test_slice_metrics_match_a_direct_computation():
    test = [Example("a", "positive"), Example("b", "negative"), Example("c", "positive"), Example("d", "negative")]
    task = make_task("s", "classification", test, test)
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.7, 0.3], [0.3, 0.7]])  # predicts pos, neg, neg, pos
    result = slice_metrics(task, Predictions("classification", task.labels, probs=probs), ["x", "x", "y", "y"])
    assert result["by_group"]["x"]["accuracy"] == 1.0 and result["by_group"]["y"]["accuracy"] == 0.0
    assert result["largest_gap"]["accuracy"] == 1.0
    assert result["by_group"]["x"]["selection_rate"] == 0.5 and result["selection_rate_difference"] == 0.0
    assert result["by_group"]["x"]["n"] == 2


def test_slices_come_from_a_field_or_word_length(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "good", "label": "p", "dialect": "x"}\n{"text": "bad", "label": "n"}\n')
    from tunelab.tasks import read_examples

    examples = read_examples(path)
    task = make_task("t", "classification", examples, examples)
    with pytest.raises(InputError, match='field "dialect" is missing from the test examples'):
        task_slices(task, "dialect")
    assert task_slices(task, None) == ["short (<=5)", "short (<=5)"]


def test_probe_files_are_checked(tmp_path):
    assert len(load_probes("names")["groups"]) == 4
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"groups": {"a": ["Ann"]}, "templates": ["{name} ok"]}))
    with pytest.raises(InputError, match="two or more groups"):
        load_probes(str(bad))
    bad.write_text(json.dumps({"groups": {"a": ["Ann"], "b": ["Bob"]}, "templates": ["no slot"]}))
    with pytest.raises(InputError, match=r"each holding \{name\}"):
        load_probes(str(bad))


def test_bias_cli_on_a_saved_predictor(tiny_model, tiny_task, tmp_path):
    save_predictor(few_shot(tiny_model, tiny_task, PromptConfig(shots=1)), tmp_path / "p")
    train, test = DATA / "words.jsonl", tmp_path / "test.jsonl"
    test.write_text('{"text": "lovely", "label": "positive", "g": "one"}\n{"text": "grim", "label": "negative", '
                    '"g": "two"}\n{"text": "nasty", "label": "negative", "g": "two"}\n')
    result = run_cli("bias", "--model", tmp_path / "p", "--train", train, "--test", test, "--slice-field", "g",
                     "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["slices"]["by_group"]) == {"one", "two"}
    probes = report["counterfactual"]
    assert len(probes["templates"]) == 18 and probes["max_gap"] == max(t["gap"] for t in probes["templates"])
    low, high = probes["gap_interval"]
    assert low <= probes["gap"] <= high and probes["gap"] <= probes["max_gap"] + 1e-9
    assert probes["verdict"] == ("pass" if high <= probes["threshold"] else "fail" if low > probes["threshold"]
                                 else "unclear")
    line = one_error_line(run_cli("bias", "--model", tmp_path / "p", "--train", train, "--test", test,
                                  "--slice-field", "region"))
    assert 'field "region" is missing' in line
