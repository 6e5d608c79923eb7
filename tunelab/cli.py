"""The `tunelab` command: each command parses flags, builds a config, calls one library function and prints.

This is the one place that prints errors: `_OneErrorLine` turns any TunelabError into one line on stderr and exit
code 2. It is also the one place that sets process-wide switches (offline hub, library logging, torch threads).
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typer import Option
from typer.core import TyperGroup

from tunelab.errors import ConfigError, TunelabError


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


# -- options several commands share -------------------------------------------------------------------------------
TASK = Option(None, "--task", help="Built-in task: vader, vader-valence, subjectivity, fruit.")
TRAIN = Option(None, "--train", help="Training examples, JSONL or CSV.")
TEST = Option(None, "--test", help="Test examples; without it a fixed-seed stratified split of --train is made.")
TEXT_FIELD = Option("text", "--text-field", help="Field holding the input text.")
LABEL_FIELD = Option("label", "--label-field", help="Field holding the label or value.")
KIND = Option("classification", "--kind", help="classification or regression (for --train files).")
BASE_MODEL = Option("smollm2", "--model", help="'smollm2' (bundled GGUF), an HF folder or a .gguf file.")
PREDICTOR = Option(..., "--model", help="A saved tunelab predictor folder.")
JSON = Option(False, "--json", help="Print one JSON object per result instead of a table.")
SEED = Option(None, help="Seed for initialisation, data order and selection.")
BATCH = Option(None, help="Examples per step or forward pass.")


def _task(task, train, test, text_field, label_field, kind):
    from tunelab.tasks import load_task

    return load_task(task, train_path=train, test_path=test, text_field=text_field, label_field=label_field,
                     kind=kind)


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
    from tunelab.report import progress_bars

    with progress_bars(err_console, transient) as bars:
        yield bars


# -- printing -----------------------------------------------------------------------------------------------------
def _out_console() -> Console:
    """Tables on stdout; wide enough for every column when stdout is a file or pipe (rich assumes 80 then)."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _print_results(results: list[dict], as_json: bool, title: str) -> None:
    from tunelab.report import results_table

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
    from tunelab.report import fact_lines

    facts = describe_artifact(_predictor(Path(model))) if is_artifact(model) else _model(model).describe()
    _print_lines(facts, fact_lines(facts), as_json)


@app.command()
def prompt(
    task: Optional[str] = TASK, train: Optional[Path] = TRAIN, test: Optional[Path] = TEST,
    text_field: str = TEXT_FIELD, label_field: str = LABEL_FIELD, kind: str = KIND,
    shots: str = Option("0", help="K, or a comma list to compare (0 zero-shot, 1 one-shot, K few-shot)."),
    select: Optional[str] = Option(None, help="Shot selection: random, balanced or similar."),
    calibrate: Optional[bool] = Option(None, "--calibrate/--no-calibrate",
                                       help="Divide out the prompt's label bias (see --calibration)."),
    calibration: Optional[str] = Option(None, help="contextual (content-free inputs) or batch (training texts)."),
    template: Optional[str] = Option(None, help=r"Example format with {text} and a final {label}, "
                                                r"e.g. 'Word: {text}\nSentiment: {label}'."),
    instruction: Optional[str] = Option(None, help="Text placed before the shots."),
    label_words: Optional[str] = Option(None, help="Words the prompt uses for the labels, comma list in label order."),
    length_normalize: Optional[bool] = Option(None, "--length-normalize/--no-length-normalize",
                                              help="Divide label log-likelihoods by token count."),
    batch_size: Optional[int] = BATCH, seed: Optional[int] = SEED, model: str = BASE_MODEL, as_json: bool = JSON,
    max_length: Optional[int] = Option(None, help="Tokens per prompt, shots included (default: the context window)."),
    save: Optional[Path] = Option(None, help="Write the prompt predictor to this folder."),
    search: bool = Option(False, "--search", help="Try prompt configurations on held-out training examples."),
    budget_s: Optional[float] = Option(None, help="--search: seconds to spend."),
    max_configs: Optional[int] = Option(None, help="--search: most configurations to try."),
    validation_size: Optional[int] = Option(None, help="--search: training examples held out to judge them."),
    sensitivity: bool = Option(False, "--sensitivity", help="Quality spread over shot sets, orders, templates, K."),
):
    """Zero-, one- or few-shot prompting, scored by label log-likelihood on the test split."""
    from tunelab.prompting import prompt_configs, run_prompts

    if search or sensitivity:
        return _prompt_search(locals())
    configs = prompt_configs(shots, save=save, **_flags(
        select=select, calibrate=calibrate, calibration=calibration, template=template, instruction=instruction,
        label_words=label_words, length_normalize=length_normalize, batch_size=batch_size, seed=seed,
        max_length=max_length))
    loaded_task = _task(task, train, test, text_field, label_field, kind)
    with _bars() as bars:
        results = run_prompts(lambda: _model(model), loaded_task, configs, save=save, on_progress=lambda config: (
            bars.bar(f"K={config.shots}: scoring {loaded_task.name}", len(loaded_task.test))))
    _print_results(results, as_json, f"prompting on {loaded_task.name} ({len(loaded_task.test)} test examples)")
    for note in [loaded_task.split_note, *(f"K={r['shots']}: {n}" for r in results for n in r["notes"])]:
        if note:
            err_console.print(note)


