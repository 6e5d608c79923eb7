"""The `tunelab` command (typer). `app.py` holds the app and its one error boundary, `flags.py` what every
command shares; `rungs.py` and `offline.py` register the commands. Each command: flags -> config -> one library
call -> print."""

from tunelab.cli import rungs, offline, ship  # noqa: F401, I001 - importing them registers their commands, rungs first
from tunelab.cli.app import app

__all__ = ["app"]
