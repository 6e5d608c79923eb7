"""What the benchmark scripts share: running `tunelab` as its own process (so its peak memory is its own)."""

from __future__ import annotations

import json
import subprocess
import sys


def run_tunelab(*args: str) -> dict:
    """`tunelab ARGS --json` in a fresh process; its last JSON line, or exit naming the failed command."""
    command = [sys.executable, "-m", "tunelab.cli", *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])
