"""The flags of offline inference and serving (`tunelab predict`, `tunelab serve`), as config.py's rung configs:
one frozen dataclass per command, standard library only, so the command line is built without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from tunelab.config import at_least_one
from tunelab.errors import ConfigError


@dataclass(frozen=True)
class BulkConfig:
    """The flags of `tunelab predict`."""
    batch_size: Annotated[int, "Texts per forward pass and per store transaction."] = 64
    engine: Annotated[Literal["local", "ray"], "local, or ray (Ray Data actor pool)."] = "local"
    # off by default: a model may answer "Good" and "good" differently
    casefold: Annotated[bool, "Case-fold inputs before keying."] = False
    ray_address: Annotated[str | None, "Ray cluster address (default: a local Ray instance)."] = None
    # one per 2 cores is plenty on a CPU
    ray_actors: Annotated[int, "Model replicas in the Ray actor pool."] = 1

    def __post_init__(self):
        problems = []
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.engine not in ("local", "ray"):
            problems.append(f"--engine must be local or ray, got {self.engine!r}")
        if self.ray_actors < 1:
            problems.append(f"--ray-actors must be >= 1, got {self.ray_actors}")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class ServeConfig:
    """The flags of `tunelab serve`."""
    store: Annotated[Path | None, "The prediction store: /predict, and /match over its inputs."] = None
    terms: Annotated[Path | None, "A term store (tunelab expand): /match finds its terms instead."] = None
    model: Annotated[Path | None, "The predictor whose rows answer (and, live, misses)."] = None
    fingerprint: Annotated[str | None, "Which stored model answers, if several."] = None
    on_miss: Annotated[Literal["404", "live"], "404, or live (needs --model)."] = "404"
    host: Annotated[str, "Address to bind; loopback by default."] = "127.0.0.1"
    port: Annotated[int, "Port to listen on."] = 8000
    max_text_chars: Annotated[int, "Longest text accepted."] = 10_000
    max_batch: Annotated[int, "Most texts in one POST /predict."] = 1_000
    max_body_bytes: Annotated[int, "Largest request body accepted."] = 1_000_000
    # /match says when it cut the list
    max_matches: Annotated[int, "Most terms one /match answer lists."] = 100
    live_batch: Annotated[int, "Misses the live model predicts together."] = 32
    # past it a request gets 503 at once
    max_live_pending: Annotated[int, "Misses waiting for the live model before 503."] = 256
    # a service with fields and live misses is the one people put on a network: a shared secret on every route but
    # /healthz, compared in constant time, never logged
    token_file: Annotated[Path | None, "File holding a bearer token every request but /healthz must send."] = None

    def __post_init__(self):
        problems = []
        if self.store is None and self.terms is None:
            problems.append("give --store (stored predictions), --terms (a term list), or both")
        if self.store is None and self.on_miss == "live":
            problems.append("--on-miss live needs --store")
        if self.on_miss not in ("404", "live"):
            problems.append(f"--on-miss must be 404 or live, got {self.on_miss!r}")
        if self.on_miss == "live" and self.model is None:
            problems.append("--on-miss live needs --model DIR to answer misses with")
        if not 0 < self.port < 65536:
            problems.append(f"--port must be in 1..65535, got {self.port}")
        problems += at_least_one(("--max-text-chars", self.max_text_chars), ("--max-batch", self.max_batch),
                                 ("--max-body-bytes", self.max_body_bytes), ("--max-matches", self.max_matches),
                                 ("--live-batch", self.live_batch), ("--max-live-pending", self.max_live_pending))
        if problems:
            raise ConfigError(problems)


