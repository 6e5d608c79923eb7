"""The prediction service under load: wrk on loopback against `tunelab serve`, vs the live model per lookup.

A store of 100,000 rows is built (2,000 VADER words predicted by the real model, the rest synthetic rows so
that the table has production size; lookups hit both). The service runs as its own process (uvicorn, one worker);
wrk drives it from a second process with random stored keys. For comparison, a second service answers words
that are not stored with the live model (--on-miss live, batch 1), driven the same way with one connection.
Needs Debian's wrk: apt-get install wrk.

The store's answer is also timed in-process (normalise, key, SQLite read: what the service does per lookup,
without HTTP) against the live model's answer to the same lookups, so that the ratio compares the two ways of
answering rather than HTTP's fixed cost, which both would pay.

    python bench/serve.py [--rows 100000] [--seconds 20] [--connections 1,8,32]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from tunelab.models import load_model
from tunelab.offline.bulk import BulkConfig, normalise, predict_all, text_key
from tunelab.offline.store import Store
from tunelab.predictor import save_predictor
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.tasks import load_task
from tunelab.tasks.builtin import vader_lexicon

WRK_SCRIPT = """
local terms = {}
for line in io.lines("%s") do terms[#terms + 1] = line end
math.randomseed(7)
request = function()
  return wrk.format("GET", "/predict?text=" .. terms[math.random(#terms)])
end
"""


HOSTILE_CLIENT = """
import sys, time, httpx
base, text, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
statuses, stop = {}, time.monotonic() + seconds
with httpx.Client(base_url=base, timeout=30) as client:
    while time.monotonic() < stop:
        status = client.post("/match", json={"text": text}).status_code
        statuses[status] = statuses.get(status, 0) + 1
print(" ".join(f"{k}:{v}" for k, v in sorted(statuses.items())))
"""


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if found is None:
        sys.exit(f"cannot read wrk's latency {text!r}")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _wrk_result(out: str) -> dict:
    errors = re.search(r"Socket errors: (.*)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1)),  # the Latency Distribution lines
        "p99": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "errors": (int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(int(n) for n in re.findall(r"\d+", errors.group(1))) if errors else 0),
    }


@contextlib.contextmanager
def _service(folder: Path, port: int, *options: str):
    """`tunelab serve` on the bench's store in its own process, until the block ends; yields its base URL."""
    server = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "serve", "--store", str(folder / "store.sqlite"),
                               "--port", str(port), *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        server.wait(10)


def _wrk(folder: Path, script: str, connections: int, seconds: int, base: str) -> dict:
    done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(folder / script),
                           base], capture_output=True, text=True, check=True)
    return _wrk_result(done.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", default="1,8,32", help="comma-separated wrk connection counts, one run each")
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument("--predicted", type=int, default=2000, help="VADER words predicted by the real model")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/serve.py needs wrk: apt-get install wrk")
    folder = Path(tempfile.mkdtemp(prefix="tunelab-serve-bench-"))
    predictor = few_shot(load_model(), load_task("vader"), PromptConfig(shots=0))
    save_predictor(predictor, folder / "predictor")
    store = Store(folder / "store.sqlite")
    words = sorted(vader_lexicon())[: args.predicted]
    predict_all(predictor, words, store, BulkConfig(batch_size=64))
    template = predictor.predict_batch(["good"]).row(0)
    synthetic = [f"query {i:06d}" for i in range(max(0, args.rows - len(words)))]
    for start in range(0, len(synthetic), 5000):
        chunk = synthetic[start : start + 5000]
        store.put_batch(predictor.fingerprint, [(text_key(t), t, template) for t in chunk])
    rows = sum(entry["rows"] for entry in store.summary().values())
    store.close()
    lookups = random.Random(0).sample(words, min(2000, len(words))) + random.Random(1).sample(synthetic, 2000)
    (folder / "terms.txt").write_text("\n".join(t.replace(" ", "%20") for t in lookups) + "\n")
    (folder / "wrk.lua").write_text(WRK_SCRIPT % (folder / "terms.txt"))

    with _service(folder, args.port) as base:
        subprocess.run(["wrk", "-t1", "-c8", "-d3s", "-s", str(folder / "wrk.lua"), base], capture_output=True)
        loads = {connections: _wrk(folder, "wrk.lua", connections, args.seconds, base)
                 for connections in [int(c) for c in args.connections.split(",")]}
        metrics = httpx.get(f"{base}/metrics").text
        # The same load while one client posts the worst /match text it can: the longest text accepted, made of
        # the shortest stored term, so that every few characters are a match (the service answers 100 at most).
        shortest = min((w for w in words if w.isalpha()), key=len)
        worst = " ".join([shortest] * (10_000 // (len(shortest) + 1)))
        quiet = loads.get(8) or _wrk(folder, "wrk.lua", 8, args.seconds, base)
        hostile = subprocess.Popen([sys.executable, "-c", HOSTILE_CLIENT, base, worst, str(args.seconds + 2)],
                                   stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        under_attack = _wrk(folder, "wrk.lua", 8, args.seconds, base)
        hostile_statuses = hostile.communicate(timeout=args.seconds + 60)[0].strip()
    # The live model behind the same HTTP service: words that are not stored, answered with --on-miss live.
    unstored = random.Random(2).sample(sorted(vader_lexicon())[args.predicted :], 1000)
    (folder / "unstored.txt").write_text("\n".join(unstored) + "\n")
    (folder / "live.lua").write_text(WRK_SCRIPT % (folder / "unstored.txt"))
    with _service(folder, args.port, "--model", str(folder / "predictor"), "--on-miss", "live") as base:
        live_http = _wrk(folder, "live.lua", 1, args.seconds, base)
        live_misses = httpx.get(f"{base}/metrics").text
    hits = float(re.search(r"tunelab_store_hits_total ([\d.e+]+)", metrics).group(1))

    store = Store(folder / "store.sqlite", read_only=True)
    store_latencies = []
    for text in lookups * 5:
        start = time.perf_counter()
        store.get(predictor.fingerprint, text_key(normalise(text))).as_dict()
        store_latencies.append((time.perf_counter() - start) * 1000)
    store.close()
    store_latencies.sort()
    store_p50 = _percentile(store_latencies, 0.5)

    live_latencies = []
    for text in lookups[:100]:
        start = time.perf_counter()
        predictor.predict_batch([normalise(text)])
        live_latencies.append((time.perf_counter() - start) * 1000)
    live_latencies.sort()
    live_p50 = _percentile(live_latencies, 0.5)

    table = Table(title=f"tunelab serve: {rows:,} stored rows, wrk for {args.seconds}s per load on loopback "
                        f"(server: 1 uvicorn worker; wrk: 1 thread; 2 cores in all)")
    for column in ("path", "requests/s", "p50 ms", "p99 ms", "requests", "errors"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for connections, r in loads.items():
        table.add_row(f"GET /predict from the store, wrk -c{connections}", f"{r['rps']:,.0f}", f"{r['p50']:.2f}",
                      f"{r['p99']:.2f}", f"{r['requests']:,}", str(r["errors"]))
    table.add_row("GET /predict, wrk -c8, while one client posts worst-case /match", f"{under_attack['rps']:,.0f}",
                  f"{under_attack['p50']:.2f}", f"{under_attack['p99']:.2f}", f"{under_attack['requests']:,}",
                  str(under_attack["errors"]))
    table.add_row("GET /predict answered by the live model (--on-miss live), wrk -c1", f"{live_http['rps']:,.1f}",
                  f"{live_http['p50']:.1f}", f"{live_http['p99']:.1f}", f"{live_http['requests']:,}",
                  str(live_http["errors"]))
    table.add_row("store answer in-process (no HTTP)", f"{1000 / store_p50:,.0f}", f"{store_p50:.4f}",
                  f"{_percentile(store_latencies, 0.99):.4f}", f"{len(store_latencies):,}", "0")
    table.add_row("live model answer in-process (batch 1)", f"{1000 / live_p50:,.1f}", f"{live_p50:.1f}",
                  f"{_percentile(live_latencies, 0.99):.1f}", f"{len(live_latencies)}", "0")
    console = Console(width=150)
    console.print(table)
    misses = float(re.search(r"tunelab_store_misses_total ([\d.e+]+)", live_misses).group(1))
    console.print(f"store hits counted by the store-only service: {hits:,.0f}; misses answered live by the other: "
                  f"{misses:,.0f}. Store vs live model at p50: in-process {live_p50 / store_p50:,.0f}x faster; "
                  f"over HTTP, one connection each, {live_http['p50'] / loads[min(loads)]['p50']:,.0f}x")
    console.print(f"hostile client ({len(worst):,}-character texts of {shortest!r}; status:count) {hostile_statuses}; "
                  f"GET /predict under it: {under_attack['rps'] / quiet['rps']:.2f}x the throughput without it, "
                  f"p99 {under_attack['p99']:.2f} ms (goal: >= 0.7x and < 25 ms, no 5xx)")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
