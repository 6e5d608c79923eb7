"""Several labels per example: reading, the figures, thresholds, and every rung on a multi-label task."""

import json
import random

import numpy as np
import pytest
from conftest import NEGATIVE_WORDS, POSITIVE_WORDS
from helpers import one_error_line, run_cli
from sklearn.metrics import accuracy_score, f1_score

from tunelab.config import BaselineConfig
from tunelab.errors import InputError
from tunelab.measure.evaluate import evaluate
from tunelab.measure.multilabel import choose_thresholds, macro_f1, micro_f1, subset_accuracy
from tunelab.predictor import load_predictor, read_artifact_json
from tunelab.rungs.baseline import fit_baseline
from tunelab.tasks import Example, load_task, make_task

LABELS = ("negative", "positive")


def _example(rng: random.Random) -> Example:
    """One to three words; labelled with every sentiment its words carry (one label or both)."""
    words = [rng.choice(POSITIVE_WORDS + NEGATIVE_WORDS) for _ in range(rng.randint(1, 3))]
    labels = {"positive" if w in POSITIVE_WORDS else "negative" for w in words}
    return Example(" ".join(words), tuple(sorted(labels)))


@pytest.fixture
def multilabel_task():
    rng = random.Random(0)
    return make_task("mixed", "multilabel", [_example(rng) for _ in range(48)], [_example(rng) for _ in range(24)],
                     template="Text: {text}\nLabel: {label}")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_labels_read_as_a_json_list_or_at_a_separator(tmp_path):
    rows = [{"text": "good", "label": ["positive"]}, {"text": "bad", "label": ["negative", "negative"]},
            {"text": "good bad", "label": ["positive", "negative"]}, {"text": "so so", "label": []}]
    task = load_task(None, train_path=write_jsonl(tmp_path / "train.jsonl", rows),
                     test_path=write_jsonl(tmp_path / "test.jsonl", rows[2:]), kind="multilabel")
    assert task.kind == "multilabel" and task.labels == LABELS
    assert [e.label for e in task.train] == [("positive",), ("negative",), LABELS, ()]
    csv = tmp_path / "train.csv"
    csv.write_text("text,label\ngood,positive\nbad,negative\ngood bad,positive|negative\n")
    test = tmp_path / "test.csv"
    test.write_text("text,label\ngood bad,negative|positive\n")
    task = load_task(None, train_path=csv, test_path=test, kind="multilabel", label_separator="|")
    assert task.train[2].label == LABELS


@pytest.mark.parametrize("label, message", [
    ("positive", r'train.jsonl:2: field "label" must be a JSON list of labels'),
    ([["positive"]], r'train.jsonl:2: field "label" must hold non-empty strings'),
    (["positive", ""], r'train.jsonl:2: field "label" must hold non-empty strings'),
])
def test_a_label_list_that_is_not_a_list_of_labels_names_file_line_and_field(tmp_path, label, message):
    rows = [{"text": "good", "label": ["positive"]}, {"text": "bad", "label": label}]
    with pytest.raises(InputError, match=message):
        load_task(None, train_path=write_jsonl(tmp_path / "train.jsonl", rows), kind="multilabel")


def test_an_unknown_label_in_a_test_row_is_one_line_and_nothing_is_written(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "good", "label": ["positive"]},
                                                   {"text": "bad", "label": ["negative"]}])
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "good", "label": ["positive"]},
                                                 {"text": "meh", "label": ["neutral"]}])
    result = run_cli("baseline", "--train", train, "--test", test, "--kind", "multilabel", "--out", tmp_path / "out")
    line = one_error_line(result)
    assert "test.jsonl:2" in line and '"label"' in line and "'neutral'" in line and not (tmp_path / "out").exists()
    result = run_cli("baseline", "--train", train, "--label-sep", "|", "--out", tmp_path / "out")
    assert "--label-sep" in one_error_line(result)


def test_the_figures_equal_scikit_learns_on_random_label_matrices():
    rng = np.random.default_rng(0)
    for _ in range(20):
        gold, predicted = rng.random((30, 5)) < 0.3, rng.random((30, 5)) < 0.3
        assert micro_f1(gold, predicted) == pytest.approx(f1_score(gold, predicted, average="micro",
                                                                   zero_division=1))
        assert macro_f1(gold, predicted) == pytest.approx(f1_score(gold, predicted, average="macro",
                                                                   zero_division=0))
        assert subset_accuracy(gold, predicted) == pytest.approx(accuracy_score(gold, predicted))


