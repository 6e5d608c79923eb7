"""The HTTP service: answers lookups from the prediction store, matches live text against stored terms.

No model is loaded unless misses are to be answered live (`on_miss="live"`). Every answer names the model
fingerprint that produced it; rows of other fingerprints are never used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ahocorasick
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from tunelab.bulk import normalise, text_key
from tunelab.errors import ConfigError
from tunelab.predictor import load_predictor, read_artifact_json
from tunelab.store import Store

LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


@dataclass(frozen=True)
class ServeConfig:
    store: Path
    model: Path | None = None  # a saved predictor: selects the fingerprint and answers misses live
    fingerprint: str | None = None  # which stored model answers; needed when a store holds several
    on_miss: Literal["404", "live"] = "404"
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    max_text_chars: int = 10_000
    max_batch: int = 1_000
    max_body_bytes: int = 1_000_000

    def __post_init__(self):
        problems = []
        if self.on_miss not in ("404", "live"):
            problems.append(f"--on-miss must be 404 or live, got {self.on_miss!r}")
        if self.on_miss == "live" and self.model is None:
            problems.append("--on-miss live needs --model DIR to answer misses with")
        if not 0 < self.port < 65536:
            problems.append(f"--port must be in 1..65535, got {self.port}")
        for flag, value in (("--max-text-chars", self.max_text_chars), ("--max-batch", self.max_batch),
                            ("--max-body-bytes", self.max_body_bytes)):
            if value < 1:
                problems.append(f"{flag} must be >= 1, got {value}")
        if problems:
            raise ConfigError(problems)


class BatchRequest(BaseModel):
    texts: list[str] = Field(min_length=1)


class MatchRequest(BaseModel):
    text: str = Field(min_length=1)


def _answering_fingerprint(store: Store, config: ServeConfig) -> str:
    stored = store.fingerprints()
    if config.model is not None:  # read from the artifact, without loading its weights
        wanted = read_artifact_json(config.model)["fingerprint"]
    elif config.fingerprint:
        wanted = config.fingerprint
    elif len(stored) == 1:
        wanted = stored[0]
    else:
        raise ConfigError(f"{config.store} holds predictions of {len(stored)} models ({', '.join(stored) or 'none'}); "
                          "choose one with --fingerprint or --model")
    if wanted not in stored and config.on_miss != "live":
        raise ConfigError(f"{config.store} holds no predictions of model {wanted} (it has: {', '.join(stored)})")
    return wanted


def _term_matcher(store: Store, fingerprint: str) -> ahocorasick.Automaton:
    """Every stored input of this model as a pattern of an Aho-Corasick automaton (one pass over live text)."""
    automaton = ahocorasick.Automaton()
    for stored in store.rows(fingerprint):
        automaton.add_word(stored.input, (stored.input, stored.as_dict()))
    if len(automaton) > 0:
        automaton.make_automaton()
    return automaton


def _at_word_boundaries(text: str, start: int, end: int) -> bool:
    return (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum())


class _LimitsAndMetrics:
    """Body-size limit and request metrics as plain ASGI middleware (Starlette's BaseHTTPMiddleware, behind
    @app.middleware, costs about a millisecond a request, which halved throughput in bench/serve.py)."""

    def __init__(self, app, *, max_body_bytes: int, requests, latency):
        self.app, self.max_body_bytes, self.requests, self.latency = app, max_body_bytes, requests, latency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]
        length = dict(scope.get("headers") or []).get(b"content-length")

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            response = JSONResponse({"detail": f"request body over {self.max_body_bytes} bytes"}, status_code=413)
            await response(scope, receive, send_and_record)
        else:
            await self.app(scope, receive, send_and_record)
        self.requests.labels(scope["path"], str(status[0])).inc()
        self.latency.labels(scope["path"]).observe(time.perf_counter() - started)


def create_app(config: ServeConfig) -> FastAPI:
    """The FastAPI app answering from `config.store` (opened read-only)."""
    store = Store(config.store, read_only=True)
    fingerprint = _answering_fingerprint(store, config)
    casefold = bool(store.description(fingerprint).get("casefold", False))  # as the store was written
    live = load_predictor(config.model) if config.on_miss == "live" else None
    matcher = _term_matcher(store, fingerprint)

    registry = CollectorRegistry()
    requests = Counter("tunelab_requests", "HTTP requests", ["endpoint", "status"], registry=registry)
    hits = Counter("tunelab_store_hits", "Lookups answered from the store", registry=registry)
    misses = Counter("tunelab_store_misses", "Lookups not in the store", registry=registry)
    latency = Histogram("tunelab_request_seconds", "Request latency", ["endpoint"], buckets=LATENCY_BUCKETS_S,
                        registry=registry)

    app = FastAPI(title="tunelab prediction service",
                  description="Predictions computed offline by `tunelab predict`, answered from a SQLite store.")

    app.add_middleware(_LimitsAndMetrics, max_body_bytes=config.max_body_bytes, requests=requests, latency=latency)

    def lookup(text: str) -> dict | None:
        if len(text) > config.max_text_chars:
            raise HTTPException(413, f"text over {config.max_text_chars} characters")
        normalised = normalise(text, casefold)
        if not normalised:
            raise HTTPException(422, "text is empty after normalisation")
        found = store.get(fingerprint, text_key(normalised))
        if found is not None:
            hits.inc()
            return {**found.as_dict(), "source": "store"}
        misses.inc()
        if live is None:
            return None
        answer = live.predict_batch([normalised]).row(0)
        return {"input": normalised, **answer, "fingerprint": live.fingerprint, "source": "live"}

    @app.get("/predict", summary="The stored prediction for one text")
    async def predict_one(text: str = Query(..., min_length=1)):
        answer = lookup(text)
        if answer is None:
            raise HTTPException(404, {"message": "not in the store", "input": normalise(text, casefold),
                                      "fingerprint": fingerprint})
        return JSONResponse(answer)  # already plain JSON data: skip FastAPI's encoder on the hot path

    @app.post("/predict", summary="Stored predictions for a batch of texts")
    async def predict_batch(body: BatchRequest):
        if len(body.texts) > config.max_batch:
            raise HTTPException(413, f"batch over {config.max_batch} texts")
        results = []
        for text in body.texts:
            answer = lookup(text)
            results.append(answer if answer is not None else
                           {"input": normalise(text, casefold), "found": False, "fingerprint": fingerprint})
        return {"results": results}

    @app.post("/match", summary="Every stored term found in a live text, with its stored prediction")
    async def match(body: MatchRequest):
        if len(body.text) > config.max_text_chars:
            raise HTTPException(413, f"text over {config.max_text_chars} characters")
        text = normalise(body.text, casefold)
        matches = []
        if len(matcher) > 0:
            for end, (term, stored) in matcher.iter(text):
                start = end - len(term) + 1
                if _at_word_boundaries(text, start, end + 1):
                    matches.append({"term": term, "start": start, "end": end + 1, **stored})
        return {"text": text, "matches": matches, "fingerprint": fingerprint}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "fingerprint": fingerprint, "terms": len(matcher), "on_miss": config.on_miss}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(config: ServeConfig, say=print) -> None:
    """Build the app, then run it with uvicorn until interrupted; `say` gets the lines for the operator."""
    import ipaddress

    import uvicorn

    application = create_app(config)
    try:
        loopback = config.host == "localhost" or ipaddress.ip_address(config.host).is_loopback
    except ValueError:  # a host name: say so too, it may resolve to a public address
        loopback = False
    if not loopback:
        say(f"warning: --host {config.host} is not a loopback address; anyone who can reach this machine on port "
            f"{config.port} can query the service")
    say(f"serving {config.store} on http://{config.host}:{config.port} (docs at /docs)")
    uvicorn.run(application, host=config.host, port=config.port, log_level="warning", access_log=False)
