"""What every command shares: one flag per config field, loading tasks, models and predictors, progress bars and
printing (tables and lines for people, one JSON object per result with --json)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import sys
import types
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer import Option

from tunelab.cli.app import err_console, quiet_transformers
from tunelab.tasks import TaskSource


def given_flags(**given) -> dict:
    """The flags the user gave; defaults live only in the config dataclasses."""
    return {name: value for name, value in given.items() if value is not None}


def _flag_type(annotation):
    """What typer parses for a config field: its own type, or text for a Literal's choices (the config names the
    flag when a value is wrong) and for tuples (a comma list the config's `from_flags` splits)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _flag_type(next(arg for arg in typing.get_args(annotation) if arg is not type(None)))
    return str if origin in (typing.Literal, tuple) else annotation


def with_config_flags(*config_classes):
    """Give a command one flag per field of each config class, typed and helped by the field's own annotation
    (`Annotated[type, "help"]`), so a field and its flag are declared once. The command receives the flags the user
    gave as `given`; its own parameters of the same name win (e.g. prompt's --shots, a comma list)."""
    def decorate(command):
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "given"]
        added = {}
        for config_class in config_classes:
            hints = typing.get_type_hints(config_class, include_extras=True)
            for field in dataclasses.fields(config_class):
                if field.name in added or any(p.name == field.name for p in own):
                    continue
                kind, help_text = typing.get_args(hints[field.name])  # a field without help text fails here
                if field.default not in (None, dataclasses.MISSING):
                    default = field.default
                    help_text += f" \\[default: {','.join(map(str, default)) if type(default) is tuple else default}]"
                name = "--" + field.name.replace("_", "-")
                decls = (f"{name}/--no-{name[2:]}",) if kind is bool else (name,)
                added[field.name] = inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY,
                                                      default=Option(None, *decls, help=help_text),
                                                      annotation=Optional[_flag_type(kind)])

        @functools.wraps(command)
        def run(**flags):
            return command(**{n: v for n, v in flags.items() if n not in added},
                           given=given_flags(**{n: v for n, v in flags.items() if n in added}))
        run.__signature__ = inspect.Signature([*own, *added.values()])
        run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}
        return run
    return decorate


def config_fields(config_class, given: dict) -> dict:
    """The given flags that are fields of `config_class`."""
    return {field.name: given[field.name] for field in dataclasses.fields(config_class) if field.name in given}


def config_from(config_class, given: dict):
    """`config_class` from the given flags (`from_flags` where a field is a comma list on the command line)."""
    return getattr(config_class, "from_flags", config_class)(**config_fields(config_class, given))


BASE_MODEL = Option("smollm2", "--model", help="'smollm2' or 'gemma3-270m' (bundled), an HF folder or a .gguf file.")
PREDICTOR = Option(..., "--model", help="A saved tunelab predictor folder.")
JSON = Option(False, "--json", help="Print one JSON object per result instead of a table.")
OVERWRITE = Option(False, "--overwrite", help="Replace whatever --out holds.")


def load_task_from(given: dict):
    return config_from(TaskSource, given).load()


def load_base(spec: str, precision: str = "fp32"):
    from tunelab.models import load_model

    quiet_transformers()
    with err_console.status(f"loading {spec}") as status:
        return load_model(spec, status=lambda message: status.update(message), precision=precision)


def check_processes(nproc: int) -> None:
    """Refuse more processes than cores: each needs a core of its own (more only wait on each other, each holding
    its own copy of the model)."""
    from tunelab.errors import ConfigError
    from tunelab.memory import cores

    if nproc > cores():
        raise ConfigError(f"--nproc {nproc}: this process may run on {cores()} cores; use --nproc {cores()} or fewer")


def check_memory(spec: str, method: str, base_precision: str = "fp32", processes: int = 1) -> None:
    """Refuse, before the model is loaded, a run whose memory plan does not fit (one line, exit 2)."""
    from tunelab.memory import ModelShape, check, plan
    from tunelab.models import choose_device, model_config

    check_processes(processes)
    with err_console.status(f"planning memory for {spec}") as status:
        config, file_bytes = model_config(spec, status=lambda message: status.update(message))
        check(plan(ModelShape.of(config, file_bytes), method, base_precision=base_precision, processes=processes,
                   device=choose_device(), weights_precision=base_precision))


def load_saved(directory: Path):
    from tunelab.predictor import load_predictor

    quiet_transformers()
    with err_console.status(f"loading {directory}"):
        return load_predictor(directory)


@contextmanager
def progress(transient: bool = True):
    """Progress bars on stderr (report.ProgressBars); each of its methods gives a library function its callback.
    In a data-parallel job only rank 0 shows progress: every process would print the same lines."""
    from tunelab.report.console import NoProgress, progress_bars

    if int(os.environ.get("RANK", "0")) > 0:
        yield NoProgress()
        return
    with progress_bars(err_console, transient) as bars:
        yield bars


# -- data-parallel jobs -------------------------------------------------------------------------------------------
NPROC = Option(1, "--nproc", min=1, help="Processes to train in, on this machine (torch.distributed.run; gloo on "
                                         "a CPU, NCCL on GPUs).")


def launch_processes(nproc: int) -> None:
    """Run this same command in `nproc` processes under torch.distributed.run, each with cores/nproc torch threads;
    exits with the job's status (non-zero when any process failed)."""
    import subprocess

    from tunelab.distributed import launch_command, threads_per_process

    check_processes(nproc)
    argv, skip = [], False
    for arg in sys.argv[1:]:  # the command as typed, less --nproc (each process is one of the N)
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        argv.append(arg)
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
    err_console.print(f"starting {nproc} processes (torch.distributed.run, {env['OMP_NUM_THREADS']} torch threads "
                      "each)")
    raise typer.Exit(subprocess.run(launch_command(nproc, argv), env=env).returncode)


# -- printing -----------------------------------------------------------------------------------------------------
def out_console() -> Console:
    """Tables on stdout; wide enough for every column when stdout is a file or pipe (rich assumes 80 then)."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def print_results(results: list[dict], as_json: bool, title: str) -> None:
    from tunelab.report.console import results_table

    if as_json:
        for result in results:
            typer.echo(json.dumps(result))
    else:
        out_console().print(results_table(results, title))


def print_lines(report: dict, lines: list[str], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report))
    else:
        out_console().print("\n".join(lines), highlight=False, markup=False)