def test_thresholds_give_each_label_its_best_f1_on_the_examples_they_are_chosen_on():
    rng = np.random.default_rng(1)
    gold = rng.random((60, 3)) < 0.4
    scores = np.clip(gold * 0.3 + rng.random((60, 3)) * 0.7, 0, 1)
    thresholds = choose_thresholds(scores, gold)
    for j in range(3):
        best = f1_score(gold[:, j], scores[:, j] >= thresholds[j])
        assert all(best >= f1_score(gold[:, j], scores[:, j] >= t) - 1e-12 for t in np.linspace(0, 1, 101))
    assert choose_thresholds(scores, np.zeros_like(gold))[0] == 1.0  # a label none holds: never given below 1


@pytest.mark.parametrize("method", ["tfidf", "embed"])
def test_baselines_fit_one_logistic_regression_per_label_and_reload_the_same(multilabel_task, tmp_path, method):
    fitted = fit_baseline(multilabel_task, BaselineConfig(method=method), out_dir=tmp_path / method)
    metrics = fitted.meta["metrics"]
    for name in ("micro_f1", "macro_f1", "subset_accuracy"):
        low, high = metrics["intervals"][name]
        assert low <= metrics[name] <= high
    assert metrics["micro_f1"] > 0.8  # the words decide the labels
    loaded = load_predictor(tmp_path / method)
    texts = [e.text for e in multilabel_task.test]
    assert loaded.fingerprint == fitted.fingerprint
    assert loaded.predict_batch(texts).label_sets == fitted.predict_batch(texts).label_sets
    payload = read_artifact_json(tmp_path / method)
    assert payload["kind"] == "multilabel" and len(payload["thresholds"]) == 2
    both = fitted.predict_batch(["good awful bad"])
    assert both.row(0)["labels"] == list(both.label_sets[0]) and set(both.row(0)["probs"]) == set(LABELS)
    if method == "tfidf":  # a word of each: both labels
        assert both.label_sets == [LABELS]
    assert evaluate(loaded, multilabel_task)["micro_f1"] == metrics["micro_f1"]


def test_the_bias_report_slices_micro_f1_and_probes_the_positive_labels_own_score(multilabel_task):
    from tunelab.measure.bias import bias_report

    predictor = fit_baseline(multilabel_task, BaselineConfig(method="tfidf"))
    report = bias_report(predictor, multilabel_task)
    slices = report["slices"]
    assert slices["gap_interval"]["metric"] == "micro_f1" and slices["positive_label"] == "positive"
    assert all({"micro_f1", "macro_f1", "subset_accuracy", "n"} <= set(row) for row in slices["by_group"].values())
    gap = max(r["micro_f1"] for r in slices["by_group"].values()) - min(r["micro_f1"] for r in
                                                                        slices["by_group"].values())
    assert slices["largest_gap"]["micro_f1"] == pytest.approx(gap)
    assert report["counterfactual"]["measure"] == "P(positive)" and report["counterfactual"]["verdict"]


def test_every_rung_of_the_ladder_runs_on_a_multi_label_task(tiny_model, multilabel_task, tmp_path):
    from tunelab.ladder import LadderConfig, run

    rungs = ("tfidf", "embed", "probe", "zero", "one", "few", "lora", "full", "distill", "cascade")
    report = run(tiny_model, multilabel_task, LadderConfig(rungs=rungs, curve=(0, 1), epochs=1, student="pruned:1",
                                                           target_quality=0.0, search_budget_s=1.0), tmp_path / "run")
    assert set(report["rungs"]) == set(rungs) and report["rungs_left_out"] == {}
    assert report["choice"]["metric"] == "micro_f1"
    for rung in rungs:
        metrics = report["rungs"][rung]["metrics"]
        for name in ("micro_f1", "macro_f1", "subset_accuracy"):
            low, high = metrics["intervals"][name]
            assert low <= metrics[name] <= high, (rung, name)
        outputs = report["rungs"][rung]["test_outputs"]
        assert len(outputs) == len(multilabel_task.test) and all(set(o) <= set(LABELS) for o in outputs)
        payload = read_artifact_json(tmp_path / "run" / rung / "predictor")
        assert payload["kind"] == "multilabel" and len(payload["thresholds"]) == len(LABELS), rung
        assert load_predictor(tmp_path / "run" / rung / "predictor").fingerprint == payload["fingerprint"], rung
    assert report["rungs"]["tfidf"]["metrics"]["micro_f1"] > 0.8


