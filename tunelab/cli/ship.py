"""The commands that ship a rung: calibrate (temperature scaling; Platt scaling per label), cascade (fast model
first, strong model for the rest) and export (ONNX, optionally int8, gated on parity)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from typer import Argument, Option

from tunelab.cli.app import app, quiet_transformers
from tunelab.cli.flags import JSON, OVERWRITE, load_saved, load_task_from, print_lines, with_config_flags
from tunelab.tasks import TaskSource

VALIDATION = Option(None, "--validation", help="Labelled examples no model trained on (JSONL or CSV); default: "
                                               "the held-out validation split of a fine-tuned member.")


@app.command()
@with_config_flags(TaskSource)
def calibrate(
    model: Path = Option(..., "--model", help="A saved classifier or multi-label predictor (any rung)."),
    out: Path = Option(..., "--out", help="Folder for the calibrated predictor."),
    validation: Optional[Path] = VALIDATION, overwrite: bool = OVERWRITE, as_json: bool = JSON, *, given: dict,
):
    """Temperature scaling (several labels: Platt scaling per label) fitted on held-out examples; ECE before and
    after, with intervals.

    Example: tunelab calibrate --model runs/lora --task vader --out runs/lora-calibrated
    """
    from tunelab.ship.calibration import calibrate as fit
    from tunelab.ship.calibration import calibration_report, held_out_examples

    task = load_task_from(given)
    examples, source = held_out_examples(task, validation, [model])
    calibrated = fit(load_saved(model), examples, task, source=source)
    report = calibration_report(calibrated, task, out, overwrite=overwrite)
    print_lines(report, report["lines"], as_json)


@app.command()
@with_config_flags(TaskSource)
def cascade(
    fast: Path = Option(..., "--fast", help="The fast predictor (answers when sure enough)."),
    strong: Path = Option(..., "--strong", help="The strong predictor (answers the rest)."),
    out: Path = Option(..., "--out", help="Folder for the cascade (it names both members)."),
    target_quality: Optional[float] = Option(None, help="Validation quality to reach (default: the strong one's)."),
    max_escalated: Optional[float] = Option(None, help="Escalate at most this share instead."),
    validation: Optional[Path] = VALIDATION, overwrite: bool = OVERWRITE, as_json: bool = JSON, *, given: dict,
):
    """Fast model first, strong model for what it is unsure of; the threshold chosen on held-out examples.

    Example: tunelab cascade --fast runs/student --strong runs/lora --task vader --out runs/cascade
    """
    from tunelab.ship.calibration import held_out_examples
    from tunelab.ship.cascade import build_cascade, cascade_report

    quiet_transformers()
    task = load_task_from(given)
    examples, source = held_out_examples(task, validation, [strong, fast])
    built = build_cascade(fast, strong, task, examples, source=source, target_quality=target_quality,
                          max_escalated=max_escalated, out_dir=out)
    report = cascade_report(built, task, out, overwrite=overwrite)
    print_lines(report, report["lines"], as_json)


@app.command()
@with_config_flags(TaskSource)
def export(
    model: Path = Argument(..., help="A saved encoder student (tunelab distill --student minilm) or embed "
                           "baseline (tunelab baseline --method embed)."),
    out: Path = Option(..., "--out", help="Folder for the exported predictor."),
    format: str = Option("onnx", "--format", help="onnx (the one format)."),
    quantize: Optional[str] = Option(None, "--quantize", help="int8: 8-bit weights (onnxruntime dynamic)."),
    overwrite: bool = OVERWRITE, as_json: bool = JSON, *, given: dict,
):
    """Export to ONNX (int8 with --quantize int8); refused unless it predicts what the torch predictor does on the
    task's test texts.

    Example: tunelab export runs/student --task vader --out runs/student-onnx
    """
    from tunelab.errors import ConfigError
    from tunelab.ship.export import export_lines, export_onnx

    if format != "onnx":
        raise ConfigError(f"--format must be onnx, got {format!r}")
    quiet_transformers()
    task = load_task_from(given)
    texts, gold = [e.text for e in task.test], [e.label for e in task.test]
    facts = export_onnx(model, out, texts, gold_labels=gold, quantize=quantize, overwrite=overwrite)
    print_lines(facts, export_lines(facts, out), as_json)
