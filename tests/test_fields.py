"""Tasks of several input fields (`--text-fields subject,body`): reading, prompts, per-field rungs, bulk, serving."""

import json

import pytest
from conftest import NEGATIVE_WORDS, POSITIVE_WORDS
from fastapi.testclient import TestClient
from helpers import one_error_line, run_cli

from tunelab.config import BaselineConfig, template_problems
from tunelab.errors import InputError
from tunelab.ladder import LadderConfig, run
from tunelab.measure.bias import probe_texts
from tunelab.offline.bulk import normalise, predict_file
from tunelab.offline.config import ServeConfig
from tunelab.offline.serve import create_app
from tunelab.predictor import load_predictor, read_artifact_json
from tunelab.rungs.baseline import fit_baseline
from tunelab.scoring.length import fit_texts
from tunelab.scoring.verbalizer import PromptFormat
from tunelab.tasks import Example, load_task, make_task
from tunelab.tasks.fields import default_template, encoder_text, fill, join_fields, parse_field_names, split_fields

FIELDS = ("subject", "body")


def record(subject: str, body: str) -> str:
    return join_fields({"subject": subject, "body": body}, FIELDS)


@pytest.fixture
def two_field_task():
    """Each example's subject and body carry the same sentiment in different words."""
    def example(i, words, label):
        return Example(record(words[i % 6], words[(i + 1) % 6]), label)
    train = [example(i, POSITIVE_WORDS, "positive") for i in range(6)] + [
        example(i, NEGATIVE_WORDS, "negative") for i in range(6)]
    test = [Example(record(a, b), label) for a, b, label in [
        ("good", "superb", "positive"), ("kind", "fine", "positive"), ("fine", "kind", "positive"),
        ("bad", "vile", "negative"), ("cruel", "grim", "negative"), ("grim", "cruel", "negative")]]
    return make_task("tiny-fields", "classification", train, test, text_fields=FIELDS,
                     template=default_template(FIELDS), instruction="Classify each word .\n",
                     unlabeled=tuple(e.text for e in train))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_record_keeps_its_fields_in_order_and_one_line_each():
    text = record("Cheap  meds\tnow", "Buy\nnow, {subject} best")
    assert text == "subject: Cheap meds now\nbody: Buy now, {subject} best"
    assert split_fields(text, FIELDS) == {"subject": "Cheap meds now", "body": "Buy now, {subject} best"}
    assert encoder_text(text, FIELDS, "[SEP]") == "Cheap meds now [SEP] Buy now, {subject} best"
    # one pass: a value holding a placeholder is not filled again; a template may name some fields only
    assert fill("S: {subject}\nB: {body}", text) == "S: Cheap meds now\nB: Buy now, {subject} best"
    assert fill("B: {body}", text) == "B: Buy now, {subject} best"
    with pytest.raises(InputError, match="expected the fields subject, body"):
        split_fields("just one text", FIELDS)


@pytest.mark.parametrize("spec, message", [("subject", "use --text-field for one"), ("a,a", "twice"),
                                           ("subject,text", "template's own names"), ("a,b c", "unusable")])
def test_field_names_that_cannot_work_are_refused(spec, message):
    with pytest.raises(InputError, match=message):
        parse_field_names(spec)


def test_the_template_names_fields_and_shots_show_every_field():
    fmt = PromptFormat.from_template(default_template(FIELDS), "")
    assert fmt.fields == FIELDS and fmt.blank == "subject: \nbody: "
    assert fmt.query(record("hello", "there")) == "Subject: hello\nBody: there\nLabel:"
    assert fmt.shots_block([(record("a", "b"), "spam")]) == "Subject: a\nBody: b\nLabel: spam\n\n"
    assert template_problems("Subject: {subject}\nLabel: {label}", FIELDS) == []
    assert "which the task does not have" in template_problems("Title: {title}\nLabel: {label}", FIELDS)[0]


