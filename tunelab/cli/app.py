"""The `tunelab` app: its one error boundary and its process-wide switches.

This is the one place that prints errors: `_OneErrorLine` turns any TunelabError into one line on stderr and exit
code 2. It is also the one place that sets process-wide switches (offline hub, library logging, torch threads).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer
from rich.console import Console
from typer import Option
from typer.core import TyperGroup

from tunelab.errors import ConfigError, TunelabError


# `tunelab --help` lists the commands in the order a user climbs the ladder, then ships and serves
COMMAND_ORDER = ("info", "baseline", "probe", "prompt", "tune", "distill", "ladder", "eval", "bias", "calibrate",
                 "cascade", "export", "predict", "store", "serve", "expand", "expand-tune")


class _OneErrorLine(TyperGroup):
    """The one error boundary: a TunelabError raised by any command becomes one line on stderr and exit 2."""

    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: COMMAND_ORDER.index(name) if name in COMMAND_ORDER else len(names))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TunelabError as err:
            typer.echo(f"tunelab: error: {err}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(cls=_OneErrorLine, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn a small base LLM into a task solution, rung by rung, and measure each rung.")
store_app = typer.Typer(cls=_OneErrorLine, no_args_is_help=True, help="Inspect or export a prediction store.")
app.add_typer(store_app, name="store")
err_console = Console(stderr=True)  # progress and notes go to stderr; tables and --json to stdout


@app.callback()
def _process_switches(threads: Optional[int] = Option(
        None, "--threads", help="Torch threads for this process (default: OMP_NUM_THREADS, else one per core; in a "
                                "job of N processes on this machine, cores / N).")):
    """Process-wide switches, set here and only here: never contact a model hub, keep library notices quiet."""
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error")):
        os.environ.setdefault(name, value)  # tunelab shows its own progress; the user's own settings win
    if "transformers" in sys.modules:  # imported before this command ran (a host program, tests): tell it directly
        quiet_transformers()
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if threads is None and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        # one of several processes a launcher started on this machine: the cores shared out (torchrun's own
        # default, OMP_NUM_THREADS=1, would leave cores idle where there are more cores than processes)
        from tunelab.distributed import threads_per_process

        threads = threads_per_process()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def quiet_transformers() -> None:
    """transformers' own bars and notices off (its GGUF reader draws a bar whatever the environment says)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()

