import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.errors import InputError
from tunelab.tasks import Example, load_task, make_task, read_examples
from tunelab.tasks.builtin import subjectivity_lexicon, vader_lexicon


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_jsonl_and_csv_alike(tmp_path):
    jsonl = _write(tmp_path / "a.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", "label": 0}\n')
    csv = _write(tmp_path / "a.csv", "text,label\ngood,pos\nbad,0\n")
    assert [(e.text, e.label) for e in read_examples(jsonl)] == [("good", "pos"), ("bad", "0")]
    assert read_examples(csv) == read_examples(jsonl)


def test_custom_fields_and_regression_values(tmp_path):
    path = _write(tmp_path / "v.jsonl", '{"word": "good", "score": 2.5}\n{"word": "bad", "score": "-1"}\n')
    examples = read_examples(path, text_field="word", label_field="score", kind="regression")
    assert [e.label for e in examples] == [2.5, -1.0]


@pytest.mark.parametrize("content, expected", [
    ('{"text": "a", "label": "x"}\n{"text": "b"}\n', r'b\.jsonl:2: field "label" is missing \(use --label-field'),
    ('{"text": "a", "label": "x"}\n\n', r"b\.jsonl:2: line is empty"),
    ('{"text": "a", "label": "x"}\n{oops\n', r"b\.jsonl:2: is not valid JSON"),
    ('["a", "x"]\n', r"b\.jsonl:1: is not a JSON object"),
    ('{"text": "", "label": "x"}\n', r'b\.jsonl:1: field "text" must be a non-empty string'),
    ('{"text": "a", "label": "x"}\n{"text": " \\t\\n ", "label": "x"}\n',  # only whitespace
     r'b\.jsonl:2: field "text" must be a non-empty'),
    ("", r"b\.jsonl: holds no examples"),
])
def test_bad_jsonl_names_file_line_and_field(tmp_path, content, expected):
    with pytest.raises(InputError, match=expected):
        read_examples(_write(tmp_path / "b.jsonl", content))


def test_bad_csv_names_line_and_column(tmp_path):
    with pytest.raises(InputError, match=r'c\.csv:1: field "label" is missing from the header'):
        read_examples(_write(tmp_path / "c.csv", "text,tag\ngood,pos\n"))
    with pytest.raises(InputError, match=r"c\.csv:3: field \"label\" is missing"):
        read_examples(_write(tmp_path / "c.csv", "text,label\ngood,pos\nbad\n"))


