"""A content-addressed cache of computed features (pooled hidden states), in one SQLite file under TUNELAB_HOME.

The key of an entry is a hash of everything that decides the numbers: the model's weight fingerprint, the layers,
the pooling, the window and stride, the precision and the text itself. Equal key, equal numbers: a second run, another
head on the same features, or bulk prediction of the texts a rung was evaluated on reads them back instead of running
the model again. The values are raw float32 bytes with their shape (no pickle). The file is only a cache: deleting
it (or any entry) costs a recomputation, never a wrong answer. When it grows past its size limit the entries used
longest ago go first.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from tunelab.models import tunelab_home

DEFAULT_LIMIT_MB = 2048  # TUNELAB_FEATURE_CACHE_MB overrides; 2 GiB holds ~100k texts of 4 pooled SmolLM2 layers
_SCHEMA = """CREATE TABLE IF NOT EXISTS features (
    key TEXT PRIMARY KEY, shape TEXT NOT NULL, data BLOB NOT NULL, windows INTEGER NOT NULL,
    bytes INTEGER NOT NULL, used REAL NOT NULL)"""


def feature_key(settings: str, text: str) -> str:
    """The entry's address: `settings` (what decides the numbers, as one string) and the text."""
    return hashlib.sha256(settings.encode() + b"\0" + text.encode()).hexdigest()


class FeatureCache:
    """get_many / put_many over the SQLite file; safe for several processes (SQLite's own locking)."""

    def __init__(self, path: Path | None = None, limit_mb: float | None = None):
        self.path = Path(path) if path else tunelab_home() / "features.sqlite"
        self.limit_bytes = int(1e6 * (limit_mb if limit_mb is not None
                                      else float(os.environ.get("TUNELAB_FEATURE_CACHE_MB", DEFAULT_LIMIT_MB))))

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60)
        db.execute(_SCHEMA)
        return db

    def get_many(self, keys: list[str]) -> dict[str, tuple[np.ndarray, int]]:
        """The stored (array, windows) of each key present; marks them used now."""
        if not keys or not self.path.exists():
            return {}
        found = {}
        with self._connect() as db:
            for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                chunk = keys[start : start + 500]
                rows = db.execute(f"SELECT key, shape, data, windows FROM features WHERE key IN "
                                  f"({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, shape, data, windows in rows:
                    found[key] = (np.frombuffer(data, dtype=np.float32).reshape(
                        [int(n) for n in shape.split(",")]).copy(), int(windows))
            db.executemany("UPDATE features SET used = ? WHERE key = ?", [(time.time(), k) for k in found])
        return found

    def put_many(self, entries: dict[str, tuple[np.ndarray, int]]) -> None:
        """Store each key's (array, windows), then evict the least recently used entries past the size limit."""
        if not entries:
            return
        now = time.time()
        rows = []
        for key, (array, windows) in entries.items():
            data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
            rows.append((key, ",".join(map(str, array.shape)), data, int(windows), len(data), now))
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._evict(db)

    def _evict(self, db: sqlite3.Connection) -> None:
        total = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM features").fetchone()[0]
        if total <= self.limit_bytes:
            return
        freed, doomed = 0, []
        for key, size in db.execute("SELECT key, bytes FROM features ORDER BY used ASC"):
            if total - freed <= self.limit_bytes:
                break
            doomed.append((key,))
            freed += size
        db.executemany("DELETE FROM features WHERE key = ?", doomed)

    def size_bytes(self) -> int:
        if not self.path.exists():
            return 0
        with self._connect() as db:
            return int(db.execute("SELECT COALESCE(SUM(bytes), 0) FROM features").fetchone()[0])
