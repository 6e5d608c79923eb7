"""The prediction store: one SQLite row per (model fingerprint, normalised input), written batch by batch.

WAL mode and one transaction per batch: a kill at any instant loses at most the batch in flight and never leaves
a partial row. A row answers only for the model fingerprint that wrote it.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tunelab.errors import InputError


def _migration_1(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE predictions (
            fingerprint TEXT NOT NULL,     -- the predictor that produced the row
            key TEXT NOT NULL,             -- sha256 of the normalised input
            input TEXT NOT NULL,           -- the normalised input
            label TEXT,                    -- classification: the top label
            value REAL,                    -- regression: the predicted value
            probs TEXT,                    -- classification: JSON {label: probability}; several labels an
                                           -- example: JSON {"labels": [given], "probs": {label: score}}
            created_at REAL NOT NULL,
            PRIMARY KEY (fingerprint, key)
        ) WITHOUT ROWID""")
    db.execute("CREATE TABLE predictors (fingerprint TEXT PRIMARY KEY, description TEXT NOT NULL)")


MIGRATIONS = [_migration_1]  # numbered by position; PRAGMA user_version records how many have run
DECISIVE_FIELDS = ("rung", "kind", "labels")  # what a store trusts a fingerprint to mean


def connect(path: Path, *, read_only: bool, migrations: list, table: str, what: str) -> sqlite3.Connection:
    """Open one of tunelab's SQLite files: read-only, or in WAL mode with its numbered migrations applied (PRAGMA
    user_version records how many have run). Shared by the prediction store and the term store.

    Raises:
        InputError: a missing file (read-only), or a file that is not this kind of store.
    """
    if read_only and not path.is_file():
        raise InputError(f"no such {what}", path=path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # as_uri() percent-escapes '#', '?' and '%', which SQLite would otherwise read as URI syntax
        uri = path.resolve().as_uri() + "?mode=ro" if read_only else str(path)
        db = sqlite3.connect(uri, uri=read_only, check_same_thread=False, isolation_level=None)
        if not read_only:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at each checkpoint, never torn
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, migration in enumerate(migrations[version:], start=version + 1):
                db.execute("BEGIN IMMEDIATE")
                migration(db)
                db.execute(f"PRAGMA user_version = {number}")
                db.execute("COMMIT")
        db.execute(f"SELECT count(*) FROM {table} LIMIT 1")
    except sqlite3.DatabaseError as err:
        raise InputError(f"not a tunelab {what} ({err})", path=path) from None
    return db


class FreshView:
    """A value built from a store (a term automaton), rebuilt when another connection has committed to the file
    since it was built; checked at most once every `every_s` seconds, so serving pays nothing in between."""

    def __init__(self, store, build, every_s: float = 1.0):
        self.store, self.build, self.every_s, self.lock = store, build, every_s, threading.Lock()
        self.version, self.checked = store.data_version(), time.monotonic()
        self.value = build()

    def current(self):
        if time.monotonic() - self.checked > self.every_s:
            with self.lock:
                self.checked = time.monotonic()
                version = self.store.data_version()
                if version != self.version:
                    self.value, self.version = self.build(), version
        return self.value


@dataclass(frozen=True)
class StoredPrediction:
    input: str
    label: str | None
    value: float | None
    probs: dict | None
    fingerprint: str
    labels: list[str] | None = None  # several labels an example: those given

    def as_dict(self) -> dict:
        output = {"label": self.label, "probs": self.probs} if self.label is not None else {"value": self.value}
        if self.labels is not None:
            output = {"labels": self.labels, "probs": self.probs}
        return {"input": self.input, **output, "fingerprint": self.fingerprint}


class Store:
    """A SQLite prediction store. Safe to read from several processes while one writes."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path)
        self.db = connect(self.path, read_only=read_only, migrations=MIGRATIONS, table="predictions",
                          what="prediction store")

    def close(self) -> None:
        self.db.close()

    def data_version(self) -> int:
        """Changes whenever another connection commits to the file (SQLite's PRAGMA data_version)."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    def register(self, fingerprint: str, description: dict) -> None:
        """Record what predictor `fingerprint` is; a second, different description of it is refused.

        Raises:
            InputError: the store already describes this fingerprint with another kind, label space or rung.
        """
        recorded = self.description(fingerprint)
        changed = [key for key in DECISIVE_FIELDS if key in recorded and recorded.get(key) != description.get(key)]
        if changed:
            raise InputError(f"already holds predictions of model {fingerprint} described with other "
                             f"{', '.join(changed)} ({', '.join(f'{k}={recorded[k]!r}' for k in changed)}); "
                             "one fingerprint never gets two descriptions", path=self.path)
        self.db.execute("INSERT OR REPLACE INTO predictors VALUES (?, ?)", (fingerprint, json.dumps(description)))

    def description(self, fingerprint: str) -> dict:
        """What `register` recorded for this predictor (rung, labels, normalisation), or {}."""
        row = self.db.execute("SELECT description FROM predictors WHERE fingerprint = ?", (fingerprint,)).fetchone()
        return json.loads(row[0]) if row else {}

    def stored_keys(self, fingerprint: str, keys: Iterable[str]) -> set[str]:
        """The subset of `keys` already stored for this fingerprint."""
        keys, found = list(keys), set()
        for start in range(0, len(keys), 500):  # SQLite's limit on bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT key FROM predictions WHERE fingerprint = ? AND key IN ({marks})",
                                   [fingerprint, *chunk])
            found.update(row[0] for row in rows)
        return found

    def put_batch(self, fingerprint: str, rows: list[tuple[str, str, dict]]) -> None:
        """Write (key, input, output) rows in one transaction: all of them or none."""
        now = time.time()
        records = [(fingerprint, key, text, output.get("label"), output.get("value"), _probs_json(output), now)
                   for key, text, output in rows]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)", records)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def get(self, fingerprint: str, key: str) -> StoredPrediction | None:
        row = self.db.execute("SELECT input, label, value, probs FROM predictions WHERE fingerprint = ? AND key = ?",
                              (fingerprint, key)).fetchone()
        return _stored(row, fingerprint) if row else None

    def get_many(self, fingerprint: str, keys: list[str]) -> dict[str, StoredPrediction]:
        found = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT key, input, label, value, probs FROM predictions "
                                   f"WHERE fingerprint = ? AND key IN ({marks})", [fingerprint, *chunk])
            found.update((row[0], _stored(row[1:], fingerprint)) for row in rows)
        return found

    def fingerprints(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT DISTINCT fingerprint FROM predictions ORDER BY 1")]

    def rows(self, fingerprint: str | None = None):
        query = "SELECT input, label, value, probs, fingerprint FROM predictions"
        args = ()
        if fingerprint:
            query, args = query + " WHERE fingerprint = ?", (fingerprint,)
        for row in self.db.execute(query + " ORDER BY fingerprint, input", args):
            yield _stored(row[:4], row[4])

    def summary(self) -> dict:
        """Counts per model fingerprint and, within each, per label (the top label; for label sets, the rows given
        each label, counted by SQLite's JSON functions over the probs column)."""
        result = {}
        for fingerprint, label, count in self.db.execute(
                "SELECT fingerprint, label, count(*) FROM predictions GROUP BY fingerprint, label ORDER BY 1, 2"):
            entry = result.setdefault(fingerprint, {"rows": 0, "labels": {}})
            entry["rows"] += count
            if label is not None:
                entry["labels"][label] = count
        for fingerprint, label, count in self.db.execute(
                "SELECT fingerprint, given.value, count(*) FROM predictions, json_each(predictions.probs, '$.labels') "
                "AS given WHERE predictions.label IS NULL AND json_type(predictions.probs, '$.labels') = 'array' "
                "GROUP BY 1, 2 ORDER BY 1, 2"):
            result[fingerprint]["labels"][label] = count
        for fingerprint, description in self.db.execute("SELECT fingerprint, description FROM predictors"):
            if fingerprint in result:
                result[fingerprint]["predictor"] = json.loads(description)
        return result

    def export(self, destination: Path, fingerprint: str | None = None) -> int:
        """Write the rows as JSONL (or CSV when the name ends in .csv); returns the row count.

        Written to a temporary file first, so a failure or a kill never leaves a partial export. CSV cells that a
        spreadsheet would run as a formula (starting with = + - @) are prefixed with a quote.
        """
        count = 0
        destination = Path(destination)
        staging = destination.with_name(f".{destination.name}.tmp")
        try:
            with staging.open("w", newline="", encoding="utf-8") as handle:
                writer = None
                if destination.suffix.lower() == ".csv":
                    writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
                    writer.writeheader()
                for stored in self.rows(fingerprint):
                    record = stored.as_dict()
                    if writer is not None:
                        record["probs"] = json.dumps(record["probs"]) if record.get("probs") is not None else ""
                        if "labels" in record:  # several labels: the label cell holds them as a JSON list
                            record["label"] = json.dumps(record["labels"])
                        writer.writerow({column: _csv_safe(record.get(column)) for column in CSV_COLUMNS})
                    else:
                        handle.write(json.dumps(record) + "\n")
                    count += 1
            staging.replace(destination)
        finally:
            staging.unlink(missing_ok=True)
        return count


CSV_COLUMNS = ["input", "label", "probs", "value", "fingerprint"]  # classification rows leave value empty, and
# regression rows label and probs, so one store may hold both kinds; a multi-label row's label is a JSON list


def _csv_safe(value):
    """A cell a spreadsheet will show as text: formula starts (= + - @, OWASP's list) get a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def read_summary(path: str | Path) -> dict:
    """`Store.summary()` of the store at `path`, opened read-only."""
    store = Store(path, read_only=True)
    try:
        return store.summary()
    finally:
        store.close()


def export_store(path: str | Path, destination: str | Path, fingerprint: str | None = None) -> int:
    """`Store.export()` of the store at `path`, opened read-only; returns the row count."""
    store = Store(path, read_only=True)
    try:
        return store.export(Path(destination), fingerprint)
    finally:
        store.close()


def summary_lines(summary: dict, path: str | Path) -> list[str]:
    """`tunelab store info` for people: one line per model fingerprint."""
    lines = [f"{path}: {len(summary)} model(s)"]
    for fingerprint, entry in summary.items():
        labels = ", ".join(f"{label}: {count:,}" for label, count in entry["labels"].items()) or "-"
        lines.append(f"{fingerprint}  {entry.get('predictor', {}).get('rung', '?'):<8} {entry['rows']:>10,} rows  "
                     f"{labels}")
    return lines


def _probs_json(output: dict) -> str | None:
    """The probs column of an output: its probabilities, with the labels given when an example may have several
    (the label column holds one label, so a set travels with the scores it was decided from)."""
    if "labels" in output:
        return json.dumps({"labels": output["labels"], "probs": output["probs"]})
    return json.dumps(output["probs"]) if "probs" in output else None


def _stored(row, fingerprint: str) -> StoredPrediction:
    text, label, value, probs = row
    probs = json.loads(probs) if probs else None
    if isinstance(probs, dict) and isinstance(probs.get("labels"), list) and isinstance(probs.get("probs"), dict):
        return StoredPrediction(text, None, None, probs["probs"], fingerprint, labels=probs["labels"])
    return StoredPrediction(text, label, value, probs, fingerprint)
