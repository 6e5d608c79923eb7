"""The memory plan's limit as a container sets it: a memory cgroup (v1 or v2), made here when this process may."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest


def _memory_cgroup(limit: int) -> Path | None:
    """A child memory cgroup with `limit` bytes, or None where this process cannot make one (not root, no
    controller mounted, a read-only /sys)."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    parent = Path("/sys/fs/cgroup") if v2.exists() else Path("/sys/fs/cgroup/memory")
    folder = parent / f"tunelab-test-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir()
        (folder / ("memory.max" if v2.exists() else "memory.limit_in_bytes")).write_text(str(limit))
    except OSError:
        return None
    return folder


def test_the_plan_reads_the_limit_a_container_sets(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "tiny")
    limit = 3 * 2**30
    cgroup = _memory_cgroup(limit)
    if cgroup is None:
        pytest.skip("no memory cgroup can be made here")
    try:
        done = subprocess.run([sys.executable, "-m", "tunelab.cli", "info", "--model", str(tmp_path / "tiny"),
                               "--memory", "--json"], capture_output=True, text=True, timeout=300,
                              preexec_fn=lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid())))
    finally:
        for _ in range(50):  # the child has left: the cgroup empties, then goes
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    assert done.returncode == 0, done.stderr
    plans = json.loads(done.stdout)["plans"]
    assert all(p["room_source"].startswith("cgroup") for p in plans)
    assert all(0 < p["room"] <= limit for p in plans)  # the limit less what the process already holds
