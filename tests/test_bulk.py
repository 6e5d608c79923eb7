import dataclasses
import json
import signal
import subprocess
import sys
import textwrap

import pytest
from helpers import one_error_line, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.errors import ConfigError, InputError
from tunelab.offline.bulk import BulkConfig, normalise, predict_all, read_inputs, text_key
from tunelab.offline.store import Store
from tunelab.predictor import length_batches, load_predictor, save_predictor
from tunelab.rungs.prompting import PromptConfig, few_shot

WORDS = ["good", "great", "nice", "happy", "lovely", "superb", "fine", "kind", "bad", "awful", "poor", "sad",
         "nasty", "grim", "vile", "cruel"]


class CountingPredictor:
    """Wraps a predictor and records every text it is asked to predict."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict_batch(self, texts):
        self.seen += texts
        return self.inner.predict_batch(texts)


@pytest.fixture
def saved_predictor(tiny_model, tiny_task, tmp_path):
    save_predictor(few_shot(tiny_model, tiny_task, PromptConfig(shots=2)), tmp_path / "predictor")
    return tmp_path / "predictor"


def assert_same_stores(a, b):
    """Same rows, labels and fingerprints; probabilities within 1e-6 (a text's batch-mates and padding move the
    last float bits, never more: see test_scoring_is_independent_of_batch_and_padding)."""
    assert [(r[0], r[1], r[3]) for r in a] == [(r[0], r[1], r[3]) for r in b]
    for row_a, row_b in zip(a, b):
        probs_a, probs_b = json.loads(row_a[2]), json.loads(row_b[2])
        assert probs_a.keys() == probs_b.keys()
        assert all(abs(probs_a[k] - probs_b[k]) < 1e-6 for k in probs_a)


def _rows(store_path):
    store = Store(store_path, read_only=True)
    rows = sorted((r.input, r.label, json.dumps(r.probs, sort_keys=True), r.fingerprint) for r in store.rows())
    store.close()
    return rows


def test_normalisation_is_nfc_whitespace_and_optional_casefold():
    assert normalise("  cafe\u0301 \t au\n lait ") == "caf\u00e9 au lait"
    assert normalise("Good") == "Good" and normalise("Good", casefold=True) == "good"
    assert text_key(normalise("caf\u00e9")) == text_key(normalise("cafe\u0301"))


def test_bulk_dedupes_skips_stored_and_counts(saved_predictor, tmp_path):
    predictor = CountingPredictor(load_predictor(saved_predictor))
    store = Store(tmp_path / "s.sqlite")
    texts = ["good", "good ", "bad", "  bad", "nice", "", "nice"]
    counts = predict_all(predictor, texts, store, BulkConfig(batch_size=2))
    assert (counts["read"], counts["distinct"], counts["already_stored"], counts["predicted"]) == (7, 3, 0, 3)
    assert sorted(predictor.seen) == ["bad", "good", "nice"]
    again = predict_all(predictor, texts + ["kind"], store, BulkConfig(batch_size=2))
    assert (again["already_stored"], again["predicted"]) == (3, 1) and predictor.seen[-1] == "kind"
    stored = store.get(predictor.fingerprint, text_key("good"))
    assert stored.probs == pytest.approx(predictor.inner.predict_batch(["good"]).row(0)["probs"])
    with pytest.raises(ConfigError, match="casefold"):
        predict_all(predictor, texts, store, BulkConfig(casefold=True))


KILLED_BULK = textwrap.dedent("""
    import os, signal, sys
    from tunelab.offline.bulk import BulkConfig, predict_all
    from tunelab.predictor import load_predictor
    from tunelab.offline.store import Store
    predictor_dir, store_path, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    texts = sys.argv[4:]
    done = []
    def maybe_die(n):
        done.append(n)
        if len(done) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    predict_all(load_predictor(predictor_dir), texts, Store(store_path), BulkConfig(batch_size=3),
                on_progress=maybe_die)