def _prompt_search(flags: dict) -> None:
    """`prompt --search` (or --sensitivity): the search's own flags; the prompt flags are the base configuration."""
    from tunelab.prompting import prompt_configs
    from tunelab.search import SearchConfig, run_search, search_lines, sensitivity, sensitivity_lines

    config = SearchConfig(**_flags(budget_s=flags["budget_s"], max_configs=flags["max_configs"],
                                   validation_size=flags["validation_size"], seed=flags["seed"]))
    names = ("select", "calibrate", "calibration", "template", "instruction", "label_words", "length_normalize",
             "batch_size", "seed", "max_length")
    (base,) = prompt_configs("0", **_flags(**{name: flags[name] for name in names}))
    loaded_task = _task(flags["task"], flags["train"], flags["test"], flags["text_field"], flags["label_field"],
                        flags["kind"])
    if flags["sensitivity"]:
        with err_console.status("scoring prompt variants"):
            rows = sensitivity(_model(flags["model"]), loaded_task, base, config)
        return _print_lines({"task": loaded_task.name, "sensitivity": rows}, sensitivity_lines(rows, loaded_task.name),
                            flags["as_json"])
    with _bars() as bars:
        tried = bars.bar("configurations tried")
        result, test_result = run_search(lambda: _model(flags["model"]), loaded_task, base, config,
                                         save=flags["save"], on_config=lambda row: tried(1))
    _print_lines(test_result, search_lines(result, test_result), flags["as_json"])


@app.command()
def tune(
    out: Path = Option(..., "--out", help="Folder for the tuned predictor (and its checkpoints)."),
    task: Optional[str] = TASK, train: Optional[Path] = TRAIN, test: Optional[Path] = TEST,
    text_field: str = TEXT_FIELD, label_field: str = LABEL_FIELD, kind: str = KIND,
    method: Optional[str] = Option(None, help="full (every parameter) or lora (PEFT adapters)."),
    epochs: Optional[int] = Option(None, help="Maximum epochs (early stopping may end sooner)."),
    lr: Optional[float] = Option(None, help="Learning rate (default: 1e-3 LoRA, 3e-5 full)."),
    batch_size: Optional[int] = BATCH,
    max_length: Optional[int] = Option(None, help="Tokens per prompt (default: derived from the training texts)."),
    lora_r: Optional[int] = Option(None, help="LoRA rank."), lora_alpha: Optional[int] = Option(None, help="alpha."),
    lora_targets: Optional[str] = Option(None, help="'all-linear' or module names (q_proj,v_proj,...)."),
    lora_dropout: Optional[float] = Option(None, help="Dropout on the LoRA path."),
    val_fraction: Optional[float] = Option(None, help="Share of training held out."), seed: Optional[int] = SEED,
    patience: Optional[int] = Option(None, help="Epochs without improvement before stopping."),
    merge: Optional[bool] = Option(None, "--merge/--no-merge", help="LoRA: also write the merged model."),
    resume: bool = Option(False, "--resume", help="Continue an interrupted run in --out."), as_json: bool = JSON,
    overwrite: bool = Option(False, "--overwrite", help="Replace whatever --out holds."), model: str = BASE_MODEL,
):
    """Fine-tune the base model (full or LoRA) on a task, evaluate it and save it."""
    from tunelab.tuning import TuneConfig, finetune, run_summary, training_examples

    config = TuneConfig(**_flags(method=method, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
                                 lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=lora_targets,
                                 lora_dropout=lora_dropout, val_fraction=val_fraction, patience=patience, seed=seed,
                                 merge=merge))
    loaded_task = _task(task, train, test, text_field, label_field, kind)
    base = _model(model)
    with _bars() as bars:
        predictor = finetune(base, loaded_task, config, out_dir=out, resume=resume, overwrite=overwrite,
                             on_step=bars.bar(f"{config.method}: training", training_examples(loaded_task, config)),
                             on_epoch_end=bars.note("epoch, validation loss"),
                             on_eval_progress=bars.bar("scoring the test split", len(loaded_task.test)))
    _print_results([run_summary(predictor, out)], as_json, f"{config.method} fine-tuning on {loaded_task.name}, "
                                                      f"saved to {out}")


