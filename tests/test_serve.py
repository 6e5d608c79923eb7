import threading
import time

import httpx
import pytest
import schemathesis
from helpers import LoopbackServer
from hypothesis import HealthCheck, given, settings

from tunelab.errors import ConfigError
from tunelab.offline.bulk import BulkConfig, predict_all
from tunelab.offline.serve import ServeConfig, create_app
from tunelab.offline.store import Store
from tunelab.predictor import load_predictor, save_predictor
from tunelab.rungs.prompting import PromptConfig, few_shot

STORED = ["good", "bad", "nice", "awful", "kind"]


@pytest.fixture
def predictor_dirs(tiny_model, tiny_task, tmp_path):
    save_predictor(few_shot(tiny_model, tiny_task, PromptConfig(shots=2)), tmp_path / "a")
    save_predictor(few_shot(tiny_model, tiny_task, PromptConfig(shots=0)), tmp_path / "b")
    return tmp_path / "a", tmp_path / "b"


@pytest.fixture
def store_path(predictor_dirs, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    predict_all(load_predictor(predictor_dirs[0]), STORED, store, BulkConfig())
    store.close()
    return tmp_path / "s.sqlite"


def test_lookups_batches_and_matches_over_http(store_path, predictor_dirs):
    fingerprint = load_predictor(predictor_dirs[0]).fingerprint
    with LoopbackServer(create_app(ServeConfig(store=store_path))) as client:
        hit = client.get("/predict", params={"text": "  good "}).json()
        assert hit["input"] == "good" and hit["source"] == "store" and hit["fingerprint"] == fingerprint
        assert hit["label"] in ("positive", "negative") and sum(hit["probs"].values()) == pytest.approx(1.0)
        miss = client.get("/predict", params={"text": "grim"})
        assert miss.status_code == 404 and miss.json()["detail"]["input"] == "grim"
        batch = client.post("/predict", json={"texts": ["bad", "grim"]}).json()["results"]
        assert batch[0]["label"] and batch[1] == {"input": "grim", "found": False, "fingerprint": fingerprint}
        matches = client.post("/match", json={"text": "a kind and nice day, not badly done"}).json()["matches"]
        assert [(m["term"], m["start"]) for m in matches] == [("kind", 2), ("nice", 11)]
        assert client.get("/healthz").json()["terms"] == len(STORED)
        metrics = client.get("/metrics").text
        assert "tunelab_store_hits_total 2.0" in metrics and "tunelab_store_misses_total 2.0" in metrics
        assert "tunelab_request_seconds_bucket" in metrics
        assert client.get("/openapi.json").json()["info"]["title"] == "tunelab prediction service"


def test_bad_requests_get_clear_4xx(store_path):
    config = ServeConfig(store=store_path, max_text_chars=50, max_batch=3, max_body_bytes=2_000)
    with LoopbackServer(create_app(config)) as client:
        assert client.get("/predict").status_code == 422
        assert client.get("/predict", params={"text": "x" * 51}).status_code == 413
        assert client.get("/predict", params={"text": "   "}).status_code == 422
        assert client.post("/predict", json={"texts": ["a"] * 4}).status_code == 413
        assert client.post("/predict", json={"texts": []}).status_code == 422
        assert client.post("/predict", content=b"{not json", headers={"content-type": "application/json"}
                           ).status_code == 422
        assert client.post("/predict", content=b'{"texts": ["\xff\xfe"]}',
                           headers={"content-type": "application/json"}).status_code in (400, 422)
        assert client.post("/match", json={"text": "y" * 3_000}).status_code == 413


def test_a_store_of_one_model_never_answers_for_another(store_path, predictor_dirs):
    with pytest.raises(ConfigError, match="holds no predictions of model"):
        create_app(ServeConfig(store=store_path, model=predictor_dirs[1]))
    with pytest.raises(ConfigError, match="holds no predictions of model"):
        create_app(ServeConfig(store=store_path, fingerprint="0123456789abcdef"))


def test_live_model_answers_misses_only_when_asked(store_path, predictor_dirs):
    app = create_app(ServeConfig(store=store_path, model=predictor_dirs[0], on_miss="live"))
    with LoopbackServer(app) as client:
        answer = client.get("/predict", params={"text": "grim"}).json()
        assert answer["source"] == "live" and answer["label"] in ("positive", "negative")
        assert client.get("/predict", params={"text": "good"}).json()["source"] == "store"
    with pytest.raises(ConfigError, match="--on-miss live needs --model"):
        ServeConfig(store=store_path, on_miss="live")


def test_body_limit_counts_the_bytes_received_even_when_chunked(store_path):
    with LoopbackServer(create_app(ServeConfig(store=store_path, max_body_bytes=2_000))) as client:
        def chunks():  # no Content-Length: httpx sends this with Transfer-Encoding: chunked
            yield b'{"texts": ["'
            for _ in range(100):
                yield b"good good " * 10
            yield b'"]}'
        response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413 and "over 2000 bytes" in response.json()["detail"]
        small = client.post("/predict", content=iter([b'{"texts": ', b'["good"]}']),
                            headers={"content-type": "application/json"})
        assert small.status_code == 200 and small.json()["results"][0]["input"] == "good"


def test_match_is_bounded_and_says_when_it_cut_the_list(store_path):
    with LoopbackServer(create_app(ServeConfig(store=store_path, max_matches=3))) as client:
        answer = client.post("/match", json={"text": "good bad " * 50}).json()
        assert len(answer["matches"]) == 3 and answer["truncated"] is True
        answer = client.post("/match", json={"text": "good and bad"}).json()
        assert [m["term"] for m in answer["matches"]] == ["good", "bad"] and answer["truncated"] is False


def test_text_that_is_not_unicode_is_a_400_never_a_500(store_path):
    with LoopbackServer(create_app(ServeConfig(store=store_path))) as client:
        for path, body in (("/predict", b'{"texts": ["\\ud800"]}'), ("/match", b'{"text": "a \\udfff b"}')):
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400 and "lone surrogate" in response.json()["detail"], response.text
        response = client.post("/predict", content=b'{"texts": [1, "\\ud800", {"x": "\\ud800"}]}',
                               headers={"content-type": "application/json"})
        assert response.status_code == 422 and isinstance(response.json()["detail"], list)


def test_metrics_are_labelled_by_route_never_by_raw_path(store_path):
    with LoopbackServer(create_app(ServeConfig(store=store_path))) as client:
        for i in range(50):
            assert client.get(f"/no/such/path/{i}").status_code == 404
        metrics = client.get("/metrics").text
        assert "/no/such/path" not in metrics and 'endpoint="unmatched"' in metrics


def test_match_sees_rows_added_after_start_up(store_path, predictor_dirs, monkeypatch):
    monkeypatch.setattr("tunelab.offline.matching.MATCHER_CHECK_S", 0.0)
    with LoopbackServer(create_app(ServeConfig(store=store_path))) as client:
        assert client.post("/match", json={"text": "a grim day"}).json()["matches"] == []
        store = Store(store_path)
        predict_all(load_predictor(predictor_dirs[0]), ["grim"], store, BulkConfig())
        store.close()
        assert [m["term"] for m in client.post("/match", json={"text": "a grim day"}).json()["matches"]] == ["grim"]


class SlowPredictor:
    """Wraps a predictor: every batch takes `seconds` and is recorded."""

    def __init__(self, inner, seconds):
        self.inner, self.seconds, self.batches = inner, seconds, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict_batch(self, texts):
        self.batches.append(list(texts))
        time.sleep(self.seconds)
        return self.inner.predict_batch(texts)


def _held(client) -> float:
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith("tunelab_live_misses_held")]
    return float(lines[0].split()[-1])


