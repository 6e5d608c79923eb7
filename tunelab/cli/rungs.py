"""The commands of the ladder's rungs: info, prompt, tune, baseline, probe, distill, eval, bias and ladder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from typer import Option

from tunelab import config as configs
from tunelab.cli.app import app, err_console, quiet_transformers
from tunelab.cli.flags import (
    BASE_MODEL,
    JSON,
    NPROC,
    OVERWRITE,
    PREDICTOR,
    check_memory,
    config_fields,
    config_from,
    given_flags,
    launch_processes,
    load_base,
    load_saved,
    load_task_from,
    print_lines,
    print_results,
    progress,
    with_config_flags,
)
from tunelab.tasks import TaskSource


@app.command()
def info(
    model: str = BASE_MODEL,
    memory: bool = Option(False, "--memory", help="Print the memory plan of every method instead (no weights "
                          "are loaded)."),
    nproc: int = NPROC, as_json: bool = JSON,
):
    """Model facts: architecture, layers, hidden size, vocabulary, parameter counts, device, dtype.

    Example: tunelab info --model gemma3-270m --memory
    """
    from tunelab.predictor import describe_artifact, is_artifact
    from tunelab.report.console import fact_lines

    if memory:
        from tunelab.memory import plans_for
        from tunelab.models import choose_device, model_config

        plans = plans_for(*model_config(model), processes=nproc, device=choose_device())
        lines = [f"{'fits' if p.fits else 'WILL NOT FIT'}: {p.line()}" for p in plans]
        return print_lines({"model": model, "plans": [p.describe() for p in plans]}, lines, as_json)
    facts = describe_artifact(load_saved(Path(model))) if is_artifact(model) else load_base(model).describe()
    print_lines(facts, fact_lines(facts), as_json)


@app.command()
@with_config_flags(TaskSource, configs.PromptConfig, configs.SearchConfig)
def prompt(
    shots: str = Option("0", help="K, or a comma list to compare (0 zero-shot, 1 one-shot, K few-shot)."),
    save: Optional[Path] = Option(None, help="Write the prompt predictor to this folder."),
    search: bool = Option(False, "--search", help="Try prompt configurations on held-out training examples."),
    sensitivity: bool = Option(False, "--sensitivity", help="Quality spread over shot sets, orders, templates, K."),
    model: str = BASE_MODEL, as_json: bool = JSON, *, given: dict,
):
    """Zero-, one- or few-shot prompting, scored by label log-likelihood on the test split.

    Example: tunelab prompt --task vader --shots 0,1,4
    """
    from tunelab.rungs.prompting import prompt_configs, run_prompts

    flags = config_fields(configs.PromptConfig, given)
    variants = prompt_configs("0" if search or sensitivity else shots, save=save, **flags)
    loaded_task = load_task_from(given)
    if search or sensitivity:
        search_config = config_from(configs.SearchConfig, given)
        return _prompt_search(variants[0], loaded_task, search_config, model, save, sensitivity, as_json)
    with progress() as bars:
        results = run_prompts(lambda: load_base(model), loaded_task, variants, save=save, on_progress=lambda config: (
            bars.bar(f"K={config.shots}: scoring {loaded_task.name}", len(loaded_task.test))))
    print_results(results, as_json, f"prompting on {loaded_task.name} ({len(loaded_task.test)} test examples)")
    for note in [loaded_task.split_note, *(f"K={r['shots']}: {n}" for r in results for n in r["notes"])]:
        if note:
            err_console.print(note)


def _prompt_search(base, loaded_task, config, model: str, save, sensitivity: bool, as_json: bool) -> None:
    """`prompt --search` (or --sensitivity): the prompt flags are the base configuration."""
    from tunelab.rungs.search import run_search, search_lines, sensitivity_lines
    from tunelab.rungs.search import sensitivity as measure_sensitivity

    if sensitivity:
        with err_console.status("scoring prompt variants"):
            rows = measure_sensitivity(load_base(model), loaded_task, base, config)
        return print_lines({"task": loaded_task.name, "sensitivity": rows}, sensitivity_lines(rows, loaded_task.name),
                            as_json)
    with progress() as bars:
        tried = bars.bar("configurations tried")
        result, test_result = run_search(lambda: load_base(model), loaded_task, base, config, save=save,
                                         on_config=lambda row: tried(1))
    print_lines(test_result, search_lines(result, test_result), as_json)


@app.command()
@with_config_flags(TaskSource, configs.TuneConfig)
def tune(
    out: Path = Option(..., "--out", help="Folder for the tuned predictor (and its checkpoints)."),
    resume: bool = Option(False, "--resume", help="Continue an interrupted run in --out."),
    nproc: int = NPROC, overwrite: bool = OVERWRITE, model: str = BASE_MODEL, as_json: bool = JSON, *, given: dict,
):
    """Fine-tune the base model (full or LoRA) on a task, evaluate it and save it.

    Example: tunelab tune --task vader --method lora --out runs/lora
    """
    from tunelab.rungs.tuning import finetune, run_summary, training_examples, training_notes

    config, loaded_task = config_from(configs.TuneConfig, given), load_task_from(given)
    check_memory(model, config.method, config.base_precision, nproc)  # before any process loads the model
    if nproc > 1:
        return launch_processes(nproc)
    base = load_base(model, config.base_precision)  # a bf16 LoRA base is loaded in bf16: half the memory
    with progress() as bars:
        predictor = finetune(base, loaded_task, config, out_dir=out, resume=resume, overwrite=overwrite,
                             on_step=bars.bar(f"{config.method}: training", training_examples(loaded_task, config)),
                             on_epoch_end=bars.note("epoch, validation loss"),
                             on_eval_progress=bars.bar("scoring the test split", len(loaded_task.test)))
    if predictor is None:  # a process other than rank 0 of a data-parallel job: rank 0 reports
        return
    summary = run_summary(predictor, out)
    print_results([summary], as_json, f"{config.method} fine-tuning on {loaded_task.name}, saved to {out}")
    if not as_json:
        for line in training_notes(summary):
            typer.echo(line)


@app.command()
@with_config_flags(TaskSource, configs.BaselineConfig)
def baseline(
    out: Path = Option(..., "--out", help="Folder for the baseline predictor."),
    overwrite: bool = OVERWRITE, as_json: bool = JSON, *, given: dict,
):
    """A classical baseline (TF-IDF or frozen embeddings + a linear model), evaluated and saved as a predictor.

    Example: tunelab baseline --task vader --method tfidf --out runs/tfidf
    """
    from tunelab.rungs.baseline import fit_baseline, summary_lines

    config, loaded_task = config_from(configs.BaselineConfig, given), load_task_from(given)
    quiet_transformers()
    with err_console.status(f"fitting the {config.method} baseline"):
        predictor = fit_baseline(loaded_task, config, out_dir=out, overwrite=overwrite)
    print_results([predictor.meta["metrics"]], as_json, f"{config.method} baseline on {loaded_task.name}")
    if not as_json:
        err_console.print("\n".join(summary_lines(predictor, out)), highlight=False, markup=False)


@app.command()
@with_config_flags(TaskSource, configs.ProbeConfig)
def probe(
    out: Path = Option(..., "--out", help="Folder for the probe predictor."),
    model: str = BASE_MODEL, overwrite: bool = OVERWRITE, as_json: bool = JSON, *, given: dict,
):
    """A linear head on the frozen base model's pooled hidden states (layer and pooling chosen on validation).

    Example: tunelab probe --task sotu-party --out runs/probe
    """
    from tunelab.rungs.probe import fit_probe, summary_lines

    config, loaded_task = config_from(configs.ProbeConfig, given), load_task_from(given)
    base = load_base(model)
    with progress() as bars:
        predictor = fit_probe(base, loaded_task, config, out_dir=out, overwrite=overwrite,
                              on_progress=bars.bar("reading the training texts", len(loaded_task.train)))
    print_results([predictor.meta["metrics"]], as_json, f"probe on {loaded_task.name}")
    if not as_json:
        err_console.print("\n".join(summary_lines(predictor, out)), highlight=False, markup=False)




@app.command()
@with_config_flags(TaskSource, configs.DistillConfig)
def distill(
    teacher: Path = Option(..., "--teacher", help="A saved tunelab predictor folder (the teacher)."),
    out: Path = Option(..., "--out", help="Folder for the student predictor."),
    transfer: Optional[Path] = Option(None, help="Unlabeled texts for the teacher to label (lines, JSONL, CSV)."),
    nproc: int = NPROC, as_json: bool = JSON, *, given: dict,
):
    """Distil a teacher into a smaller, faster student; report how much faster and how much worse.

    Example: tunelab distill --teacher runs/lora --task vader --out runs/student
    """
    from tunelab.rungs.distill import distill as run_distill
    from tunelab.rungs.distill import read_transfer_texts, summary_lines

    config, loaded_task = config_from(configs.DistillConfig, given), load_task_from(given)
    if nproc > 1:
        return launch_processes(nproc)
    transfer_texts = read_transfer_texts(transfer, loaded_task.text_fields) if transfer is not None else None
    teacher_predictor = load_saved(teacher)
    with progress() as bars:
        _, report = run_distill(teacher_predictor, loaded_task, config, out_dir=out, transfer_texts=transfer_texts,
                                teacher_name=str(teacher), on_label_progress=bars.bar("teacher labels transfer set"),
                                on_step=bars.bar("student learns"),
                                on_eval_progress=bars.bar("scoring teacher and student", 2 * len(loaded_task.test)))
    if report is not None:  # None in the processes other than rank 0 of a data-parallel job
        print_lines(report, summary_lines(report, out), as_json)




@app.command()
@with_config_flags(TaskSource, configs.BiasConfig)
def bias(model: Path = PREDICTOR, as_json: bool = JSON, *, given: dict):
    """Quality per data slice (fairlearn) and counterfactual name probes, with a verdict.

    Example: tunelab bias --model runs/lora --task vader
    """
    from tunelab.measure.bias import bias_report, check_inputs, summary_lines

    config, loaded_task = config_from(configs.BiasConfig, given), load_task_from(given)
    check_inputs(loaded_task, config)  # a bad slice field or probe file fails before the model loads
    predictor = load_saved(model)
    with err_console.status("scoring slices and probes"):
        report = bias_report(predictor, loaded_task, config)
    print_lines(report, summary_lines(report), as_json)


@app.command()
@with_config_flags(TaskSource, configs.LadderConfig)
def ladder(
    out: Path = Option(..., "--out", help="Run folder: one subfolder per rung, plus the reports."),
    model: str = BASE_MODEL,
    models: Optional[str] = Option(None, "--models", help="Comma list of base models (e.g. smollm2,gemma3-270m): "
                                   "every LLM rung on each, the baselines once, one report; replaces --model."),
    as_json: bool = JSON, *, given: dict,
):
    """Run every rung on one task; write report.html, report.md and report.json; name the cheapest good rung.

    Example: tunelab ladder --quick --models smollm2,gemma3-270m --out runs/models
    """
    from tunelab.ladder import ladder_task, run
    from tunelab.ladder.axis import check_labels, run_models
    from tunelab.models import model_label
    from tunelab.report.console import heartbeat
    from tunelab.report.ladder import summary_lines

    config = config_from(configs.LadderConfig, given)
    specs = [spec.strip() for spec in models.split(",") if spec.strip()] if models is not None else None
    if specs is not None:
        check_labels([model_label(spec) for spec in specs])
    loaded_task = ladder_task(config_from(TaskSource, given), config)
    now = {"step": "checks and probes", "since": time.monotonic(), "started": time.monotonic(), "eta": None}

    def on_plan(lines):
        err_console.print("\n".join(lines), highlight=False, markup=False)

    def on_estimate(seconds):  # a model-axis run plans each model's ladder as it starts
        now["eta"] = time.monotonic() + seconds

    def on_step(rung, state):
        now.update(step=rung, since=time.monotonic())
        err_console.print(f"ladder: {rung} {'started' if state == 'start' else state}", highlight=False)

    def on_model(label):
        now.update(step=f"loading {label}", since=time.monotonic(), eta=None)
        err_console.print(f"ladder on {label}", highlight=False)

    def describe():  # a line every ~30 s where output is not a terminal (a CI log, `make run | tee`)
        left = f", about {max(0.0, now['eta'] - time.monotonic()):.0f} s left by the plan" if now["eta"] else ""
        return (f"ladder: {now['step']} running for {time.monotonic() - now['since']:.0f} s, "
                f"{time.monotonic() - now['started']:.0f} s elapsed{left}")

    with heartbeat(err_console, describe):
        if specs is None:
            base = load_base(model)
            report = run(base, loaded_task, config, out, on_step=on_step, on_plan=on_plan, on_estimate=on_estimate)
        else:  # each model is loaded as its run starts
            report = run_models({model_label(spec): lambda spec=spec: load_base(spec) for spec in specs},
                                loaded_task, config, out, on_plan=on_plan, on_step=on_step, on_estimate=on_estimate,
                                on_model=on_model)
    print_lines(report, summary_lines(report, out), as_json)


@app.command("eval")
@with_config_flags(TaskSource)
def eval_command(
    model: Path = PREDICTOR, batch_size: Optional[int] = Option(None, help="Examples per forward pass."),
    as_json: bool = JSON, *, given: dict,
):
    """Evaluate any saved predictor on a task's test split.

    Example: tunelab eval --model runs/lora --task vader --json
    """
    from tunelab.measure.evaluate import evaluate
    from tunelab.predictor import check_fits_task

    loaded_task = load_task_from(given)
    predictor = load_saved(model)
    check_fits_task(predictor, loaded_task, str(model))
    with progress() as bars:
        result = evaluate(predictor, loaded_task, **given_flags(batch_size=batch_size),
                          on_progress=bars.bar(f"scoring {loaded_task.name}", len(loaded_task.test)))
    print_results([result], as_json, f"{model} on {loaded_task.name}")


if __name__ == "__main__":
    app()
