"""Helpers shared by the tests that drive the `tunelab` command or its HTTP service."""

import threading
import time
from pathlib import Path

import httpx
import uvicorn
from typer.testing import CliRunner

from tunelab.cli import app

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunelab: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def task_args():
    return ["--train", DATA / "words.jsonl", "--test", DATA / "words_test.csv"]


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