""")


def test_killed_bulk_run_resumes_to_the_same_store(saved_predictor, tmp_path):
    script = tmp_path / "bulk.py"
    script.write_text(KILLED_BULK)
    texts = WORDS + WORDS[:5]  # repeats
    killed = subprocess.run([sys.executable, script, saved_predictor, tmp_path / "resumed.sqlite", "2", *texts],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = _rows(tmp_path / "resumed.sqlite")
    assert len(partial) == 6  # two committed batches of three, nothing half-written

    predictor = CountingPredictor(load_predictor(saved_predictor))
    counts = predict_all(predictor, texts, Store(tmp_path / "resumed.sqlite"), BulkConfig(batch_size=3))
    assert counts["already_stored"] == 6 and counts["predicted"] == len(WORDS) - 6
    assert not set(predictor.seen) & {row[0] for row in partial}, "nothing is predicted twice"
    predict_all(load_predictor(saved_predictor), texts, Store(tmp_path / "straight.sqlite"), BulkConfig(batch_size=5))
    assert_same_stores(_rows(tmp_path / "resumed.sqlite"), _rows(tmp_path / "straight.sqlite"))


def test_ray_engine_writes_the_same_store_as_local(saved_predictor, tmp_path):
    texts = WORDS + ["good"]
    local = predict_all(load_predictor(saved_predictor), texts, Store(tmp_path / "local.sqlite"),
                        BulkConfig(batch_size=4))
    with_ray = predict_all(load_predictor(saved_predictor), texts, Store(tmp_path / "ray.sqlite"),
                           BulkConfig(batch_size=4, engine="ray"), predictor_dir=saved_predictor)
    assert local["predicted"] == with_ray["predicted"] == len(WORDS)
    local_rows, ray_rows = _rows(tmp_path / "local.sqlite"), _rows(tmp_path / "ray.sqlite")
    assert [r[:2] for r in local_rows] == [r[:2] for r in ray_rows]
    for a, b in zip(local_rows, ray_rows):
        assert json.loads(a[2]) == pytest.approx(json.loads(b[2]), abs=1e-6)


def test_read_inputs_formats_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("good\n\nbad\n")
    (tmp_path / "a.jsonl").write_text('{"text": "good"}\n{"word": "bad"}\n')
    (tmp_path / "a.csv").write_text("text,id\ngood,1\nbad,2\n")
    assert read_inputs(tmp_path / "a.txt") == ["good", "bad"]
    assert read_inputs(tmp_path / "a.csv") == ["good", "bad"]
    with pytest.raises(InputError, match=r'a\.jsonl:2: field "text" is missing'):
        read_inputs(tmp_path / "a.jsonl")
    with pytest.raises(InputError, match=r'a\.csv:1: field "word" is missing from the header'):
        read_inputs(tmp_path / "a.csv", text_field="word")


def test_predict_and_store_commands(saved_predictor, tmp_path):
    inputs, store = tmp_path / "in.txt", tmp_path / "s.sqlite"
    inputs.write_text("good\nbad\n good\n")
    first = run_cli("predict", "--model", saved_predictor, "--input", inputs, "--store", store, "--json")
    assert first.exit_code == 0, first.output
    counts = json.loads(first.stdout)
    assert (counts["read"], counts["distinct"], counts["predicted"]) == (3, 2, 2)
    again = json.loads(run_cli("predict", "--model", saved_predictor, "--input", inputs, "--store", store,
                               "--json").stdout)
    assert (again["already_stored"], again["predicted"]) == (2, 0)
    summary = json.loads(run_cli("store", "info", store, "--json").stdout)
    assert [entry["rows"] for entry in summary.values()] == [2]
    assert run_cli("store", "export", store, tmp_path / "out.jsonl").exit_code == 0
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2
    line = one_error_line(run_cli("predict", "--model", saved_predictor, "--input", tmp_path / "nope.txt",
                                  "--store", store))
    assert "nope.txt: file not found" in line
    assert "no such prediction store" in one_error_line(run_cli("store", "info", tmp_path / "missing.sqlite"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".txt", ".jsonl", ".csv"]))
def test_input_reader_never_fails_with_anything_but_input_error(tmp_path, data, suffix):
    path = tmp_path / f"inputs{suffix}"
    path.write_bytes(data)
    try:
        texts = read_inputs(path)
    except InputError as err:
        assert "\n" not in str(err) and str(path) in str(err)
    else:
        assert all(isinstance(text, str) for text in texts)


def test_a_csv_field_longer_than_the_csv_module_default_is_read(tmp_path):
    long_text = "word " * 40_000  # 200,000 characters, past csv's 131,072 default
    (tmp_path / "long.csv").write_text(f'text\n"{long_text}"\nshort\n')
    assert [len(t) for t in read_inputs(tmp_path / "long.csv")] == [len(long_text), 5]


def test_bulk_batches_long_texts_by_size_and_counts_the_cut_ones(saved_predictor, tmp_path):
    predictor = CountingPredictor(load_predictor(saved_predictor))
    predictor.inner.config = dataclasses.replace(predictor.inner.config, max_length=40)
    long_texts = [("good bad " * 3_000) + str(i) for i in range(4)]  # 27,000 characters each
    counts = predict_all(predictor, WORDS + long_texts, Store(tmp_path / "s.sqlite"), BulkConfig(batch_size=64))
    assert counts["predicted"] == len(WORDS) + 4 and counts["n_truncated"] == 4 and counts["max_length"] == 40
    assert counts["chars_per_s"] > counts["examples_per_s"] and counts["tokens_per_s"] > counts["examples_per_s"]
    tokenizer = predictor.inner.model.tokenizer
    assert predictor.inner.count_tokens(["good bad"]) == len(tokenizer("good bad", add_special_tokens=False).input_ids)
    assert 4 <= predictor.inner.count_tokens(long_texts) <= 4 * 40  # as read: each cut to fit its 40-token prompt
    assert set(predictor.seen[: len(WORDS)]) == set(WORDS)  # shortest first
    assert [len(batch) for batch in length_batches(WORDS + long_texts, 64)] == [len(WORDS), 1, 1, 1, 1]
