"""The `tunelab` command: each command parses flags, builds a config, calls one library function and prints.

This is the one place that prints errors: `_OneErrorLine` turns any TunelabError into one line on stderr and exit
code 2. It is also the one place that sets process-wide switches (offline hub, library logging, torch threads).
"""

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
from typer.core import TyperGroup

from tunelab import config as configs
from tunelab.errors import ConfigError, TunelabError
from tunelab.tasks import TaskSource


class _OneErrorLine(TyperGroup):
    """The one error boundary: a TunelabError raised by any command becomes one line on stderr and exit 2."""

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
        None, "--threads", help="Torch threads for this process (default: OMP_NUM_THREADS, else one per core).")):
    """Process-wide switches, set here and only here: never contact a model hub, keep library notices quiet."""
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error")):
        os.environ.setdefault(name, value)  # tunelab shows its own progress; the user's own settings win
    if "transformers" in sys.modules:  # imported before this command ran (a host program, tests): tell it directly
        _quiet_transformers()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def _quiet_transformers() -> None:
    """transformers' own bars and notices off (its GGUF reader draws a bar whatever the environment says)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _flags(**given) -> dict:
    """The flags the user gave; defaults live only in the config dataclasses."""
    return {name: value for name, value in given.items() if value is not None}


def _flag_type(annotation):
    """What typer parses for a config field: its own type, or text for a Literal's choices (the config names the
    flag when a value is wrong) and for tuples (a comma list the config's `from_flags` splits)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _flag_type(next(arg for arg in typing.get_args(annotation) if arg is not type(None)))
    return str if origin in (typing.Literal, tuple) else annotation


def _with_config_flags(*config_classes):
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
                           given=_flags(**{n: v for n, v in flags.items() if n in added}))
        run.__signature__ = inspect.Signature([*own, *added.values()])
        run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}
        return run
    return decorate


def _fields(config_class, given: dict) -> dict:
    """The given flags that are fields of `config_class`."""
    return {field.name: given[field.name] for field in dataclasses.fields(config_class) if field.name in given}


def _config(config_class, given: dict):
    """`config_class` from the given flags (`from_flags` where a field is a comma list on the command line)."""
    return getattr(config_class, "from_flags", config_class)(**_fields(config_class, given))


BASE_MODEL = Option("smollm2", "--model", help="'smollm2' (bundled GGUF), an HF folder or a .gguf file.")
PREDICTOR = Option(..., "--model", help="A saved tunelab predictor folder.")
JSON = Option(False, "--json", help="Print one JSON object per result instead of a table.")
OVERWRITE = Option(False, "--overwrite", help="Replace whatever --out holds.")


def _task(given: dict):
    return _config(TaskSource, given).load()


def _model(spec: str):
    from tunelab.models import load_model

    _quiet_transformers()
    with err_console.status(f"loading {spec}") as status:
        return load_model(spec, status=lambda message: status.update(message))


def _predictor(directory: Path):
    from tunelab.predictor import load_predictor

    _quiet_transformers()
    with err_console.status(f"loading {directory}"):
        return load_predictor(directory)


@contextmanager
def _bars(transient: bool = True):
    """Progress bars on stderr (report.ProgressBars); each of its methods gives a library function its callback."""
    from tunelab.report.console import progress_bars

    with progress_bars(err_console, transient) as bars:
        yield bars