@app.command()
def baseline(
    out: Path = Option(..., "--out", help="Folder for the baseline predictor."),
    task: Optional[str] = TASK, train: Optional[Path] = TRAIN, test: Optional[Path] = TEST,
    text_field: str = TEXT_FIELD, label_field: str = LABEL_FIELD, kind: str = KIND,
    method: Optional[str] = Option(None, help="tfidf (word and character n-grams) or embed (frozen MiniLM)."),
    seed: Optional[int] = SEED, as_json: bool = JSON,
    overwrite: bool = Option(False, "--overwrite", help="Replace whatever --out holds."),
):
    """A classical baseline (TF-IDF or frozen embeddings + a linear model), evaluated and saved as a predictor."""
    from tunelab.baseline import BaselineConfig, fit_baseline, summary_lines

    config = BaselineConfig(**_flags(method=method, seed=seed))
    loaded_task = _task(task, train, test, text_field, label_field, kind)
    _quiet_transformers()
    with err_console.status(f"fitting the {config.method} baseline"):
        predictor = fit_baseline(loaded_task, config, out_dir=out, overwrite=overwrite)
    _print_results([predictor.meta["metrics"]], as_json, f"{config.method} baseline on {loaded_task.name}")
    if not as_json:
        err_console.print("\n".join(summary_lines(predictor, out)), highlight=False, markup=False)


@app.command()
def expand(
    concepts: str = Option(..., "--concepts", help='Concepts JSONL ({"id": ..., "names": [...]} a line) or countries.'),
    store: Path = Option(..., "--store", help="The SQLite term store to fill (resumable)."),
    languages: Optional[str] = Option(None, help="Comma list of CLDR codes (default: 50 languages)."),
    model: str = BASE_MODEL, examples: Optional[Path] = Option(None, help="Few-shot JSONL: source, language, name."),
    per_language: Optional[int] = Option(None, help="Candidates per concept and language."),
    decoding: Optional[str] = Option(None, help="beam (deterministic) or sample."),
    temperature: Optional[float] = Option(None, help="Sampling temperature."), batch_size: Optional[int] = BATCH,
    max_new_tokens: Optional[int] = Option(None, help="Longest candidate, in tokens."),
    min_score: Optional[float] = Option(None, help="Drop candidates under this mean token log-probability."),
    verify: Optional[Path] = Option(None, help="A saved yes/no predictor judging each candidate."),
    append: Optional[bool] = Option(None, "--append/--no-append", help="Add to a store of another model's terms."),
    limit: Optional[int] = Option(None, help="Only the first N concepts."),
    evaluate: Optional[str] = Option(None, "--evaluate", help="Reference JSONL (id, language, names) or countries."),
    seed: Optional[int] = SEED, as_json: bool = JSON,
):
    """Generate names of concepts in many languages offline into a term store (then: serve --terms)."""
    from tunelab.expand import COUNTRY_LANGUAGES, ExpandConfig, language_codes, run_expand, summary_lines

    config = ExpandConfig(languages=language_codes(languages or COUNTRY_LANGUAGES), **_flags(
        per_language=per_language, decoding=decoding, temperature=temperature, max_new_tokens=max_new_tokens,
        batch_size=batch_size, min_score=min_score, append=append, seed=seed))
    with _bars() as bars:
        report = run_expand(lambda: _model(model), concepts, store, config, model_spec=model, examples=examples,
                            verify=verify, limit=limit, reference=evaluate,
                            on_total=bars.total("generating"), on_progress=bars.bar("generating"))
    _print_lines(report, summary_lines(report), as_json)