def test_the_length_policy_counts_and_cuts_per_field(word_tokenizer):
    short, long = "good bad", " ".join(POSITIVE_WORDS * 5)  # 2 and 40 tokens
    [(fitted, was_cut)] = fit_texts(word_tokenizer, [record(short, long)], 20, FIELDS)
    values = split_fields(fitted, FIELDS)
    assert was_cut and values["subject"] == short  # the short field stays whole, the long one takes what is left
    assert values["body"].startswith("good great") and values["body"].endswith("fine kind")  # head and tail kept
    assert len(word_tokenizer(values["body"]).input_ids) < 40
    assert fit_texts(word_tokenizer, [record(short, short)], 20, FIELDS) == [(record(short, short), False)]


def test_files_with_fields_read_as_records_and_bad_rows_name_file_line_and_field(tmp_path):
    rows = [{"subject": "good", "body": "nice day", "label": "positive", "group": "a"},
            {"subject": "bad", "body": "awful  day", "label": "negative", "group": "b"}]
    train = write_jsonl(tmp_path / "train.jsonl", rows * 4)
    test = write_jsonl(tmp_path / "test.jsonl", rows)
    task = load_task(None, train_path=train, test_path=test, text_fields="subject,body")
    assert task.text_fields == FIELDS and task.template == default_template(FIELDS)
    assert task.train[1].text == record("bad", "awful day") and task.train[1].extra == {"group": "b"}
    csv = tmp_path / "test.csv"
    csv.write_text("subject,body,label\ngood,nice day,positive\nbad,awful day,negative\n")
    assert load_task(None, train_path=train, test_path=csv, text_fields="subject,body").test[0].text == record(
        "good", "nice day")

    broken = write_jsonl(tmp_path / "broken.jsonl", rows + [{"subject": "x", "label": "positive"}])
    with pytest.raises(InputError, match=r'broken.jsonl:3: field "body" is missing'):
        load_task(None, train_path=broken, test_path=test, text_fields="subject,body")
    typed = write_jsonl(tmp_path / "typed.jsonl", rows + [{"subject": "x", "body": 7, "label": "positive"}])
    with pytest.raises(InputError, match=r'typed.jsonl:3: field "body"'):
        load_task(None, train_path=typed, test_path=test, text_fields="subject,body")


