import threading
import time

import httpx
import pytest
import uvicorn

from tunelab.bulk import BulkConfig, predict_all
from tunelab.errors import ConfigError
from tunelab.predictor import load_predictor, save_predictor
from tunelab.prompting import PromptConfig, few_shot
from tunelab.serve import ServeConfig, create_app
from tunelab.store import Store

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


class LoopbackServer:
    """A real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


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