def test_non_numeric_regression_label_is_an_error(tmp_path):
    path = _write(tmp_path / "r.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "high"}\n')
    with pytest.raises(InputError, match=r"r\.jsonl:2: field \"label\" must be a finite number"):
        read_examples(path, kind="regression")


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"text": "a", "label": "x"}\n{"text": "\xff", "label": "y"}\n')
    with pytest.raises(InputError, match=r"u\.jsonl:2: is not valid UTF-8"):
        read_examples(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.jsonl: file not found"):
        read_examples(tmp_path / "nope.jsonl")


def test_single_label_task_is_refused():
    with pytest.raises(InputError, match="only one label"):
        make_task("t", "classification", [Example("a", "x"), Example("b", "x")], [Example("c", "x")])


def test_test_label_missing_from_training_names_the_test_line(tmp_path):
    train = _write(tmp_path / "train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    test = _write(tmp_path / "test.jsonl", '{"text": "c", "label": "x"}\n{"text": "d", "label": "z"}\n')
    with pytest.raises(InputError, match=r"test\.jsonl:2: field \"label\" label 'z' does not occur"):
        load_task(train_path=train, test_path=test)


def test_split_without_test_file_is_stratified_and_reproducible(tmp_path):
    rows = [{"text": f"w{i}", "label": "ab"[i % 2]} for i in range(40)]
    path = _write(tmp_path / "all.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    first, second = load_task(train_path=path), load_task(train_path=path)
    assert first.test == second.test and len(first.test) == 10
    assert Counter(e.label for e in first.test) == {"a": 5, "b": 5}
    assert not set(first.test) & set(first.train)
    assert "stratified" in first.split_note


def test_vader_task_is_the_documented_sample():
    lexicon = vader_lexicon()
    task = load_task("vader")
    assert (len(task.train), len(task.test), task.labels) == (600, 400, ("negative", "positive"))
    for example in task.train + task.test:
        assert example.text.isalpha() and abs(lexicon[example.text]) >= 1.0
        assert example.label == ("positive" if lexicon[example.text] > 0 else "negative")
    texts = {e.text for e in task.train + task.test}
    assert len(texts) == 1000 and not texts & set(task.unlabeled)
    assert len(task.unlabeled) == len(lexicon) - 1000


def test_vader_valence_shares_the_words_with_their_means():
    classification, regression = load_task("vader"), load_task("vader-valence")
    lexicon = vader_lexicon()
    assert [e.text for e in regression.test] == [e.text for e in classification.test]
    assert all(e.label == lexicon[e.text] for e in regression.train)
    assert regression.kind == "regression" and regression.value_range == (-4.0, 4.0)


def test_subjectivity_task_labels_clear_cases_and_keeps_its_transfer_words_apart():
    lexicon = subjectivity_lexicon()
    task = load_task("subjectivity")
    assert (len(task.train), len(task.test), task.labels) == (600, 400, ("objective", "subjective"))
    for example in task.train + task.test:
        assert abs(lexicon[example.text] - 0.5) >= 0.1
        assert example.label == ("subjective" if lexicon[example.text] > 0.5 else "objective")
    texts = {e.text for e in task.train + task.test}
    assert len(texts) == 1000 and not texts & set(task.unlabeled)
    assert len(task.unlabeled) > 4000 and all(w.isalpha() and w.islower() for w in task.unlabeled)
    assert [e.text for e in load_task("subjectivity").test] == [e.text for e in task.test]  # a fixed sample


def test_fruit_task_has_the_classic_labels():
    task = load_task("fruit")
    assert {"drupe", "pome", "berry", "hesperidium", "pepo"} == set(task.labels)
    assert Example("plum", "drupe") in task.train + task.test
    assert task.template == "{text}: {label}"


def test_unknown_task_name():
    with pytest.raises(InputError, match="unknown task 'sentiment'"):
        load_task("sentiment")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".csv"]))
def test_loader_never_fails_with_anything_but_input_error(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        examples = read_examples(path)
    except InputError as err:
        assert str(err).startswith(str(path))
    else:
        assert examples and all(e.text.strip() and isinstance(e.label, str) for e in examples)


@pytest.mark.parametrize("name", ["sotu-party", "sotu-year"])
def test_sotu_tasks_are_passages_from_disjoint_addresses(name):
    task = load_task(name)
    assert (len(task.train), len(task.test)) == (600, 400) and len(task.unlabeled) > 500
    train_addresses = {(e.extra["president"], e.extra["year"]) for e in task.train}
    test_addresses = {(e.extra["president"], e.extra["year"]) for e in task.test}
    assert not train_addresses & test_addresses
    words = sorted(len(e.text.split()) for e in task.train)
    assert words[0] >= 100 and words[len(words) // 2] > 150  # passages of a few hundred tokens, not words
    if task.is_classification:
        assert task.labels == ("Democratic", "Republican")
    else:
        assert task.value_range == (1853.0, 2021.0) and all(1853 <= e.label <= 2021 for e in task.test)
    assert task.slice_field == "era" and all("era" in e.extra for e in task.test)


def test_spam_task_is_two_fields_of_held_apart_mails():
    task = load_task("spam")
    assert (len(task.train), len(task.test), len(task.unlabeled)) == (600, 400, 800)
    assert task.text_fields == ("subject", "body") and task.labels == ("legitimate", "spam")
    texts = [e.text for e in task.train + task.test] + list(task.unlabeled)
    assert len(set(texts)) == len(texts) and all(text.startswith("subject: ") for text in texts)
    assert "{subject}" in task.template and "{body}" in task.template
    assert task.slice_field == "group" and {e.extra["group"] for e in task.test} >= {"hard-ham-1", "spam-2"}


def test_language_task_has_fifty_labels_and_one_answer_per_name():
    task = load_task("language")
    assert len(task.labels) == 50 and (len(task.train), len(task.test)) == (600, 400)
    assert {sum(e.label == label for e in task.test) for label in task.labels} == {8}
    texts = [e.text for e in task.train + task.test] + list(task.unlabeled)
    assert len({text.casefold() for text in texts}) == len(texts)  # no name in two languages
    assert "Norwegian Bokmål" in task.labels and "{text}" in task.template