def test_the_cli_refuses_a_missing_field_in_one_line_and_writes_nothing(tmp_path):
    rows = [{"subject": "good", "body": "nice", "label": "positive"}, {"subject": "bad", "label": "negative"}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", rows[:1])
    result = run_cli("baseline", "--train", path, "--test", test, "--text-fields", "subject,body",
                     "--out", tmp_path / "out")
    line = one_error_line(result)
    assert "rows.jsonl:2" in line and '"body"' in line and not (tmp_path / "out").exists()
    result = run_cli("baseline", "--task", "vader", "--text-fields", "a,b", "--out", tmp_path / "out")
    assert "--text-fields" in one_error_line(result)


def test_tfidf_fits_a_vectoriser_per_field_and_reloads_the_same(two_field_task, tmp_path):
    predictor = fit_baseline(two_field_task, BaselineConfig(method="tfidf"), out_dir=tmp_path / "tfidf")
    names = [name for name, _ in predictor.pipeline.named_steps["features"].transformer_list]
    assert {name.split(".")[0] for name in names} == set(FIELDS)
    loaded = load_predictor(tmp_path / "tfidf")
    texts = [e.text for e in two_field_task.test]
    assert loaded.fingerprint == predictor.fingerprint and loaded.text_fields == FIELDS
    assert loaded.predict_batch(texts).labels == predictor.predict_batch(texts).labels
    assert read_artifact_json(tmp_path / "tfidf")["text_fields"] == list(FIELDS)
    # the same word in the subject and in the body: different features
    features = predictor.pipeline.named_steps["features"].transform([record("x", "good"), record("good", "x")])
    assert features.shape[0] == 2 and (features[0] != features[1]).nnz > 0


def test_a_field_empty_in_every_training_row_gets_no_vectoriser(two_field_task):
    rows = [Example(record(split_fields(e.text, FIELDS)["subject"], ""), e.label) for e in two_field_task.train]
    task = make_task("no-body", "classification", rows, list(two_field_task.test), text_fields=FIELDS)
    predictor = fit_baseline(task, BaselineConfig(method="tfidf"))
    names = [name for name, _ in predictor.pipeline.named_steps["features"].transformer_list]
    assert names and all(name.startswith("subject.") for name in names)
    assert len(predictor.predict_batch([e.text for e in task.test]).labels) == len(task.test)


def test_embed_reads_the_values_joined_by_the_encoders_separator(two_field_task, tmp_path):
    fitted = fit_baseline(two_field_task, BaselineConfig(method="embed"), out_dir=tmp_path / "embed")
    loaded = load_predictor(tmp_path / "embed")
    assert loaded.fingerprint == fitted.fingerprint
    assert loaded.embed.encoder_texts([record("good", "nice day")]) == ["good [SEP] nice day"]
    texts = [e.text for e in two_field_task.test]
    assert loaded.predict_batch(texts).labels == fitted.predict_batch(texts).labels


def test_bias_probes_fill_every_field():
    probes = {"templates": ["{name} was here ."], "groups": {"a": ["Ann"], "b": ["Bob"]}}
    assert probe_texts(probes, FIELDS)[0] == record("Ann was here .", "Ann was here .")


def test_every_rung_of_the_ladder_runs_on_a_two_field_task(tiny_model, two_field_task, tmp_path):
    rungs = ("tfidf", "probe", "zero", "one", "few", "lora", "full", "distill", "cascade")
    report = run(tiny_model, two_field_task, LadderConfig(rungs=rungs, curve=(0, 1), epochs=1, student="pruned:1",
                                                          target_quality=0.0, search_budget_s=1.0), tmp_path / "run")
    assert set(report["rungs"]) == set(rungs) and report["rungs_left_out"] == {}
    for rung in rungs:
        metrics = report["rungs"][rung]["metrics"]
        low, high = metrics["intervals"]["accuracy"]
        assert low <= metrics["accuracy"] <= high and metrics["n_test"] == len(two_field_task.test)
    for saved in (tmp_path / "run").rglob("tunelab.json"):
        assert read_artifact_json(saved.parent).get("text_fields") == list(FIELDS), saved
    assert read_artifact_json(tmp_path / "run" / "zero" / "predictor")["format"]["query_format"] == (
        "Subject: {subject}\nBody: {body}\nLabel:")


def test_bulk_keys_rows_by_their_fields_and_serve_answers_fields_from_store_and_live(two_field_task, tmp_path):
    fit_baseline(two_field_task, BaselineConfig(method="tfidf"), out_dir=tmp_path / "model")
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"subject": "good", "body": "nice  day"},
                                                  {"subject": "good", "body": "nice day"},  # the same normalised
                                                  {"subject": "bad", "body": "vile"}])
    counts = predict_file(tmp_path / "model", inputs, tmp_path / "store.sqlite")
    assert counts["distinct"] == 2
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"subject": "good"}])
    with pytest.raises(InputError, match=r'missing.jsonl:1: field "body" is missing'):
        predict_file(tmp_path / "model", missing, tmp_path / "other.sqlite")
    assert not (tmp_path / "other.sqlite").exists()

    for config in (ServeConfig(store=tmp_path / "store.sqlite"),
                   ServeConfig(store=tmp_path / "store.sqlite", model=tmp_path / "model", on_miss="live")):
        client = TestClient(create_app(config))
        answer = client.post("/predict", json={"fields": {"body": "vile", "subject": "bad"}}).json()["results"][0]
        assert answer["source"] == "store" and answer["input"] == normalise(record("bad", "vile"), fields=FIELDS)
        batch = client.post("/predict", json={"fields": [{"subject": "good", "body": "nice day"},
                                                         {"subject": "kind", "body": "fine"}]}).json()["results"]
        assert batch[0]["source"] == "store"
        assert batch[1].get("source") == ("live" if config.on_miss == "live" else None)
        assert batch[1].get("found", True) is (config.on_miss == "live")
        lacking = client.post("/predict", json={"fields": [{"subject": "x"}]})
        assert lacking.status_code == 422 and "lacks body" in lacking.text
        assert client.post("/predict", json={"texts": ["good"]}).status_code == 422
        assert client.get("/predict", params={"text": "good"}).status_code == 422
