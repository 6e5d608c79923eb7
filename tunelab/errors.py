"""The errors a tunelab user can meet. The library raises them; only the CLI (cli/app.py) prints them: one line,
exit 2.

    TunelabError
     ├── ConfigError   a flag or config field out of range (all problems listed at once)
     ├── InputError    a data file, line or field that cannot be used
     ├── ModelError    a model or artifact folder that cannot be loaded
     ├── TrainingError training that cannot go on (NaN loss, nothing to resume)
     └── MemoryPlanError a run that will not fit in the memory at hand (refused before it starts)
"""

from __future__ import annotations

from pathlib import Path


class TunelabError(Exception):
    """Base of every error tunelab raises on purpose."""


class ConfigError(TunelabError):
    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class InputError(TunelabError):
    """Renders as `train.jsonl:17: field "label" is missing (use --label-field to name it)`."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ):
        self.path, self.line, self.field, self.hint = path, line, field, hint
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        subject = f'field "{field}" ' if field is not None else ""
        text = f"{where}{subject}{message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class ModelError(TunelabError):
    """A model spec, GGUF file or artifact folder that cannot be loaded."""


class TrainingError(TunelabError):
    """Training stopped: the message says what happened and what was kept."""


class MemoryPlanError(TunelabError):
    """A run the memory plan refuses: what it needs, what there is, and what would fit (tunelab/memory.py)."""