@app.command("expand-tune")
def expand_tune(
    pairs: str = Option(..., "--pairs", help="Training pairs JSONL (source, language, name) or countries-train."),
    out: Path = Option(..., "--out", help="Folder for the tuned generator (LoRA merged)."),
    languages: Optional[str] = Option(None, help="Languages of the countries-train pairs (default: 50)."),
    epochs: Optional[int] = Option(None, help="Passes over the pairs."), lr: Optional[float] = Option(
        None, help="Learning rate."),
    lora_r: Optional[int] = Option(None, help="LoRA rank."), lora_alpha: Optional[int] = Option(None, help="alpha."),
    batch_size: Optional[int] = BATCH, seed: Optional[int] = SEED, model: str = BASE_MODEL, as_json: bool = JSON,
    overwrite: bool = Option(False, "--overwrite", help="Replace whatever --out holds."),
):
    """LoRA-tune the generator on (name, language) -> name pairs, loss on the name only; use it with expand."""
    from tunelab.expand import COUNTRY_LANGUAGES, language_codes, read_pairs
    from tunelab.generation_tuning import GeneratorTuneConfig, tune_generator
    from tunelab.report import fact_lines

    config = GeneratorTuneConfig(**_flags(epochs=epochs, lr=lr, lora_r=lora_r, lora_alpha=lora_alpha,
                                          batch_size=batch_size, seed=seed))
    training = read_pairs(pairs, language_codes(languages or COUNTRY_LANGUAGES))
    with _bars() as bars:
        facts = tune_generator(_model(model), training, out, config, overwrite=overwrite,
                               on_step=bars.bar("LoRA: training the generator", len(training) * config.epochs))
    _print_lines(facts, fact_lines(facts), as_json)


@app.command()
def distill(
    teacher: Path = Option(..., "--teacher", help="A saved tunelab predictor folder (the teacher)."),
    out: Path = Option(..., "--out", help="Folder for the student predictor."),
    task: Optional[str] = TASK, train: Optional[Path] = TRAIN, test: Optional[Path] = TEST,
    text_field: str = TEXT_FIELD, label_field: str = LABEL_FIELD, kind: str = KIND,
    student: Optional[str] = Option(None, help="pruned:N (the teacher with N layers), encoder:PATH, or minilm."),
    transfer: Optional[Path] = Option(None, help="Unlabeled texts for the teacher to label (lines, JSONL, CSV)."),
    temperature: Optional[float] = Option(None, help="KD temperature."), alpha: Optional[float] = Option(
        None, help="Weight of the gold-label loss."),
    epochs: Optional[int] = Option(None, help="Passes over the transfer set."),
    lr: Optional[float] = Option(None, help="Learning rate (default: 5e-5 pruned, 1e-4 encoder)."),
    batch_size: Optional[int] = BATCH,
    max_length: Optional[int] = Option(None, help="Tokens per student input (default: derived from the texts)."),
    seed: Optional[int] = SEED, as_json: bool = JSON,
):
    """Distil a teacher into a smaller, faster student; report how much faster and how much worse."""
    from tunelab.distill import DistillConfig, read_transfer_texts, summary_lines
    from tunelab.distill import distill as run_distill

    config = DistillConfig(**_flags(student=student, temperature=temperature, alpha=alpha, epochs=epochs, lr=lr,
                                    batch_size=batch_size, max_length=max_length, seed=seed))
    loaded_task = _task(task, train, test, text_field, label_field, kind)
    transfer_texts = read_transfer_texts(transfer) if transfer is not None else None
    teacher_predictor = _predictor(teacher)
    with _bars() as bars:
        _, report = run_distill(teacher_predictor, loaded_task, config, out_dir=out, transfer_texts=transfer_texts,
                                teacher_name=str(teacher), on_label_progress=bars.bar("teacher labels transfer set"),
                                on_step=bars.bar("student learns"),
                                on_eval_progress=bars.bar("scoring teacher and student", 2 * len(loaded_task.test)))
    _print_lines(report, summary_lines(report, out), as_json)