# -- printing -----------------------------------------------------------------------------------------------------
def _out_console() -> Console:
    """Tables on stdout; wide enough for every column when stdout is a file or pipe (rich assumes 80 then)."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _print_results(results: list[dict], as_json: bool, title: str) -> None:
    from tunelab.report.console import results_table

    if as_json:
        for result in results:
            typer.echo(json.dumps(result))
    else:
        _out_console().print(results_table(results, title))


def _print_lines(report: dict, lines: list[str], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report))
    else:
        _out_console().print("\n".join(lines), highlight=False, markup=False)


# -- commands -----------------------------------------------------------------------------------------------------
@app.command()
def info(model: str = BASE_MODEL, as_json: bool = JSON):
    """Model facts: architecture, layers, hidden size, vocabulary, parameter counts, device, dtype."""
    from tunelab.predictor import describe_artifact, is_artifact
    from tunelab.report.console import fact_lines

    facts = describe_artifact(_predictor(Path(model))) if is_artifact(model) else _model(model).describe()
    _print_lines(facts, fact_lines(facts), as_json)


@app.command()
@_with_config_flags(TaskSource, configs.PromptConfig, configs.SearchConfig)
def prompt(
    shots: str = Option("0", help="K, or a comma list to compare (0 zero-shot, 1 one-shot, K few-shot)."),
    save: Optional[Path] = Option(None, help="Write the prompt predictor to this folder."),
    search: bool = Option(False, "--search", help="Try prompt configurations on held-out training examples."),
    sensitivity: bool = Option(False, "--sensitivity", help="Quality spread over shot sets, orders, templates, K."),
    model: str = BASE_MODEL, as_json: bool = JSON, *, given: dict,
):
    """Zero-, one- or few-shot prompting, scored by label log-likelihood on the test split."""
    from tunelab.rungs.prompting import prompt_configs, run_prompts

    flags = _fields(configs.PromptConfig, given)
    variants = prompt_configs("0" if search or sensitivity else shots, save=save, **flags)
    loaded_task = _task(given)
    if search or sensitivity:
        search_config = _config(configs.SearchConfig, given)
        return _prompt_search(variants[0], loaded_task, search_config, model, save, sensitivity, as_json)
    with _bars() as bars:
        results = run_prompts(lambda: _model(model), loaded_task, variants, save=save, on_progress=lambda config: (
            bars.bar(f"K={config.shots}: scoring {loaded_task.name}", len(loaded_task.test))))
    _print_results(results, as_json, f"prompting on {loaded_task.name} ({len(loaded_task.test)} test examples)")
    for note in [loaded_task.split_note, *(f"K={r['shots']}: {n}" for r in results for n in r["notes"])]:
        if note:
            err_console.print(note)


def _prompt_search(base, loaded_task, config, model: str, save, sensitivity: bool, as_json: bool) -> None:
    """`prompt --search` (or --sensitivity): the prompt flags are the base configuration."""
    from tunelab.rungs.search import run_search, search_lines, sensitivity_lines
    from tunelab.rungs.search import sensitivity as measure_sensitivity

    if sensitivity:
        with err_console.status("scoring prompt variants"):
            rows = measure_sensitivity(_model(model), loaded_task, base, config)
        return _print_lines({"task": loaded_task.name, "sensitivity": rows}, sensitivity_lines(rows, loaded_task.name),
                            as_json)
    with _bars() as bars:
        tried = bars.bar("configurations tried")
        result, test_result = run_search(lambda: _model(model), loaded_task, base, config, save=save,
                                         on_config=lambda row: tried(1))
    _print_lines(test_result, search_lines(result, test_result), as_json)


@app.command()
@_with_config_flags(TaskSource, configs.TuneConfig)
def tune(
    out: Path = Option(..., "--out", help="Folder for the tuned predictor (and its checkpoints)."),
    resume: bool = Option(False, "--resume", help="Continue an interrupted run in --out."),
    overwrite: bool = OVERWRITE, model: str = BASE_MODEL, as_json: bool = JSON, *, given: dict,
):
    """Fine-tune the base model (full or LoRA) on a task, evaluate it and save it."""
    from tunelab.rungs.tuning import finetune, run_summary, training_examples

    config, loaded_task = _config(configs.TuneConfig, given), _task(given)
    base = _model(model)
    with _bars() as bars:
        predictor = finetune(base, loaded_task, config, out_dir=out, resume=resume, overwrite=overwrite,
                             on_step=bars.bar(f"{config.method}: training", training_examples(loaded_task, config)),
                             on_epoch_end=bars.note("epoch, validation loss"),
                             on_eval_progress=bars.bar("scoring the test split", len(loaded_task.test)))
    _print_results([run_summary(predictor, out)], as_json, f"{config.method} fine-tuning on {loaded_task.name}, "
                                                      f"saved to {out}")


@app.command()
@_with_config_flags(TaskSource, configs.BaselineConfig)
def baseline(
    out: Path = Option(..., "--out", help="Folder for the baseline predictor."),
    overwrite: bool = OVERWRITE, as_json: bool = JSON, *, given: dict,
):
    """A classical baseline (TF-IDF or frozen embeddings + a linear model), evaluated and saved as a predictor."""
    from tunelab.rungs.baseline import fit_baseline, summary_lines

    config, loaded_task = _config(configs.BaselineConfig, given), _task(given)
    _quiet_transformers()
    with err_console.status(f"fitting the {config.method} baseline"):
        predictor = fit_baseline(loaded_task, config, out_dir=out, overwrite=overwrite)
    _print_results([predictor.meta["metrics"]], as_json, f"{config.method} baseline on {loaded_task.name}")
    if not as_json:
        err_console.print("\n".join(summary_lines(predictor, out)), highlight=False, markup=False)


@app.command()
@_with_config_flags(configs.ExpandConfig)
def expand(
    concepts: str = Option(..., "--concepts", help='Concepts JSONL ({"id": ..., "names": [...]} a line) or countries.'),
    store: Path = Option(..., "--store", help="The SQLite term store to fill (resumable)."),
    examples: Optional[Path] = Option(None, help="Few-shot JSONL: source, language, name."),
    verify: Optional[Path] = Option(None, help="A saved yes/no predictor judging each candidate."),
    limit: Optional[int] = Option(None, help="Only the first N concepts."),
    evaluate: Optional[str] = Option(None, "--evaluate", help="Reference JSONL (id, language, names) or countries."),
    model: str = BASE_MODEL, as_json: bool = JSON, *, given: dict,
):
    """Generate names of concepts in many languages offline into a term store (then: serve --terms)."""
    from tunelab.generation.expand import run_expand, summary_lines

    config = _config(configs.ExpandConfig, given)
    with _bars() as bars:
        report = run_expand(lambda: _model(model), concepts, store, config, model_spec=model, examples=examples,
                            verify=verify, limit=limit, reference=evaluate,
                            on_total=bars.total("generating"), on_progress=bars.bar("generating"))
    _print_lines(report, summary_lines(report), as_json)


@app.command("expand-tune")
@_with_config_flags(configs.GeneratorTuneConfig)
def expand_tune(
    pairs: str = Option(..., "--pairs", help="Training pairs JSONL (source, language, name) or countries-train."),
    out: Path = Option(..., "--out", help="Folder for the tuned generator (LoRA merged)."),
    languages: Optional[str] = Option(None, help="Languages of the countries-train pairs (default: 50)."),
    overwrite: bool = OVERWRITE, model: str = BASE_MODEL, as_json: bool = JSON, *, given: dict,
):
    """LoRA-tune the generator on (name, language) -> name pairs, loss on the name only; use it with expand."""
    from tunelab.generation.concepts import read_pairs
    from tunelab.generation.tuning import tune_generator
    from tunelab.report.console import fact_lines

    config = _config(configs.GeneratorTuneConfig, given)
    training = read_pairs(pairs, configs.language_codes(languages or configs.COUNTRY_LANGUAGES))
    with _bars() as bars:
        facts = tune_generator(_model(model), training, out, config, overwrite=overwrite,
                               on_step=bars.bar("LoRA: training the generator", len(training) * config.epochs))
    _print_lines(facts, fact_lines(facts), as_json)


@app.command()
@_with_config_flags(TaskSource, configs.DistillConfig)
def distill(
    teacher: Path = Option(..., "--teacher", help="A saved tunelab predictor folder (the teacher)."),
    out: Path = Option(..., "--out", help="Folder for the student predictor."),
    transfer: Optional[Path] = Option(None, help="Unlabeled texts for the teacher to label (lines, JSONL, CSV)."),
    as_json: bool = JSON, *, given: dict,
):
    """Distil a teacher into a smaller, faster student; report how much faster and how much worse."""
    from tunelab.rungs.distill import distill as run_distill
    from tunelab.rungs.distill import read_transfer_texts, summary_lines

    config, loaded_task = _config(configs.DistillConfig, given), _task(given)
    transfer_texts = read_transfer_texts(transfer) if transfer is not None else None
    teacher_predictor = _predictor(teacher)
    with _bars() as bars:
        _, report = run_distill(teacher_predictor, loaded_task, config, out_dir=out, transfer_texts=transfer_texts,
                                teacher_name=str(teacher), on_label_progress=bars.bar("teacher labels transfer set"),
                                on_step=bars.bar("student learns"),
                                on_eval_progress=bars.bar("scoring teacher and student", 2 * len(loaded_task.test)))
    _print_lines(report, summary_lines(report, out), as_json)


@app.command("predict")
@_with_config_flags(configs.BulkConfig)
def predict_command(
    model: Path = PREDICTOR, input: Path = Option(..., "--input", help="Texts: one per line, JSONL, or CSV."),
    store: Path = Option(..., "--store", help="The SQLite prediction store to fill."),
    text_field: str = Option("text", help="Field holding the input text (JSONL or CSV)."),
    as_json: bool = JSON, *, given: dict,
):
    """Offline inference: predict every new distinct input into a store; reruns compute only what is missing."""
    from tunelab.offline.bulk import predict_file
    from tunelab.report.console import fact_lines

    _quiet_transformers()
    with _bars() as bars:
        counts = predict_file(model, input, store, _config(configs.BulkConfig, given), text_field=text_field,
                              on_total=bars.total("predicting new inputs"),
                              on_progress=bars.bar("predicting new inputs"))
    _print_lines(counts, fact_lines(counts), as_json)


@app.command("serve")
@_with_config_flags(configs.ServeConfig)
def serve_command(*, given: dict):
    """Serve stored predictions over HTTP (FastAPI + uvicorn): /predict, /match, /healthz, /metrics, /docs."""
    from tunelab.offline.serve import serve

    config = _config(configs.ServeConfig, given)
    _quiet_transformers()
    serve(config, say=err_console.print)


@store_app.command("info")
def store_info(store: Path = typer.Argument(..., help="A prediction store."), as_json: bool = JSON):
    """Rows per model fingerprint and per label."""
    from tunelab.offline.store import read_summary, summary_lines

    summary = read_summary(store)
    _print_lines(summary, summary_lines(summary, store), as_json)


@store_app.command("export")
def store_export(
    store: Path = typer.Argument(..., help="A prediction store."),
    out: Path = typer.Argument(..., help="Destination: .jsonl, or .csv."),
    fingerprint: Optional[str] = Option(None, help="Only this model's rows."),
):
    """Export stored predictions as JSONL or CSV."""
    from tunelab.offline.store import export_store

    err_console.print(f"wrote {export_store(store, out, fingerprint):,} rows to {out}")


@app.command()
@_with_config_flags(TaskSource, configs.BiasConfig)
def bias(model: Path = PREDICTOR, as_json: bool = JSON, *, given: dict):
    """Quality per data slice (fairlearn) and counterfactual name probes, with a verdict."""
    from tunelab.measure.bias import bias_report, check_inputs, summary_lines

    config, loaded_task = _config(configs.BiasConfig, given), _task(given)
    check_inputs(loaded_task, config)  # a bad slice field or probe file fails before the model loads
    predictor = _predictor(model)
    with err_console.status("scoring slices and probes"):
        report = bias_report(predictor, loaded_task, config)
    _print_lines(report, summary_lines(report), as_json)


@app.command()
@_with_config_flags(TaskSource, configs.LadderConfig)
def ladder(
    out: Path = Option(..., "--out", help="Run folder: one subfolder per rung, plus the reports."),
    model: str = BASE_MODEL, as_json: bool = JSON, *, given: dict,
):
    """Run every rung on one task; write report.html, report.md and report.json; name the cheapest good rung."""
    from tunelab.ladder import ladder_task, run
    from tunelab.report.console import summary_lines

    config = _config(configs.LadderConfig, given)
    loaded_task = ladder_task(_config(TaskSource, given), config)
    base = _model(model)
    with _bars(transient=False) as bars:
        done = bars.bar("ladder: rungs done", len(config.rungs))
        report = run(base, loaded_task, config, out, on_step=lambda rung, state: done(int(state != "start")))
    _print_lines(report, summary_lines(report, out), as_json)


@app.command("eval")
@_with_config_flags(TaskSource)
def eval_command(
    model: Path = PREDICTOR, batch_size: Optional[int] = Option(None, help="Examples per forward pass."),
    as_json: bool = JSON, *, given: dict,
):
    """Evaluate any saved predictor on a task's test split."""
    from tunelab.measure.evaluate import evaluate
    from tunelab.predictor import check_fits_task

    loaded_task = _task(given)
    predictor = _predictor(model)
    check_fits_task(predictor, loaded_task, str(model))
    with _bars() as bars:
        result = evaluate(predictor, loaded_task, **_flags(batch_size=batch_size),
                          on_progress=bars.bar(f"scoring {loaded_task.name}", len(loaded_task.test)))
    _print_results([result], as_json, f"{model} on {loaded_task.name}")


if __name__ == "__main__":
    app()
