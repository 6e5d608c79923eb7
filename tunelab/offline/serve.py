"""The HTTP service: answers lookups from the prediction store, matches live text against stored terms.

No model is loaded unless misses are to be answered live (`on_miss="live"`). Every answer names the model
fingerprint that produced it; rows of other fingerprints are never used. No single client can stall it: request
bodies are bounded as they arrive, /match work is bounded and runs off the event loop, and live misses are batched,
bounded in number and dropped when their client goes away.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import unicodedata
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, model_validator

from tunelab.errors import ConfigError, InputError
from tunelab.offline.bulk import normalise, text_key
from tunelab.offline.config import ServeConfig
from tunelab.offline.matching import Matcher
from tunelab.offline.store import Store
from tunelab.offline.terms import TermStore, term_entries
from tunelab.predictor import load_predictor, read_artifact_json
from tunelab.tasks.fields import join_fields

LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


class BatchRequest(BaseModel):
    """A batch of inputs: `texts`, or for a model of several fields `fields` (one object, or a list of them)."""

    texts: list[str] | None = Field(default=None, min_length=1)
    fields: dict[str, str] | list[dict[str, str]] | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.texts is None) == (self.fields is None):
            raise ValueError('give "texts" (a list of strings) or "fields" (an object of the model\'s fields, or a '
                             "list of them), not both")
        if isinstance(self.fields, list) and not self.fields:
            raise ValueError('"fields" is an empty list')
        return self


class MatchRequest(BaseModel):
    text: str = Field(min_length=1)
    # with --terms: answer only with terms whose stored confidence is at least this (a term without one is left out)
    min_confidence: float | None = Field(default=None, ge=0.0, le=1.0)


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


# -- live misses ----------------------------------------------------------------------------------------------------
class _LiveModel:
    """Misses answered by the live model: queued, predicted in batches in a worker thread (the event loop stays
    free), at most `max_pending` held (queued or being predicted), and dropped from the queue when their client has
    gone."""

    def __init__(self, predictor, batch_size: int, max_pending: int):
        self.predictor, self.batch_size, self.max_pending = predictor, batch_size, max_pending
        self.queue: list[tuple[str, asyncio.Future]] = []
        self.running: list[tuple[str, asyncio.Future]] = []  # the batch the worker thread is predicting
        self.wakeup: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None

    def held(self) -> int:
        """Misses queued or being predicted whose client still waits."""
        return sum(not future.done() for _, future in self.queue + self.running)

    async def predict(self, texts: list[str], request: Request) -> list[dict]:
        if self.held() + len(texts) > self.max_pending:
            raise HTTPException(503, f"the live model has {self.max_pending} misses waiting; retry later")
        loop = asyncio.get_running_loop()
        if self.worker is None or self.worker.done():
            self.wakeup, self.worker = asyncio.Event(), loop.create_task(self._run())
        futures = [loop.create_future() for _ in texts]
        self.queue += zip(texts, futures)
        self.wakeup.set()
        answers = asyncio.ensure_future(asyncio.gather(*futures))
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({answers, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not answers.done():
                raise HTTPException(499, "client closed the request")
            return answers.result()
        finally:
            gone.cancel()
            for future in futures:
                future.cancel()  # no-op when answered; otherwise the worker skips it

    async def _run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.queue:
                batch, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size:]
                waiting = [(text, future) for text, future in batch if not future.done()]
                if not waiting:
                    continue
                self.running = waiting
                try:
                    predictions = await asyncio.to_thread(self.predictor.predict_batch, [t for t, _ in waiting])
                except Exception as err:  # noqa: BLE001 - handed to the waiting requests, which answer 500
                    for _, future in waiting:
                        if not future.done():
                            future.set_exception(err)
                    continue
                finally:
                    self.running = []
                for i, (_, future) in enumerate(waiting):
                    if not future.done():
                        future.set_result(predictions.row(i))


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body was read already, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -- ASGI middleware: body limit and metrics ------------------------------------------------------------------------
def read_token(path: Path) -> bytes:
    """The bearer token in `path` (surrounding white space dropped).

    Raises:
        InputError: no such file, or an empty one.
    """
    try:
        token = Path(path).read_bytes().strip()
    except OSError as err:
        raise InputError(f"cannot read the token ({err.strerror})", path=path) from None
    if not token or b"\n" in token:
        raise InputError("the token file must hold one non-empty line", path=path)
    return token


class _BearerToken:
    """Every request but /healthz must carry `Authorization: Bearer <token>`; else 401, before anything is read.
    hmac.compare_digest compares in constant time, so the answer's timing says nothing of the token."""

    OPEN = frozenset({"/healthz"})

    def __init__(self, app, *, token: bytes):
        self.app, self.expected = app, b"Bearer " + token

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self.OPEN:
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse({"detail": "a bearer token is required (Authorization: Bearer ...)"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class _LimitsAndMetrics:
    """Body limit on the bytes actually received (chunked or not, before any parsing) and request metrics
    labelled by route, as plain ASGI middleware (Starlette's BaseHTTPMiddleware costs about a millisecond a
    request, which halved throughput in bench/serve.py)."""

    def __init__(self, app, *, max_body_bytes: int, routes: set[str], requests, latency):
        self.app, self.max_body_bytes, self.routes = app, max_body_bytes, routes
        self.requests, self.latency = requests, latency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]
        route = scope["path"] if scope["path"] in self.routes else "unmatched"  # never the raw path: bounded labels

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        body = await self._bounded_body(scope, receive)
        if body is None:
            response = JSONResponse({"detail": f"request body over {self.max_body_bytes} bytes"}, status_code=413)
            await response(scope, receive, send_and_record)
        else:
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_and_record)
        self.requests.labels(route, str(status[0])).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)

    async def _bounded_body(self, scope, receive) -> bytes | None:
        """The whole request body, or None as soon as it passes the limit (the rest is never read)."""
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def _checked(text: str, config: ServeConfig) -> str:
    if len(text) > config.max_text_chars:
        raise HTTPException(413, f"text over {config.max_text_chars} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPException(400, "text is not valid Unicode (it holds a lone surrogate)") from None
    return text


def _records(fields: dict | list[dict], names: tuple[str, ...]) -> list[str]:
    """The records of the request's field objects, in the model's field order.

    Raises:
        HTTPException: 422 for a model of one text, or an object that lacks one of the model's fields.
    """
    if not names:
        raise HTTPException(422, 'this model reads one text: send {"texts": [...]}')
    objects = [fields] if isinstance(fields, dict) else fields
    for i, values in enumerate(objects):
        missing = [name for name in names if name not in values]
        if missing:
            raise HTTPException(422, f"fields[{i}] lacks {', '.join(missing)} (this model reads {', '.join(names)})")
    return [join_fields(values, names) for values in objects]


def _predict_routes(app: FastAPI, config: ServeConfig, stored, answer_misses, live, casefold, fingerprint,
                    fields: tuple[str, ...]) -> None:
    """GET and POST /predict: lookups in the prediction store (and live answers to misses)."""
    @app.get("/predict", summary="The stored prediction for one text")
    async def predict_one(request: Request, text: str = Query(..., min_length=1)):
        if fields:
            raise HTTPException(422, f"this model reads the fields {', '.join(fields)}: POST /predict with "
                                     '{"fields": {...}}')
        answer = stored(text)
        if answer is None and live is not None:
            answer = (await answer_misses([text], request))[0]
        if answer is None:
            raise HTTPException(404, {"message": "not in the store", "input": normalise(text, casefold),
                                      "fingerprint": fingerprint})
        return JSONResponse(answer)  # already plain JSON data: skip FastAPI's encoder on the hot path

    @app.post("/predict", summary='Stored predictions for a batch of texts, or of {"fields": ...} objects')
    async def predict_batch(body: BatchRequest, request: Request):
        if body.texts is not None and fields:
            raise HTTPException(422, f"this model reads the fields {', '.join(fields)}: send "
                                     '{"fields": {...}} objects')
        texts = body.texts if body.texts is not None else _records(body.fields, fields)
        if len(texts) > config.max_batch:
            raise HTTPException(413, f"batch over {config.max_batch} texts")
        results = [stored(text) for text in texts]
        missing = [i for i, answer in enumerate(results) if answer is None]
        if missing and live is not None:
            for i, answer in zip(missing, await answer_misses([texts[i] for i in missing], request)):
                results[i] = answer
        return {"results": [answer if answer is not None else
                            {"input": normalise(texts[i], casefold, fields), "found": False,
                             "fingerprint": fingerprint}
                            for i, answer in enumerate(results)]}


def create_app(config: ServeConfig) -> FastAPI:
    """The FastAPI app answering from `config.store` and/or `config.terms` (opened read-only)."""
    store = Store(config.store, read_only=True) if config.store is not None else None
    fingerprint = _answering_fingerprint(store, config) if store is not None else None
    described = store.description(fingerprint) if store else {}
    casefold = bool(described.get("casefold", False))  # as it was written
    fields = tuple(described.get("text_fields") or (read_artifact_json(config.model).get("text_fields", ())
                                                    if config.model is not None else ()))
    live = (_LiveModel(load_predictor(config.model), config.live_batch, config.max_live_pending)
            if config.on_miss == "live" else None)
    terms = None
    if config.terms is not None:
        term_store = TermStore(config.terms, read_only=True)
        terms = Matcher(term_store, lambda: term_entries(term_store.terms()))
    # a prediction store's inputs are matched as they were normalised when stored (case-folded only with --casefold)
    matcher = terms or Matcher(store, lambda: [(row.input, {"term": row.input, **row.as_dict()})
                                               for row in store.rows(fingerprint)], fold=False)

    registry = CollectorRegistry()
    requests = Counter("tunelab_requests", "HTTP requests", ["endpoint", "status"], registry=registry)
    hits = Counter("tunelab_store_hits", "Lookups answered from the store", registry=registry)
    misses = Counter("tunelab_store_misses", "Lookups not in the store", registry=registry)
    latency = Histogram("tunelab_request_seconds", "Request latency", ["endpoint"], buckets=LATENCY_BUCKETS_S,
                        registry=registry)
    if live is not None:
        Gauge("tunelab_live_misses_held", "Misses the live model holds (queued or being predicted)",
              registry=registry).set_function(live.held)

    app = FastAPI(title="tunelab prediction service",
                  description="Predictions computed offline by `tunelab predict`, answered from a SQLite store.")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, error: RequestValidationError):
        # The default handler echoes the input back, which fails on text that is not valid Unicode; say where.
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                    for e in error.errors()]
        if any(problem["type"] == "string_unicode" for problem in problems):
            return JSONResponse({"detail": "text is not valid Unicode (it holds a lone surrogate)"}, status_code=400)
        return JSONResponse({"detail": problems}, status_code=422)

    def stored(text: str) -> dict | None:
        normalised = normalise(_checked(text, config), casefold, fields)
        if not normalised:
            raise HTTPException(422, "text is empty after normalisation")
        found = store.get(fingerprint, text_key(normalised))
        (hits if found is not None else misses).inc()
        return {**found.as_dict(), "source": "store"} if found is not None else None

    async def answer_misses(texts: list[str], request: Request) -> list[dict]:
        normalised = [normalise(text, casefold, fields) for text in texts]
        rows = await live.predict(normalised, request)
        return [{"input": text, **row, "fingerprint": live.predictor.fingerprint, "source": "live"}
                for text, row in zip(normalised, rows)]

    if store is not None:
        _predict_routes(app, config, stored, answer_misses, live, casefold, fingerprint, fields)

    @app.post("/match", summary="Stored terms found in a live text (at most --max-matches), with their predictions "
                                "or, with --terms, their concept and language")
    def match(body: MatchRequest):  # a plain def: FastAPI runs it in its thread pool, off the event loop
        if terms is not None:
            text = unicodedata.normalize("NFC", _checked(body.text, config))  # the spans index this form
            floor = body.min_confidence
            keep = None if floor is None else (lambda entry: (entry.get("confidence") or 0.0) >= floor)
            matches, truncated = terms.find(text, config.max_matches, keep)
            return JSONResponse({"text": text, "matches": matches, "truncated": truncated, "terms": str(config.terms),
                                 "min_confidence": floor})
        text = normalise(_checked(body.text, config), casefold)
        matches, truncated = matcher.find(text, config.max_matches)
        # plain JSON data: JSONResponse skips FastAPI's encoder, which walks every match (a third of the cost)
        return JSONResponse({"text": text, "matches": matches, "truncated": truncated, "fingerprint": fingerprint})

    @app.get("/healthz")
    async def healthz():
        found = {"status": "ok", "fingerprint": fingerprint, "terms": len(matcher.automaton), "on_miss": config.on_miss}
        if live is not None and hasattr(live.predictor, "escalated_share"):  # a cascade answering live misses
            found["escalated_share"] = live.predictor.escalated_share
        return found

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = {route.path for route in app.routes}
    app.add_middleware(_LimitsAndMetrics, max_body_bytes=config.max_body_bytes, routes=routes, requests=requests,
                       latency=latency)
    if config.token_file is not None:  # added last: it runs first, so a refused request is read no further
        app.add_middleware(_BearerToken, token=read_token(config.token_file))
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
    sources = " and ".join(str(path) for path in (config.store, config.terms) if path)
    say(f"serving {sources} on http://{config.host}:{config.port} (docs at /docs)")
    uvicorn.run(application, host=config.host, port=config.port, log_level="warning", access_log=False)