@app.command("predict")
def predict_command(
    model: Path = PREDICTOR, input: Path = Option(..., "--input", help="Texts: one per line, JSONL, or CSV."),
    store: Path = Option(..., "--store", help="The SQLite prediction store to fill."),
    text_field: str = TEXT_FIELD, batch_size: Optional[int] = BATCH,
    engine: Optional[str] = Option(None, help="local, or ray (Ray Data actor pool)."),
    casefold: Optional[bool] = Option(None, "--casefold/--no-casefold", help="Case-fold inputs before keying."),
    ray_address: Optional[str] = Option(None, help="Ray cluster address (default: local)."),
    ray_actors: Optional[int] = Option(None, help="Model replicas in the Ray actor pool."), as_json: bool = JSON,
):
    """Offline inference: predict every new distinct input into a store; reruns compute only what is missing."""
    from tunelab.bulk import BulkConfig, predict_file
    from tunelab.report import fact_lines

    config = BulkConfig(**_flags(batch_size=batch_size, engine=engine, casefold=casefold, ray_address=ray_address,
                                 ray_actors=ray_actors))
    _quiet_transformers()
    with _bars() as bars:
        counts = predict_file(model, input, store, config, text_field=text_field,
                              on_total=bars.total("predicting new inputs"),
                              on_progress=bars.bar("predicting new inputs"))
    _print_lines(counts, fact_lines(counts), as_json)


@app.command("serve")
def serve_command(
    store: Optional[Path] = Option(None, "--store", help="The prediction store to answer from."),
    terms: Optional[Path] = Option(None, "--terms", help="A term store (tunelab expand) for POST /match."),
    model: Optional[Path] = Option(None, help="The predictor whose rows answer (and, live, misses)."),
    fingerprint: Optional[str] = Option(None, help="Which stored model answers, if several."),
    on_miss: Optional[str] = Option(None, "--on-miss", help="404, or live (needs --model)."),
    host: Optional[str] = Option(None, help="Address to bind; loopback by default."), port: Optional[int] = Option(
        None, help="Port to listen on."),
    max_text_chars: Optional[int] = Option(None, help="Longest text accepted."), max_batch: Optional[int] = Option(
        None, help="Most texts in one POST /predict."),
    max_body_bytes: Optional[int] = Option(None, help="Largest request body accepted."),
    max_matches: Optional[int] = Option(None, help="Most terms one /match answer lists."),
    live_batch: Optional[int] = Option(None, help="Misses the live model predicts together."),
    max_live_pending: Optional[int] = Option(None, help="Misses waiting for the live model before 503."),
):
    """Serve stored predictions over HTTP (FastAPI + uvicorn): /predict, /match, /healthz, /metrics, /docs."""
    from tunelab.serve import ServeConfig, serve

    config = ServeConfig(**_flags(store=store, terms=terms, model=model, fingerprint=fingerprint, on_miss=on_miss,
                                  host=host, port=port, max_text_chars=max_text_chars, max_batch=max_batch,
                                               max_body_bytes=max_body_bytes, max_matches=max_matches,
                                               live_batch=live_batch, max_live_pending=max_live_pending))
    _quiet_transformers()
    serve(config, say=err_console.print)


@store_app.command("info")
def store_info(store: Path = typer.Argument(..., help="A prediction store."), as_json: bool = JSON):
    """Rows per model fingerprint and per label."""
    from tunelab.store import read_summary, summary_lines

    summary = read_summary(store)
    _print_lines(summary, summary_lines(summary, store), as_json)


@store_app.command("export")
def store_export(
    store: Path = typer.Argument(..., help="A prediction store."),
    out: Path = typer.Argument(..., help="Destination: .jsonl, or .csv."),
    fingerprint: Optional[str] = Option(None, help="Only this model's rows."),
):
    """Export stored predictions as JSONL or CSV."""
    from tunelab.store import export_store

    err_console.print(f"wrote {export_store(store, out, fingerprint):,} rows to {out}")


