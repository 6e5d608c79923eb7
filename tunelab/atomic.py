"""Atomic writes: a kill at any instant leaves the old file or folder, or the new one, never half of one.

Every artifact, checkpoint, converted model, report and export in tunelab is written through these: the content
goes to a staging name beside the target, then `os.replace` puts it in place in one step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_text(path: Path, text: str) -> None:
    """Temp file then os.replace: a reader sees the old file or the new one."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    try:
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_json(path: Path, payload) -> None:
    write_text(path, json.dumps(payload, indent=2) + "\n")


def replace_folder(directory: str | Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder by calling `fill(staging)` on an empty staging folder beside `directory`, then put it in place
    of `directory` (replacing a folder already there). A failure in `fill` leaves `directory` as it was."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
    try:
        fill(staging)
        if directory.exists():
            retired = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-old-"))
            os.replace(directory, retired / "old")
            os.replace(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
