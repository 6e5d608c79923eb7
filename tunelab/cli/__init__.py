"""The `tunelab` command (typer): `app` is the entry point; each command module registers its commands on it."""

from tunelab.cli.app import app

__all__ = ["app"]
