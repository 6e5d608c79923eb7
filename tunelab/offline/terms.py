"""Term lists: generated names of concepts stored with their provenance, and the matcher that finds them in live text.

The term store is its own SQLite file (WAL, one transaction per batch, like the prediction store): one row per
(concept, language, normalised term), recording the generator's fingerprint, the prompt's hash and the score, and
one `done` row per (concept, language) a generator has finished, so an interrupted `expand` resumes where it stopped
and never generates a pair twice.

Serving finds the terms in live text through offline/matching.py (`term_entries` says what it indexes).
"""

from __future__ import annotations

import sqlite3
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import InputError
from tunelab.offline.matching import match_key
from tunelab.offline.store import connect

_EDGE_PUNCTUATION = " \t\"'`.,;:!?()[]{}«»“”„‘’‚‹›「」『』。、・-–—*_"


def normalise_term(text: str) -> str:
    """A generated candidate as stored: NFC, whitespace collapsed, quotes and punctuation trimmed off its ends."""
    return " ".join(unicodedata.normalize("NFC", text).split()).strip(_EDGE_PUNCTUATION)


def _migration_1(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE terms (
            concept TEXT NOT NULL,
            language TEXT NOT NULL,
            key TEXT NOT NULL,             -- match_key(text): one row per distinct term of a concept and language
            text TEXT NOT NULL,            -- the term as generated (normalised)
            score REAL NOT NULL,           -- the generator's mean log-probability per token
            verifier_score REAL,           -- P(yes) from --verify, when one was used
            fingerprint TEXT NOT NULL,     -- the generator model
            prompt_hash TEXT NOT NULL,     -- the prompt format, shots and decoding settings
            created_at REAL NOT NULL,
            PRIMARY KEY (concept, language, key)
        ) WITHOUT ROWID""")
    db.execute("""
        CREATE TABLE done (
            concept TEXT NOT NULL, language TEXT NOT NULL, fingerprint TEXT NOT NULL, prompt_hash TEXT NOT NULL,
            candidates INTEGER NOT NULL, kept INTEGER NOT NULL,
            PRIMARY KEY (concept, language, fingerprint, prompt_hash)
        ) WITHOUT ROWID""")


def _migration_2(db: sqlite3.Connection) -> None:
    """Evidence for every term: how many of the pair's candidates agreed on it, one confidence in 0..1 (what /match
    filters on), and why it was kept (JSON). Terms stored before this have agreement 1 and no confidence."""
    db.execute("ALTER TABLE terms ADD COLUMN agreement INTEGER NOT NULL DEFAULT 1")
    db.execute("ALTER TABLE terms ADD COLUMN confidence REAL")
    db.execute("ALTER TABLE terms ADD COLUMN evidence TEXT")


MIGRATIONS = [_migration_1, _migration_2]


@dataclass(frozen=True)
class Term:
    concept: str
    language: str
    text: str
    score: float
    verifier_score: float | None = None
    agreement: int = 1  # candidates of its (concept, language) that normalised to the same term
    confidence: float | None = None  # 0..1: the agreement share when sampled, else the mean token probability
    evidence: str | None = None  # why it was kept (JSON)


class TermStore:
    """The SQLite term store. Safe to read from several processes while one writes."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path)
        self.db = connect(self.path, read_only=read_only, migrations=MIGRATIONS, table="terms", what="term store")

    def close(self) -> None:
        self.db.close()

    def data_version(self) -> int:
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    def generators(self) -> list[str]:
        """The fingerprints of the models whose terms the store holds."""
        rows = self.db.execute("SELECT DISTINCT fingerprint FROM done UNION SELECT DISTINCT fingerprint FROM terms")
        return sorted(row[0] for row in rows)

    def check_generator(self, fingerprint: str, append: bool) -> None:
        """Raises InputError when the store holds another model's terms and mixing was not asked for."""
        others = [f for f in self.generators() if f != fingerprint]
        if others and not append:
            raise InputError(f"holds terms of another model ({', '.join(others)}); this generator is {fingerprint}. "
                             "Pass --append to add its terms to the same list, or use another --store", path=self.path)

    def done_pairs(self, fingerprint: str, prompt_hash: str) -> set[tuple[str, str]]:
        rows = self.db.execute("SELECT concept, language FROM done WHERE fingerprint = ? AND prompt_hash = ?",
                               (fingerprint, prompt_hash))
        return {(concept, language) for concept, language in rows}

    def put_batch(self, terms: list[Term], finished: list[tuple[str, str, int, int]], fingerprint: str,
                  prompt_hash: str) -> int:
        """Write the terms of a batch and mark its (concept, language, candidates, kept) pairs done, in one
        transaction; a term already stored for its concept and language keeps its first row. Returns rows added."""
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            before = self.db.total_changes
            self.db.executemany(
                "INSERT OR IGNORE INTO terms (concept, language, key, text, score, verifier_score, fingerprint, "
                "prompt_hash, created_at, agreement, confidence, evidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(t.concept, t.language, match_key(t.text), t.text, t.score, t.verifier_score, fingerprint,
                  prompt_hash, now, t.agreement, t.confidence, t.evidence) for t in terms])
            added = self.db.total_changes - before
            self.db.executemany("INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?, ?, ?)",
                                [(c, lang, fingerprint, prompt_hash, n, kept) for c, lang, n, kept in finished])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return added

    def terms(self, fingerprint: str | None = None) -> list[Term]:
        query = "SELECT concept, language, text, score, verifier_score, agreement, confidence, evidence FROM terms"
        rows = self.db.execute(query + (" WHERE fingerprint = ?" if fingerprint else ""),
                               (fingerprint,) if fingerprint else ())
        return [Term(*row) for row in rows]

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM terms").fetchone()[0]


def term_entries(terms: list[Term]) -> list[tuple[str, dict]]:
    """What the matcher indexes for each stored term: its text, and the concept and language it names."""
    return [(t.text, {"concept": t.concept, "language": t.language, "term": t.text, "confidence": t.confidence,
                      "agreement": t.agreement}) for t in terms]
