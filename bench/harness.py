"""What the benchmark scripts share: running `tunelab` as its own process (so its peak memory is its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time


def run_tunelab(*args: str) -> dict:
    """`tunelab ARGS --json` in a fresh process; its last JSON line, or exit naming the failed command."""
    command = [sys.executable, "-m", "tunelab.cli", *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def examples_per_s(predictor, texts: list[str], repeats: int = 3, *, warm_up: bool = False) -> float:
    """Best of `repeats` passes over `texts` through predict() (the first pass also warms the runtime up; with
    `warm_up`, one untimed pass comes before them)."""
    import time

    from tunelab.predictor import predict

    if warm_up:
        predict(predictor, texts)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        predict(predictor, texts)
        best = min(best, time.perf_counter() - started)
    return len(texts) / best


def run_with_peak(command: list[str], preexec_fn=None) -> tuple[int, float, float, str, str]:
    """`command` in its own process: (exit status, seconds, its own peak RSS in GiB from os.wait4's ru_maxrss,
    stdout, stderr)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, preexec_fn=preexec_fn)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0), err.seek(0)
        return os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss / 2**20, out.read(), err.read()


def describe_cpu() -> str:
    """The CPU by what it is: its model name, cores, and the vector units that decide speed here (a figure names
    the CPU it was measured on; an AVX2-only AMD EPYC and one with AVX-512 BF16 share a model name)."""
    from pathlib import Path

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    units = ("AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags
             else "AVX-512" if "avx512f" in flags else "AVX2 only" if "avx2" in flags else "no AVX2")
    return f"{name} ({units}), {os.cpu_count()} cores"
