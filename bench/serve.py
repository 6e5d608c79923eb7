"""The prediction service under load: wrk on loopback against `tunelab serve`, vs the live model per lookup.

A store of 100,000 rows is built (2,000 VADER words predicted by the real model, the rest synthetic rows so
that the table has production size; lookups hit both). The service runs as its own process (uvicorn, one worker);
wrk drives it from a second process with random stored keys. For comparison, the same kind of lookup is answered
by the live model (batch 1). Needs Debian's wrk: apt-get install wrk.

    python bench/serve.py [--rows 100000] [--seconds 20] [--connections 32]
"""

from __future__ import annotations

import argparse
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

from tunelab.bulk import BulkConfig, normalise, predict_all, text_key
from tunelab.models import load_model
from tunelab.predictor import save_predictor
from tunelab.prompting import PromptConfig, few_shot
from tunelab.store import Store
from tunelab.tasks import load_task, vader_lexicon

WRK_SCRIPT = """
local terms = {}
for line in io.lines("%s") do terms[#terms + 1] = line end
math.randomseed(7)
request = function()
  return wrk.format("GET", "/predict?text=" .. terms[math.random(#terms)])
end
"""


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
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

    server = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "serve", "--store", str(folder / "store.sqlite"),
                               "--port", str(args.port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{args.port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        subprocess.run(["wrk", "-t1", "-c8", "-d3s", "-s", str(folder / "wrk.lua"), base], capture_output=True)
        done = subprocess.run(["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
                               "-s", str(folder / "wrk.lua"), base], capture_output=True, text=True, check=True)
        metrics = httpx.get(f"{base}/metrics").text
    finally:
        server.terminate()
        server.wait(10)
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    error_count = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in re.findall(r"\d+", errors.group(1))) if errors else 0)
    hits = float(re.search(r"tunelab_store_hits_total ([\d.e+]+)", metrics).group(1))

    live_latencies = []
    for text in lookups[:100]:
        start = time.perf_counter()
        predictor.predict_batch([normalise(text)])
        live_latencies.append((time.perf_counter() - start) * 1000)
    live_latencies.sort()
    live_p50 = live_latencies[len(live_latencies) // 2]

    table = Table(title=f"tunelab serve: {rows:,} stored rows, wrk -c{args.connections} for {args.seconds}s on "
                        f"loopback (server: 1 uvicorn worker; wrk: 1 thread; 2 cores in all)")
    for column in ("path", "requests/s", "p50 ms", "p99 ms", "requests", "errors"):
        table.add_column(column, justify="left" if column == "path" else "right")
    table.add_row("GET /predict from the store", f"{rps:,.0f}", f"{p50:.2f}", f"{p99:.2f}", f"{total:,}",
                  str(error_count))
    table.add_row("same lookup by the live model (batch 1)", f"{1000 / live_p50:,.1f}", f"{live_p50:.1f}",
                  f"{live_latencies[98]:.1f}", "100", "0")
    console = Console(width=150)
    console.print(table)
    console.print(f"store hits counted by the service: {hits:,.0f}; store answer vs live model at p50: "
                  f"{live_p50 / p50:,.0f}x faster")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
