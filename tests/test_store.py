import csv
import json
import sqlite3

import pytest

from tunelab.errors import InputError
from tunelab.offline.store import MIGRATIONS, Store


def _output(label, p):
    return {"label": label, "probs": {"positive": p, "negative": 1 - p}}


def test_rows_answer_only_for_the_fingerprint_that_wrote_them(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.put_batch("model-a", [("k1", "good", _output("positive", 0.9)), ("k2", "bad", _output("negative", 0.2))])
    assert store.get("model-a", "k1").label == "positive"
    assert store.get("model-a", "k1").probs == {"positive": 0.9, "negative": pytest.approx(0.1)}
    assert store.get("model-b", "k1") is None
    assert store.stored_keys("model-a", ["k1", "k2", "k3"]) == {"k1", "k2"}
    assert store.stored_keys("model-b", ["k1"]) == set()
    store.put_batch("model-b", [("k1", "good", {"value": 2.5})])
    assert store.get("model-b", "k1").value == 2.5 and store.get("model-a", "k1").value is None
    assert store.fingerprints() == ["model-a", "model-b"]


def test_schema_is_migrated_in_wal_mode(tmp_path):
    Store(tmp_path / "s.sqlite").close()
    db = sqlite3.connect(tmp_path / "s.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    Store(tmp_path / "s.sqlite").close()  # reopening runs nothing twice
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_a_failed_batch_leaves_no_row(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    unbindable = {"label": ["not", "a", "string"], "probs": {}}  # fails inside the transaction, after row 1
    with pytest.raises(sqlite3.Error):
        store.put_batch("m", [("k1", "good", _output("positive", 0.9)), ("k2", "bad", unbindable)])
    assert store.stored_keys("m", ["k1", "k2"]) == set()


def test_summary_and_export(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.register("m", {"rung": "prompt"})
    store.put_batch("m", [("k1", "good", _output("positive", 0.9)), ("k2", "bad", _output("negative", 0.2)),
                          ("k3", "fine", _output("positive", 0.7))])
    summary = store.summary()["m"]
    assert summary["rows"] == 3 and summary["labels"] == {"positive": 2, "negative": 1}
    assert summary["predictor"]["rung"] == "prompt"
    assert store.export(tmp_path / "out.jsonl") == 3
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {r["input"] for r in rows} == {"good", "bad", "fine"} and all(r["fingerprint"] == "m" for r in rows)
    assert store.export(tmp_path / "out.csv") == 3
    assert (tmp_path / "out.csv").read_text().splitlines()[0].startswith("input,label,probs")


def test_unusable_store_paths(tmp_path):
    with pytest.raises(InputError, match="no such prediction store"):
        Store(tmp_path / "missing.sqlite", read_only=True)
    (tmp_path / "junk.sqlite").write_text("not a database at all, " * 100)
    with pytest.raises(InputError, match="not a tunelab prediction store"):
        Store(tmp_path / "junk.sqlite")


def test_one_fingerprint_never_gets_two_descriptions(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.register("m", {"rung": "prompt", "kind": "classification", "labels": ["negative", "positive"]})
    store.register("m", {"rung": "prompt", "kind": "classification", "labels": ["negative", "positive"],
                         "path": "elsewhere"})  # where it was loaded from may change
    with pytest.raises(InputError, match="described with other labels"):
        store.register("m", {"rung": "prompt", "kind": "classification", "labels": ["ab"]})
    assert store.description("m")["labels"] == ["negative", "positive"]


@pytest.mark.parametrize("name", ["a#b.sqlite", "q?mode=rw.sqlite", "p%20c.sqlite"])
def test_store_paths_of_any_spelling_open_the_file_named(tmp_path, name):
    store = Store(tmp_path / name)
    store.put_batch("m", [("k1", "good", _output("positive", 0.9))])
    store.close()
    opened = Store(tmp_path / name, read_only=True)
    assert opened.summary()["m"]["rows"] == 1
    opened.close()
    assert all(p.name.startswith(name) for p in tmp_path.iterdir())  # its WAL files; no stray file of a misread URI


def test_csv_export_mixes_kinds_neutralises_formulas_and_leaves_no_partial_file(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.put_batch("c", [("k1", "=HYPERLINK(1)", _output("positive", 0.9))])
    store.put_batch("r", [("k2", "@sum", {"value": -1.5})])
    assert store.export(tmp_path / "out.csv") == 2
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert {r["input"] for r in rows} == {"'=HYPERLINK(1)", "'@sum"} and {r["value"] for r in rows} == {"", "-1.5"}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