def test_an_encoder_student_learns_one_sigmoid_per_label_and_exports_to_onnx(tiny_model, multilabel_task,
                                                                              tiny_encoder_dir, tmp_path):
    from tunelab.config import DistillConfig
    from tunelab.predictor import predict
    from tunelab.rungs.distill import distill
    from tunelab.rungs.prompting import PromptConfig, few_shot
    from tunelab.ship.export import export_onnx

    teacher = few_shot(tiny_model, multilabel_task, PromptConfig())
    config = DistillConfig(student=f"encoder:{tiny_encoder_dir}", epochs=2, max_length=8)
    student, report = distill(teacher, multilabel_task, config, out_dir=tmp_path / "student")
    texts = [e.text for e in multilabel_task.test]
    scores = predict(student, texts).probs
    assert scores.shape == (len(texts), 2) and not np.allclose(scores.sum(axis=1), 1.0)  # sigmoids, not a softmax
    assert report["quality_metric"] == "micro_f1" and len(student.thresholds) == 2
    facts = export_onnx(tmp_path / "student", tmp_path / "onnx", texts)
    assert facts["parity"]["passes"] and facts["parity"]["agreement"] == 1.0
    exported = load_predictor(tmp_path / "onnx")
    assert predict(exported, texts).label_sets == predict(student, texts).label_sets


def test_bulk_stores_label_sets_and_serve_answers_them(multilabel_task, tmp_path):
    from fastapi.testclient import TestClient

    from tunelab.offline.bulk import predict_file
    from tunelab.offline.config import ServeConfig
    from tunelab.offline.serve import create_app

    model = fit_baseline(multilabel_task, BaselineConfig(method="tfidf"), out_dir=tmp_path / "model")
    expected = {text: list(labels) for text, labels in zip(["good awful", "good", "nice vile"], model.predict_batch(
        ["good awful", "good", "nice vile"]).label_sets)}
    inputs = tmp_path / "in.txt"
    inputs.write_text("good awful\ngood\n")
    predict_file(tmp_path / "model", inputs, tmp_path / "store.sqlite")
    for config in (ServeConfig(store=tmp_path / "store.sqlite"),
                   ServeConfig(store=tmp_path / "store.sqlite", model=tmp_path / "model", on_miss="live")):
        client = TestClient(create_app(config))
        stored = client.get("/predict", params={"text": "good awful"}).json()
        assert stored["source"] == "store" and stored["labels"] == expected["good awful"] == list(LABELS)
        assert set(stored["probs"]) == set(LABELS)
        assert client.get("/predict", params={"text": "good"}).json()["labels"] == expected["good"]
    live = client.post("/predict", json={"texts": ["nice vile", "good"]}).json()["results"]
    assert live[0]["source"] == "live" and live[0]["labels"] == expected["nice vile"]
    assert live[1]["source"] == "store" and live[1]["labels"] == expected["good"]


def test_an_exported_store_keeps_each_rows_label_set(multilabel_task, tmp_path):
    import csv

    from tunelab.offline.bulk import predict_file
    from tunelab.offline.store import Store

    model = fit_baseline(multilabel_task, BaselineConfig(method="tfidf"), out_dir=tmp_path / "model")
    inputs = tmp_path / "in.txt"
    inputs.write_text("good awful\n")
    predict_file(tmp_path / "model", inputs, tmp_path / "store.sqlite")
    store = Store(tmp_path / "store.sqlite")
    try:
        store.export(tmp_path / "rows.jsonl")
        store.export(tmp_path / "rows.csv")
    finally:
        store.close()
    expected = list(model.predict_batch(["good awful"]).label_sets[0])
    assert json.loads((tmp_path / "rows.jsonl").read_text())["labels"] == expected
    store = Store(tmp_path / "store.sqlite")
    try:
        assert store.summary()[model.fingerprint]["labels"] == {label: 1 for label in expected}  # rows per label
    finally:
        store.close()
    row = next(csv.DictReader((tmp_path / "rows.csv").open()))
    assert json.loads(row["label"]) == expected and set(json.loads(row["probs"])) == set(LABELS)