def test_live_misses_are_batched_bounded_and_leave_the_service_responsive(store_path, predictor_dirs, monkeypatch):
    slow = SlowPredictor(load_predictor(predictor_dirs[0]), 2.0)
    monkeypatch.setattr("tunelab.offline.serve.load_predictor", lambda _: slow)
    app = create_app(ServeConfig(store=store_path, model=predictor_dirs[0], on_miss="live", live_batch=8,
                                 max_live_pending=20))
    with LoopbackServer(app) as client:
        port = client.base_url.port
        results = {}

        def miss(i):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as own:
                results[i] = own.get("/predict", params={"text": f"grim{i}"}).status_code

        threads = [threading.Thread(target=miss, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while _held(client) < 12:  # every miss arrived (in flight or queued: the first batch takes 2 s)
            assert time.monotonic() < deadline, "the misses did not all arrive"
            time.sleep(0.02)
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        assert time.perf_counter() - started < 0.25  # answered while the model works in its thread
        crowd = client.post("/predict", json={"texts": [f"vile{i}" for i in range(15)]})
        assert crowd.status_code == 503  # 12 waiting + 15 > 20
        for thread in threads:
            thread.join(30)
    assert sorted(results.values()) == [200] * 12
    assert max(len(batch) for batch in slow.batches) > 1 and sum(map(len, slow.batches)) == 12


def test_fuzzing_from_the_openapi_schema_finds_no_5xx_and_every_error_is_json(store_path):
    """schemathesis draws requests from the service's own OpenAPI schema (bounded examples, loopback only)."""
    config = ServeConfig(store=store_path, max_text_chars=200, max_body_bytes=4_000)
    with LoopbackServer(create_app(config)) as client:
        schema = schemathesis.openapi.from_url(f"{client.base_url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/predict", "/match", "/healthz", "/metrics"}
        seen = []

        for operation in operations:
            @given(case=operation.as_strategy())
            @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def no_server_error(case):
                response = case.call(timeout=10)
                seen.append(response.status_code)
                assert response.status_code < 500, (case.method, case.path, case.body, response.text)
                if response.status_code >= 400:
                    content_type = response.headers.get("content-type") or [""]  # schemathesis: a list per header
                    assert content_type[0].startswith("application/json"), response.text
                    assert "detail" in response.json()

            no_server_error()
    assert len(seen) >= 40 and any(status >= 400 for status in seen)  # the fuzzing did reach the error paths


def test_a_bearer_token_guards_every_route_but_healthz_and_is_never_logged(store_path, tmp_path, capfd):
    from tunelab.errors import InputError

    token = "s3cret-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    with LoopbackServer(create_app(ServeConfig(store=store_path, token_file=tmp_path / "token"))) as client:
        assert client.get("/healthz").status_code == 200  # a load balancer's probe needs no secret
        for method, path, body in (("GET", "/predict?text=good", None), ("POST", "/match", {"text": "good"}),
                                   ("GET", "/metrics", None), ("GET", "/docs", None)):
            refused = client.request(method, path, json=body)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
            wrong = client.request(method, path, json=body, headers={"Authorization": f"Bearer {token}x"})
            assert wrong.status_code == 401, path
        good = client.get("/predict", params={"text": "good"}, headers={"Authorization": f"Bearer {token}"})
        assert good.status_code == 200 and good.json()["input"] == "good"
    out, err = capfd.readouterr()
    assert token not in out + err
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InputError, match="empty: the token file must hold one non-empty line"):
        create_app(ServeConfig(store=store_path, token_file=tmp_path / "empty"))
