"""The `tunelab` command: each command parses flags, builds a config, calls the library and prints.

This is the one place that prints errors: a TunelabError becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from tunelab.errors import ConfigError, TunelabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn a small base LLM into a task solution, rung by rung, and measure each rung.")
err_console = Console(stderr=True)  # progress and tables go to stderr/stdout; --json output stays clean

# -- options shared by the commands that take a task --------------------------------------------------------------
TaskName = Annotated[Optional[str], typer.Option("--task", help="Built-in task: vader, vader-valence, fruit.")]
TrainFile = Annotated[Optional[Path], typer.Option("--train", help="Training examples, JSONL or CSV.")]
TestFile = Annotated[Optional[Path], typer.Option(
    "--test", help="Test examples; without it a fixed-seed stratified split of --train is made.")]
TextField = Annotated[str, typer.Option("--text-field", help="Field holding the input text.")]
LabelField = Annotated[str, typer.Option("--label-field", help="Field holding the label or value.")]
KindOption = Annotated[str, typer.Option("--kind", help="classification or regression (for --train files).")]
ModelSpec = Annotated[str, typer.Option("--model", help="'smollm2' (bundled GGUF), an HF folder or a .gguf file.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object per result instead of a table.")]


def _fail(message: str) -> None:
    typer.echo(f"tunelab: error: {message}", err=True)
    raise typer.Exit(2)


@contextmanager
def _user_errors():
    try:
        yield
    except TunelabError as err:
        _fail(str(err))


def _load_task(task, train, test, text_field, label_field, kind):
    from tunelab.tasks import load_task

    if kind not in ("classification", "regression"):
        raise ConfigError(f"--kind must be classification or regression, got {kind!r}")
    return load_task(task, train_path=train, test_path=test, text_field=text_field, label_field=label_field,
                     kind=kind)


def _load_model(spec: str):
    from tunelab.models import load_model

    with err_console.status(f"loading {spec}") as status:
        return load_model(spec, status=lambda message: status.update(message))


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.1f} ex/s")


@contextmanager
def _progress(description: str, total: int):
    """A rich progress bar; yields the callback that advances it."""
    columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), _RateColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        bar = progress.add_task(description, total=total)
        yield lambda n: progress.advance(bar, n)


def _evaluate(predictor, task, batch_size: int) -> dict:
    from tunelab.evaluate import evaluate

    with _progress(f"{predictor.rung}: scoring {task.name}", len(task.test)) as advance:
        return evaluate(predictor, task, batch_size=batch_size, on_progress=advance)


_HEADERS = {"rung": "rung", "method": "method", "epochs_run": "epochs", "train_seconds": "train s",
            "peak_rss_mb": "peak MB", "shots": "K", "select": "select", "calibrate": "calib", "accuracy": "acc",
            "macro_f1": "F1", "mae": "MAE", "spearman": "rho", "examples_per_s": "ex/s", "params_total": "params",
            "params_trainable": "trainable"}


def _print_results(results: list[dict], as_json: bool, title: str) -> None:
    if as_json:
        for result in results:
            typer.echo(json.dumps(result))
        return
    quality = ["mae", "spearman"] if "mae" in results[0] else ["accuracy", "macro_f1"]
    columns = [c for c in ["rung", "method", "shots", "select", "calibrate", *quality, "examples_per_s",
                           "params_total", "params_trainable", "epochs_run", "train_seconds", "peak_rss_mb"]
               if any(c in r for r in results)]
    table = Table(title=title)
    for column in columns:
        table.add_column(_HEADERS[column], justify="left" if column in ("rung", "method", "select") else "right")
    for result in results:
        table.add_row(*(_cell(result.get(column)) for column in columns))
    Console().print(table)


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# -- commands -----------------------------------------------------------------------------------------------------


@app.command()
def info(model: ModelSpec = "smollm2", as_json: JsonFlag = False):
    """Model facts: architecture, layers, hidden size, vocabulary, parameter counts, device, dtype."""
    from tunelab.predictor import ARTIFACT_FILE, load_predictor

    with _user_errors():
        if (Path(model) / ARTIFACT_FILE).is_file():
            predictor = load_predictor(model)
            facts = {"rung": predictor.rung, **predictor.model.describe(),
                     "params_total": predictor.params_total, "params_trainable": predictor.params_trainable,
                     "fingerprint": predictor.fingerprint}
        else:
            facts = _load_model(model).describe()
    if as_json:
        typer.echo(json.dumps(facts))
        return
    table = Table(show_header=False, title=f"tunelab info {model}")
    for key, value in facts.items():
        table.add_row(key, _cell(value))
    Console().print(table)


@app.command()
def prompt(
    task: TaskName = None, train: TrainFile = None, test: TestFile = None,
    text_field: TextField = "text", label_field: LabelField = "label", kind: KindOption = "classification",
    shots: Annotated[str, typer.Option(help="K, or a comma list to compare (0 zero-shot, 1 one-shot, K few-shot).")]
    = "0",
    select: Annotated[Optional[str], typer.Option(help="Shot selection: random, balanced or similar.")] = None,
    calibrate: Annotated[Optional[bool], typer.Option(
        "--calibrate/--no-calibrate", help="Contextual calibration (divide out the content-free label bias).")] = None,
    template: Annotated[Optional[str], typer.Option(
        help=r"Example format with {text} and a final {label}, e.g. 'Word: {text}\nSentiment: {label}'.")] = None,
    instruction: Annotated[Optional[str], typer.Option(help="Text placed before the shots.")] = None,
    length_normalize: Annotated[Optional[bool], typer.Option(
        "--length-normalize/--no-length-normalize", help="Divide label log-likelihoods by token count.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Queries per forward pass.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for shot selection.")] = None,
    model: ModelSpec = "smollm2",
    as_json: JsonFlag = False,
    save: Annotated[Optional[Path], typer.Option(help="Write the prompt predictor to this folder.")] = None,
):
    """Zero-, one- or few-shot prompting, scored by label log-likelihood on the test split."""
    from tunelab.predictor import save_predictor
    from tunelab.prompting import PromptConfig, check_fits, few_shot

    unescape = {"\\n": "\n", "\\t": "\t"}
    for escaped, character in unescape.items():
        template = template.replace(escaped, character) if template else template
        instruction = instruction.replace(escaped, character) if instruction else instruction
    flags = dict(select=select, calibrate=calibrate, template=template, instruction=instruction,
                 length_normalize=length_normalize, batch_size=batch_size, seed=seed)
    flags = {name: value for name, value in flags.items() if value is not None}
    with _user_errors():
        shot_counts = _parse_shots(shots)
        if save is not None and len(shot_counts) > 1:
            raise ConfigError("--save needs a single --shots value")
        configs = [PromptConfig(shots=k, **flags) for k in shot_counts]
        loaded_task = _load_task(task, train, test, text_field, label_field, kind)
        for config in configs:
            check_fits(config, loaded_task)  # before the slow model load
        if loaded_task.split_note:
            err_console.print(loaded_task.split_note)
        base = _load_model(model)
        results = []
        for config in configs:
            predictor = few_shot(base, loaded_task, config)
            metrics = _evaluate(predictor, loaded_task, config.batch_size)
            results.append({**metrics, "shots": config.shots, "select": config.select,
                            "calibrate": config.calibrate, "model": base.name})
            if save is not None:
                save_predictor(predictor, save)
                err_console.print(f"saved prompt predictor to {save}")
    _print_results(results, as_json, f"prompting on {loaded_task.name} ({len(loaded_task.test)} test examples)")


def _parse_shots(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--shots must be an integer or a comma list of integers, got {text!r}") from None
    if not counts:
        raise ConfigError(f"--shots must name at least one K, got {text!r}")
    return counts


@app.command()
def tune(
    out: Annotated[Path, typer.Option("--out", help="Folder for the tuned predictor (and its checkpoints).")],
    task: TaskName = None, train: TrainFile = None, test: TestFile = None,
    text_field: TextField = "text", label_field: LabelField = "label", kind: KindOption = "classification",
    method: Annotated[Optional[str], typer.Option(help="full (every parameter) or lora (PEFT adapters).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs (early stopping may end sooner).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default: 1e-3 LoRA, 3e-5 full).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per optimizer step.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Tokens per training prompt.")] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="LoRA rank.")] = None,
    lora_alpha: Annotated[Optional[int], typer.Option(help="LoRA scaling alpha.")] = None,
    lora_targets: Annotated[Optional[str], typer.Option(
        help="'all-linear' or a comma list of module names (q_proj,v_proj,...).")] = None,
    lora_dropout: Annotated[Optional[float], typer.Option(help="Dropout on the LoRA path.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Share of training examples held out.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Epochs without improvement before stopping.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for initialisation, data order and split.")] = None,
    merge: Annotated[Optional[bool], typer.Option("--merge/--no-merge", help="LoRA: also write the merged model.")]
    = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace whatever --out holds.")] = False,
    model: ModelSpec = "smollm2",
    as_json: JsonFlag = False,
):
    """Fine-tune the base model (full or LoRA) on a task, evaluate it and save it."""
    from tunelab.tuning import TuneConfig, finetune

    flags = dict(method=method, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, lora_r=lora_r,
                 lora_alpha=lora_alpha, lora_targets=lora_targets, lora_dropout=lora_dropout,
                 val_fraction=val_fraction, patience=patience, seed=seed, merge=merge)
    with _user_errors():
        config = TuneConfig(**{name: value for name, value in flags.items() if value is not None})
        loaded_task = _load_task(task, train, test, text_field, label_field, kind)
        base = _load_model(model)
        n_train = round(len(loaded_task.train) * (1 - config.val_fraction))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=True) as progress:
            bar = progress.add_task(f"{config.method}: epoch 1", total=n_train * config.epochs, loss=float("nan"))
            scoring = progress.add_task("scoring test split", total=len(loaded_task.test), visible=False, loss=0.0)

            def on_epoch_end(epoch, val_loss):
                progress.update(bar, description=f"{config.method}: epoch {epoch + 1} (val loss {val_loss:.4f})")

            def on_eval(n):
                progress.update(scoring, visible=True, advance=n)

            predictor = finetune(base, loaded_task, config, out_dir=out, resume=resume, overwrite=overwrite,
                                 on_step=lambda n, loss: progress.update(bar, advance=n, loss=loss),
                                 on_epoch_end=on_epoch_end, on_eval_progress=on_eval)
    training = predictor.meta["training"]
    result = {**predictor.meta["metrics"], "method": config.method, "train_seconds": training["train_seconds"],
              "peak_rss_mb": training["peak_rss_mb"], "epochs_run": training["epochs_run"],
              "best_epoch": training["best_epoch"], "out": str(out)}
    _print_results([result], as_json, f"{config.method} fine-tuning on {loaded_task.name}, saved to {out}")


@app.command("eval")
def eval_command(
    model: Annotated[Path, typer.Option("--model", help="A saved tunelab predictor folder.")],
    task: TaskName = None, train: TrainFile = None, test: TestFile = None,
    text_field: TextField = "text", label_field: LabelField = "label", kind: KindOption = "classification",
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 32,
    as_json: JsonFlag = False,
):
    """Evaluate any saved predictor on a task's test split."""
    from tunelab.predictor import load_predictor

    with _user_errors():
        loaded_task = _load_task(task, train, test, text_field, label_field, kind)
        with err_console.status(f"loading {model}"):
            predictor = load_predictor(model)
        if predictor.kind != loaded_task.kind or (
                loaded_task.is_classification and set(loaded_task.labels) - set(predictor.label_names)):
            raise ConfigError(f"{model} predicts {predictor.kind} {list(predictor.label_names)}, but task "
                              f"{loaded_task.name} is {loaded_task.kind} {list(loaded_task.labels)}")
        result = _evaluate(predictor, loaded_task, batch_size)
    _print_results([result], as_json, f"{model} on {loaded_task.name}")


if __name__ == "__main__":
    app()