@app.command()
def bias(
    model: Path = PREDICTOR, task: Optional[str] = TASK, train: Optional[Path] = TRAIN, test: Optional[Path] = TEST,
    text_field: str = TEXT_FIELD, label_field: str = LABEL_FIELD, kind: str = KIND,
    slice_field: Optional[str] = Option(None, help="Test-file field to slice by (default: word length)."),
    probe: Optional[str] = Option(None, help="'names' (EEC names, shipped) or a JSON file of groups."),
    threshold: Optional[float] = Option(None, help="Largest allowed gap between groups per template."),
    positive_label: Optional[str] = Option(None, help="Label whose probability and rate are compared."),
    as_json: bool = JSON,
):
    """Quality per data slice (fairlearn) and counterfactual name probes, with a verdict."""
    from tunelab.bias import BiasConfig, bias_report, check_inputs, summary_lines

    config = BiasConfig(**_flags(slice_field=slice_field, probe=probe, threshold=threshold,
                                 positive_label=positive_label))
    loaded_task = _task(task, train, test, text_field, label_field, kind)
    check_inputs(loaded_task, config)  # a bad slice field or probe file fails before the model loads
    predictor = _predictor(model)
    with err_console.status("scoring slices and probes"):
        report = bias_report(predictor, loaded_task, config)
    _print_lines(report, summary_lines(report), as_json)


@app.command()
def ladder(
    out: Path = Option(..., "--out", help="Run folder: one subfolder per rung, plus the reports."),
    task: Optional[str] = TASK, train: Optional[Path] = TRAIN, test: Optional[Path] = TEST,
    text_field: str = TEXT_FIELD, label_field: str = LABEL_FIELD, kind: str = KIND,
    rungs: Optional[str] = Option(None, help="Comma list of tfidf,embed,zero,one,few,lora,full,distill."),
    target_quality: Optional[float] = Option(None, help="Accuracy (or Spearman) the chosen rung must reach."),
    quick: Optional[bool] = Option(None, "--quick/--no-quick", help="The short built-in run (under 10 minutes)."),
    few_shots: Optional[int] = Option(None, help="K of the few-shot rung when not searched."),
    curve: Optional[str] = Option(None, help="K values of the few-shot curve, comma list."),
    search_budget_s: Optional[float] = Option(None, help="Seconds the few rung's prompt search may take (0: none)."),
    epochs: Optional[int] = Option(None, help="Fine-tuning epochs."), student: Optional[str] = Option(
        None, help="The distill rung's student spec."),
    train_labels: Optional[int] = Option(None, help="Keep only N gold labels; the other training texts go unlabeled."),
    seed: Optional[int] = SEED, model: str = BASE_MODEL, as_json: bool = JSON,
):
    """Run every rung on one task; write report.html, report.md and report.json; name the cheapest good rung."""
    from tunelab.ladder import LadderConfig, check_task, ladder_task_name, run
    from tunelab.report import summary_lines

    config = LadderConfig.from_flags(**_flags(rungs=rungs, target_quality=target_quality, quick=quick,
                                              few_shots=few_shots, curve=curve, epochs=epochs, student=student,
                                              seed=seed, search_budget_s=search_budget_s,
                                              train_labels=train_labels))
    loaded_task = _task(ladder_task_name(task, train, config), train, test, text_field, label_field, kind)
    check_task(loaded_task, config)
    base = _model(model)
    with _bars(transient=False) as bars:
        done = bars.bar("ladder: rungs done", len(config.rungs))
        report = run(base, loaded_task, config, out, on_step=lambda rung, state: done(int(state != "start")))
    _print_lines(report, summary_lines(report, out), as_json)


@app.command("eval")
def eval_command(
    model: Path = PREDICTOR, task: Optional[str] = TASK, train: Optional[Path] = TRAIN, test: Optional[Path] = TEST,
    text_field: str = TEXT_FIELD, label_field: str = LABEL_FIELD, kind: str = KIND,
    batch_size: Optional[int] = BATCH, as_json: bool = JSON,
):
    """Evaluate any saved predictor on a task's test split."""
    from tunelab.evaluate import evaluate
    from tunelab.predictor import check_fits_task

    loaded_task = _task(task, train, test, text_field, label_field, kind)
    predictor = _predictor(model)
    check_fits_task(predictor, loaded_task, str(model))
    with _bars() as bars:
        result = evaluate(predictor, loaded_task, **_flags(batch_size=batch_size),
                          on_progress=bars.bar(f"scoring {loaded_task.name}", len(loaded_task.test)))
    _print_results([result], as_json, f"{model} on {loaded_task.name}")


if __name__ == "__main__":
    app()
