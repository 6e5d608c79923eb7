"""The commands of offline inference and generation: predict, serve, store info and export, expand, expand-tune."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typer import Option

from tunelab.cli.app import app, err_console, quiet_transformers, store_app
from tunelab.cli.flags import (
    BASE_MODEL,
    JSON,
    NPROC,
    OVERWRITE,
    PREDICTOR,
    config_from,
    launch_processes,
    load_base,
    print_lines,
    progress,
    with_config_flags,
)
from tunelab.generation import config as generation_configs
from tunelab.offline import config as offline_configs


@app.command()
@with_config_flags(generation_configs.ExpandConfig)
def expand(
    concepts: str = Option(..., "--concepts", help='Concepts JSONL ({"id": ..., "names": [...]} a line) or countries.'),
    store: Path = Option(..., "--store", help="The SQLite term store to fill (resumable)."),
    examples: Optional[Path] = Option(None, help="Few-shot JSONL: source, language, name."),
    verify: Optional[Path] = Option(None, help="A saved yes/no predictor judging each candidate."),
    limit: Optional[int] = Option(None, help="Only the first N concepts."),
    evaluate: Optional[str] = Option(None, "--evaluate", help="Reference JSONL (id, language, names) or countries."),
    model: str = BASE_MODEL, as_json: bool = JSON, *, given: dict,
):
    """Generate names of concepts in many languages offline into a term store (then: serve --terms).

    Example: tunelab expand --concepts countries --languages de,fr --store terms.sqlite
    """
    from tunelab.generation.expand import run_expand, summary_lines

    config = config_from(generation_configs.ExpandConfig, given)
    with progress() as bars:
        report = run_expand(lambda: load_base(model), concepts, store, config, model_spec=model, examples=examples,
                            verify=verify, limit=limit, reference=evaluate,
                            on_total=bars.total("generating"), on_progress=bars.bar("generating"))
    print_lines(report, summary_lines(report), as_json)


@app.command("expand-tune")
@with_config_flags(generation_configs.GeneratorTuneConfig)
def expand_tune(
    pairs: str = Option(..., "--pairs", help="Training pairs JSONL (source, language, name), or built-in "
                        "concept types, comma-separated: countries-train,regions,months,days,units."),
    out: Path = Option(..., "--out", help="Folder for the tuned generator (LoRA merged)."),
    languages: Optional[str] = Option(None, help="Languages of the built-in pairs (default: 50)."),
    nproc: int = NPROC, overwrite: bool = OVERWRITE, model: str = BASE_MODEL, as_json: bool = JSON, *, given: dict,
):
    """LoRA-tune the generator on (name, language) -> name pairs, loss on the name only; use it with expand.

    Example: tunelab expand-tune --pairs countries-train --out runs/generator
    """
    from tunelab.generation.concepts import read_pairs
    from tunelab.generation.tuning import tune_generator
    from tunelab.report.console import fact_lines

    config = config_from(generation_configs.GeneratorTuneConfig, given)
    if nproc > 1:
        return launch_processes(nproc)
    training = read_pairs(pairs, generation_configs.language_codes(languages or generation_configs.COUNTRY_LANGUAGES))
    with progress() as bars:
        facts = tune_generator(load_base(model), training, out, config, overwrite=overwrite,
                               on_step=bars.bar("LoRA: training the generator", len(training) * config.epochs))
    if facts:  # empty in the processes other than rank 0 of a data-parallel job
        print_lines(facts, fact_lines(facts), as_json)




@app.command("predict")
@with_config_flags(offline_configs.BulkConfig)
def predict_command(
    model: Path = PREDICTOR, input: Path = Option(..., "--input", help="Texts: one per line, JSONL, or CSV."),
    store: Path = Option(..., "--store", help="The SQLite prediction store to fill."),
    text_field: str = Option("text", help="Field holding the input text (JSONL or CSV)."),
    as_json: bool = JSON, *, given: dict,
):
    """Offline inference: predict every new distinct input into a store; reruns compute only what is missing.

    Example: tunelab predict --model runs/student --input queries.txt --store preds.sqlite
    """
    from tunelab.offline.bulk import predict_file
    from tunelab.report.console import fact_lines

    quiet_transformers()
    with progress() as bars:
        counts = predict_file(model, input, store, config_from(offline_configs.BulkConfig, given),
                              text_field=text_field, on_total=bars.total("predicting new inputs"),
                              on_progress=bars.bar("predicting new inputs"))
    print_lines(counts, fact_lines(counts), as_json)


@app.command("serve")
@with_config_flags(offline_configs.ServeConfig)
def serve_command(*, given: dict):
    """Serve stored predictions over HTTP (FastAPI + uvicorn): /predict, /match, /healthz, /metrics, /docs.

    Example: tunelab serve --store preds.sqlite --token-file token.txt
    """
    from tunelab.offline.serve import serve

    config = config_from(offline_configs.ServeConfig, given)
    quiet_transformers()
    serve(config, say=err_console.print)


@store_app.command("info")
def store_info(store: Path = typer.Argument(..., help="A prediction store."), as_json: bool = JSON):
    """Rows per model fingerprint and per label.

    Example: tunelab store info preds.sqlite
    """
    from tunelab.offline.store import read_summary, summary_lines

    summary = read_summary(store)
    print_lines(summary, summary_lines(summary, store), as_json)


@store_app.command("export")
def store_export(
    store: Path = typer.Argument(..., help="A prediction store."),
    out: Path = typer.Argument(..., help="Destination: .jsonl, or .csv."),
    fingerprint: Optional[str] = Option(None, help="Only this model's rows."),
):
    """Export stored predictions as JSONL or CSV.

    Example: tunelab store export preds.sqlite preds.csv
    """
    from tunelab.offline.store import export_store

    err_console.print(f"wrote {export_store(store, out, fingerprint):,} rows to {out}")


