"""The `tunelab` command: each command parses flags, builds a config, calls the library and prints.

This is the one place that prints errors: a TunelabError becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
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


def _out_console() -> Console:
    """Tables on stdout; wide enough for every column when stdout is a file or pipe (rich assumes 80 then)."""
    return Console() if sys.stdout.isatty() else Console(width=160)

# -- options shared by the commands that take a task --------------------------------------------------------------
TaskName = Annotated[Optional[str], typer.Option("--task", help="Built-in task: vader, vader-valence, subjectivity, fruit.")]
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
def _progress(description: str, total: int | None):
    """A rich progress bar; yields the callback that advances it, and with total=None also one that sets it."""
    columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), _RateColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        bar = progress.add_task(description, total=total)
        advance = lambda n: progress.advance(bar, n)  # noqa: E731
        yield advance if total is not None else (advance, lambda n: progress.update(bar, total=n))


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
    _out_console().print(table)


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
    _out_console().print(table)


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


@app.command()
def distill(
    teacher: Annotated[Path, typer.Option("--teacher", help="A saved tunelab predictor folder (the teacher).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the student predictor.")],
    task: TaskName = None, train: TrainFile = None, test: TestFile = None,
    text_field: TextField = "text", label_field: LabelField = "label", kind: KindOption = "classification",
    student: Annotated[Optional[str], typer.Option(
        help="pruned:N (teacher with N layers), encoder:PATH, or minilm (all-MiniLM-L6-v2).")] = None,
    transfer: Annotated[Optional[Path], typer.Option(
        help="Unlabeled texts for the teacher to label (one per line, or JSONL with 'text').")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Softmax temperature of the KD loss.")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Weight of the gold-label loss.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the transfer set.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default: 5e-5 pruned, 1e-4 encoder).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Transfer texts per step.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Tokens per student input.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for initialisation and data order.")] = None,
    as_json: JsonFlag = False,
):
    """Distil a teacher into a smaller, faster student; report how much faster and how much worse."""
    from tunelab.distill import DistillConfig, read_transfer_texts
    from tunelab.distill import distill as run_distill
    from tunelab.predictor import load_predictor

    flags = dict(student=student, temperature=temperature, alpha=alpha, epochs=epochs, lr=lr,
                 batch_size=batch_size, max_length=max_length, seed=seed)
    with _user_errors():
        config = DistillConfig(**{name: value for name, value in flags.items() if value is not None})
        loaded_task = _load_task(task, train, test, text_field, label_field, kind)
        transfer_texts = read_transfer_texts(transfer) if transfer is not None else None
        with err_console.status(f"loading teacher {teacher}"):
            teacher_predictor = load_predictor(teacher)
        n_transfer = len(transfer_texts) if transfer_texts is not None else (
            len(loaded_task.train) + len(loaded_task.unlabeled))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=True) as progress:
            labelling = progress.add_task("teacher labels the transfer set", total=n_transfer)
            training = progress.add_task("student learns", total=n_transfer * config.epochs, visible=False)
            scoring = progress.add_task("scoring teacher and student", total=2 * len(loaded_task.test),
                                        visible=False)
            _, report = run_distill(
                teacher_predictor, loaded_task, config, out_dir=out, transfer_texts=transfer_texts,
                teacher_name=str(teacher),
                on_label_progress=lambda n: progress.advance(labelling, n),
                on_step=lambda n, loss: progress.update(training, advance=n, visible=True),
                on_eval_progress=lambda n: progress.update(scoring, advance=n, visible=True))
    if as_json:
        typer.echo(json.dumps(report))
        return
    quality = report["quality_metric"]
    table = Table(title=f"distillation on {loaded_task.name}: {report['n_transfer']:,} transfer texts, saved to {out}")
    for column in ("model", quality, "ex/s", "params"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, metrics in (("teacher", report["teacher"]), (f"student {config.student}", report["student_metrics"])):
        table.add_row(name, _cell(metrics[quality]), _cell(metrics["examples_per_s"]), _cell(metrics["params_total"]))
    _out_console().print(table)
    _out_console().print(f"student: {report['param_ratio']:.1%} of the teacher's parameters, "
                         f"{report['speedup']:.1f}x its speed, "
                         f"{report['quality_ratio']:.1%} of its quality ({quality})")


@app.command("predict")
def predict_command(
    model: Annotated[Path, typer.Option("--model", help="A saved tunelab predictor folder.")],
    input: Annotated[Path, typer.Option("--input", help="Texts: one per line, JSONL, or CSV.")],
    store: Annotated[Path, typer.Option("--store", help="The SQLite prediction store to fill.")],
    text_field: TextField = "text",
    batch_size: Annotated[Optional[int], typer.Option(help="Texts per batch and per store transaction.")] = None,
    engine: Annotated[Optional[str], typer.Option(help="local, or ray (Ray Data actor pool).")] = None,
    casefold: Annotated[Optional[bool], typer.Option("--casefold/--no-casefold",
                                                     help="Case-fold inputs before keying them.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: local).")] = None,
    ray_actors: Annotated[Optional[int], typer.Option(help="Model replicas in the Ray actor pool.")] = None,
    as_json: JsonFlag = False,
):
    """Offline inference: predict every new distinct input into a store; reruns compute only what is missing."""
    from tunelab.bulk import BulkConfig, predict_all, read_inputs
    from tunelab.predictor import load_predictor
    from tunelab.store import Store

    flags = dict(batch_size=batch_size, engine=engine, casefold=casefold, ray_address=ray_address,
                 ray_actors=ray_actors)
    with _user_errors():
        config = BulkConfig(**{name: value for name, value in flags.items() if value is not None})
        texts = read_inputs(input, text_field)
        with err_console.status(f"loading {model}"):
            predictor = load_predictor(model)
        prediction_store = Store(store)
        try:
            with _progress("predicting new inputs", None) as (advance, set_total):
                counts = predict_all(predictor, texts, prediction_store, config, predictor_dir=model,
                                     on_total=set_total, on_progress=advance)
        finally:
            prediction_store.close()
    if as_json:
        typer.echo(json.dumps(counts))
        return
    table = Table(title=f"tunelab predict -> {store}")
    for key in ("read", "distinct", "already_stored", "predicted", "examples_per_s", "fingerprint"):
        table.add_row(key, _cell(counts[key]))
    _out_console().print(table)


@app.command("serve")
def serve_command(
    store: Annotated[Path, typer.Option("--store", help="The prediction store to answer from.")],
    model: Annotated[Optional[Path], typer.Option(help="The predictor whose rows answer (and, live, misses).")] = None,
    fingerprint: Annotated[Optional[str], typer.Option(help="Which stored model answers, if several.")] = None,
    on_miss: Annotated[str, typer.Option("--on-miss", help="404, or live (needs --model).")] = "404",
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_text_chars: Annotated[Optional[int], typer.Option(help="Longest text accepted.")] = None,
    max_batch: Annotated[Optional[int], typer.Option(help="Most texts in one POST /predict.")] = None,
    max_body_bytes: Annotated[Optional[int], typer.Option(help="Largest request body accepted.")] = None,
):
    """Serve stored predictions over HTTP (FastAPI + uvicorn): /predict, /match, /healthz, /metrics, /docs."""
    from tunelab.serve import ServeConfig, create_app

    with _user_errors():
        limits = dict(max_text_chars=max_text_chars, max_batch=max_batch, max_body_bytes=max_body_bytes)
        config = ServeConfig(store=store, model=model, fingerprint=fingerprint, on_miss=on_miss, host=host,
                             port=port, **{name: value for name, value in limits.items() if value is not None})
        application = create_app(config)
    import uvicorn

    err_console.print(f"serving {store} on http://{host}:{port} (docs at /docs)")
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)


store_app = typer.Typer(no_args_is_help=True, help="Inspect or export a prediction store.")
app.add_typer(store_app, name="store")


@store_app.command("info")
def store_info(store: Annotated[Path, typer.Argument(help="A prediction store.")], as_json: JsonFlag = False):
    """Rows per model fingerprint and per label."""
    from tunelab.store import Store

    with _user_errors():
        opened = Store(store, read_only=True)
        summary = opened.summary()
        opened.close()
    if as_json:
        typer.echo(json.dumps(summary))
        return
    table = Table(title=f"{store}")
    for column in ("fingerprint", "rung", "rows", "per label"):
        table.add_column(column)
    for fp, entry in summary.items():
        labels = ", ".join(f"{label}: {count:,}" for label, count in entry["labels"].items()) or "-"
        table.add_row(fp, entry.get("predictor", {}).get("rung", "?"), f"{entry['rows']:,}", labels)
    _out_console().print(table)


@store_app.command("export")
def store_export(
    store: Annotated[Path, typer.Argument(help="A prediction store.")],
    out: Annotated[Path, typer.Argument(help="Destination: .jsonl, or .csv.")],
    fingerprint: Annotated[Optional[str], typer.Option(help="Only this model's rows.")] = None,
):
    """Export stored predictions as JSONL or CSV."""
    from tunelab.store import Store

    with _user_errors():
        opened = Store(store, read_only=True)
        count = opened.export(out, fingerprint)
        opened.close()
    err_console.print(f"wrote {count:,} rows to {out}")


@app.command()
def bias(
    model: Annotated[Path, typer.Option("--model", help="A saved tunelab predictor folder.")],
    task: TaskName = None, train: TrainFile = None, test: TestFile = None,
    text_field: TextField = "text", label_field: LabelField = "label", kind: KindOption = "classification",
    slice_field: Annotated[Optional[str], typer.Option(help="Test-file field to slice by (default: word length).")]
    = None,
    probe: Annotated[Optional[str], typer.Option(help="'names' (EEC names, shipped) or a JSON file of groups.")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Largest allowed gap between groups per template.")]
    = None,
    positive_label: Annotated[Optional[str], typer.Option(help="Label whose probability and rate are compared.")]
    = None,
    as_json: JsonFlag = False,
):
    """Quality per data slice (fairlearn) and counterfactual name probes, with a verdict."""
    from tunelab.bias import BiasConfig, bias_report, load_probes, task_slices
    from tunelab.predictor import load_predictor

    flags = dict(slice_field=slice_field, probe=probe, threshold=threshold, positive_label=positive_label)
    with _user_errors():
        config = BiasConfig(**{name: value for name, value in flags.items() if value is not None})
        loaded_task = _load_task(task, train, test, text_field, label_field, kind)
        task_slices(loaded_task, config.slice_field)  # fail on a bad slice field before loading the model
        load_probes(config.probe)
        with err_console.status(f"loading {model}"):
            predictor = load_predictor(model)
        with err_console.status("scoring slices and probes"):
            report = bias_report(predictor, loaded_task, config)
    if as_json:
        typer.echo(json.dumps(report))
        return
    console = _out_console()
    slices = report["slices"]
    table = Table(title=f"quality per slice ({report['slice_field']}) on {loaded_task.name}")
    metric_names = list(next(iter(slices["by_group"].values())))
    table.add_column("slice")
    for name in metric_names:
        table.add_column(name, justify="right")
    for group, values in slices["by_group"].items():
        table.add_row(group, *(_cell(values[name]) for name in metric_names))
    console.print(table)
    console.print("largest gap between slices: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                            slices["largest_gap"].items())
                  + (f"; selection-rate difference {slices['selection_rate_difference']:.3f}"
                     if "selection_rate_difference" in slices else ""))
    probes = report["counterfactual"]
    console.print(f"counterfactual probes ({len(probes['templates'])} templates x {sum(probes['groups'].values())} "
                  f"names in {len(probes['groups'])} groups): largest gap in {probes['measure']} "
                  f"{probes['max_gap']:.3f}, mean {probes['mean_gap']:.3f}"
                  + (f", label changed with the name in {probes['share_label_changed']:.0%} of templates"
                     if probes["share_label_changed"] is not None else "")
                  + f"; verdict at threshold {probes['threshold']}: {probes['verdict'].upper()}")


@app.command()
def ladder(
    out: Annotated[Path, typer.Option("--out", help="Run folder: one subfolder per rung, plus the reports.")],
    task: TaskName = None, train: TrainFile = None, test: TestFile = None,
    text_field: TextField = "text", label_field: LabelField = "label", kind: KindOption = "classification",
    rungs: Annotated[Optional[str], typer.Option(help="Comma list of zero,one,few,lora,full,distill.")] = None,
    target_quality: Annotated[Optional[float], typer.Option(
        help="Accuracy (or Spearman) the chosen rung must reach.")] = None,
    quick: Annotated[Optional[bool], typer.Option("--quick/--no-quick",
                                                  help="The built-in short run on vader (under 10 minutes).")] = None,
    few_shots: Annotated[Optional[int], typer.Option(help="K of the few-shot rung.")] = None,
    curve: Annotated[Optional[str], typer.Option(help="K values of the few-shot curve, comma list.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Fine-tuning epochs.")] = None,
    student: Annotated[Optional[str], typer.Option(help="The distill rung's student spec.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for every rung.")] = None,
    model: ModelSpec = "smollm2",
):
    """Run every rung on one task; write report.html, report.md and report.json; name the cheapest good rung."""
    from tunelab.ladder import RUNGS, LadderConfig, check_task, run

    flags = dict(rungs=tuple(r.strip() for r in rungs.split(",")) if rungs else None, target_quality=target_quality,
                 quick=quick, few_shots=few_shots, curve=_parse_shots(curve) if curve else None, epochs=epochs,
                 student=student, seed=seed)
    with _user_errors():
        config = LadderConfig(**{name: value for name, value in flags.items() if value is not None})
        if task is None and train is None and config.quick:
            task = "vader"
        loaded_task = _load_task(task, train, test, text_field, label_field, kind)
        check_task(loaded_task, config)
        base = _load_model(model)
        chosen = [r for r in RUNGS if r in config.rungs]
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console) as progress:
            overall = progress.add_task("ladder", total=len(chosen))
            bars = {}

            def on_step(rung, state):
                if state == "start":
                    bars[rung] = progress.add_task(f"  {rung}", total=None)
                else:
                    bar = bars.get(rung) or progress.add_task(f"  {rung} (done earlier)", total=1)
                    progress.update(bar, total=1, completed=1)
                    progress.advance(overall)

            report = run(base, loaded_task, config, out, on_step=on_step)
    table = Table(title=f"ladder on {report['task']} ({report['n_test']} test examples) -> {out}/report.html")
    for column in ("rung", report["choice"]["metric"], "ex/s", "params", "trainable", "train s", "probe gap",
                   "verdict"):
        table.add_column(column, justify="left" if column == "rung" else "right")
    for rung, result in report["rungs"].items():
        metrics = result["metrics"]
        quality = metrics.get("accuracy", metrics.get("spearman"))
        table.add_row(rung, _cell(quality), _cell(metrics["examples_per_s"]), _cell(metrics["params_total"]),
                      _cell(metrics["params_trainable"]), _cell(float(result.get("train_seconds", 0.0))),
                      _cell(result["bias"]["counterfactual"]["max_gap"]), result["bias"]["counterfactual"]["verdict"])
    console = _out_console()
    console.print(table)
    for fact in report["parameter_facts"]:
        console.print(f"{'holds' if fact['holds'] else 'BROKEN'}: {fact['fact']} ({fact['evidence']})")
    choice = report["choice"]
    if choice["target"] is not None:
        console.print(f"target {choice['metric']} >= {choice['target']}: cheapest rung to build "
                      f"{choice['cheapest_to_build'] or 'none reaches it'}, fastest to serve "
                      f"{choice['fastest_to_serve'] or 'none'}")


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

