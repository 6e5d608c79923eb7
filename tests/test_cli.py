import dataclasses
import json
import re
import subprocess
import sys

import pytest
import typer.main
from helpers import DATA, one_error_line, run_cli, task_args

from tunelab.cli import app
from tunelab.generation.config import ExpandConfig
from tunelab.generation.tuning import GeneratorTuneConfig
from tunelab.ladder import LadderConfig
from tunelab.measure.bias import BiasConfig
from tunelab.offline.bulk import BulkConfig
from tunelab.offline.serve import ServeConfig
from tunelab.rungs.baseline import BaselineConfig
from tunelab.rungs.distill import DistillConfig
from tunelab.rungs.prompting import PromptConfig
from tunelab.rungs.tuning import TuneConfig


@pytest.fixture
def model_dir(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "tiny")
    return str(tmp_path / "tiny")


def _words(text: str) -> str:
    """Help text without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer may carry its own click)
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_command_has_its_own_help():
    commands = dict(_commands(typer.main.get_command(app)))
    assert {" ".join(name) for name in commands} >= {"info", "prompt", "tune", "distill", "predict", "serve", "bias",
                                                     "ladder", "eval", "store info", "store export"}
    for name, command in commands.items():
        assert command.help, f"{name} has no help text"
        result = run_cli(*name, "--help")
        assert result.exit_code == 0, result.output
        shown = _words(result.output)
        assert _words(command.help.splitlines()[0]) in shown, name  # this command's own summary, not another's
        for param in command.params:
            if param.help:
                assert param.opts[0] in shown, (name, param.opts[0])


@pytest.mark.parametrize("command, config", [("prompt", PromptConfig), ("tune", TuneConfig),
                                             ("distill", DistillConfig), ("predict", BulkConfig),
                                             ("bias", BiasConfig), ("ladder", LadderConfig),
                                             ("serve", ServeConfig), ("baseline", BaselineConfig),
                                             ("expand", ExpandConfig), ("expand-tune", GeneratorTuneConfig)])
def test_every_config_field_has_a_flag(command, config):
    params = typer.main.get_command(app).commands[command].params
    flags = {opt for param in params for opt in param.opts}
    for field in dataclasses.fields(config):
        assert "--" + field.name.replace("_", "-") in flags, field.name


def test_a_flag_shows_its_fields_help_and_default_and_reaches_the_config():
    shown = _words(run_cli("tune", "--help").output)
    assert "LoRA rank. [default: 8]" in shown and "--merge" in shown and "--no-merge" in shown
    assert "Built-in task:" in shown  # the task flags come from TaskSource
    shown = _words(run_cli("ladder", "--help").output)
    assert "[default: 0,1,2,4,8]" in shown  # a tuple field is a comma list on the command line
    line = one_error_line(run_cli("ladder", "--out", "x", "--quick", "--curve", "1,x"))
    assert "--curve must be an integer or a comma list" in line


def test_the_command_line_is_built_without_importing_torch():
    """The flags come from config.py (standard library only): `tunelab --help` must not wait ~8 s for torch."""
    code = ("import sys, typer.main; from tunelab.cli import app; typer.main.get_command(app); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'sklearn') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_tune_json_then_eval_and_info_on_the_result(model_dir, tmp_path):
    out = tmp_path / "tuned"
    result = run_cli("tune", *task_args(), "--model", model_dir, "--method", "lora", "--epochs", "1",
                  "--batch-size", "4", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    tuned = json.loads(result.stdout)
    for key in ("accuracy", "macro_f1", "params_total", "params_trainable", "train_seconds", "peak_rss_mb",
                "epochs_run", "examples_per_s"):
        assert key in tuned, key
    assert tuned["rung"] == "tune" and tuned["epochs_run"] == 1 and 0 < tuned["params_trainable"]
    evaluated = json.loads(run_cli("eval", "--model", out, *task_args(), "--json").stdout)
    assert evaluated["accuracy"] == tuned["accuracy"] and evaluated["params_total"] == tuned["params_total"]
    facts = json.loads(run_cli("info", "--model", out, "--json").stdout)
    assert facts["rung"] == "tune" and facts["params_trainable"] == tuned["params_trainable"]
    line = one_error_line(run_cli("tune", *task_args(), "--model", model_dir, "--out", out))
    assert "holds a tunelab run" in line


def test_tune_bad_flags_are_one_line(model_dir, tmp_path):
    line = one_error_line(run_cli("tune", *task_args(), "--model", model_dir, "--out", tmp_path / "x",
                                "--method", "half", "--lora-r", "0"))
    assert "--method must be lora or full" in line and "--lora-r must be >= 1" in line


def test_info_json_reports_parameter_counts(model_dir, tiny_model):
    result = run_cli("info", "--model", model_dir, "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["params_total"] == tiny_model.params_total and facts["layers"] == 2
    assert facts["architecture"] == "LlamaForCausalLM" and facts["dtype"] == "float32"


def test_prompt_compares_shot_counts_and_saves_a_predictor_that_eval_reproduces(model_dir, tmp_path):
    result = run_cli("prompt", *task_args(), "--model", model_dir, "--shots", "0,2", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["shots"] for r in rows] == [0, 2]
    for key in ("task", "rung", "n_test", "accuracy", "macro_f1", "params_total", "params_trainable",
                "examples_per_s"):
        assert key in rows[0]
    assert rows[0]["n_test"] == 4 and rows[0]["params_trainable"] == 0

    saved = tmp_path / "saved"
    result = run_cli("prompt", *task_args(), "--model", model_dir, "--shots", "2", "--calibrate", "--save", saved,
                  "--json")
    assert result.exit_code == 0, result.output
    prompted = json.loads(result.stdout)
    result = run_cli("eval", "--model", saved, *task_args(), "--json")
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["accuracy"] == prompted["accuracy"] and evaluated["fingerprint"] == prompted["fingerprint"]
    assert json.loads((saved / "tunelab.json").read_text())["config"]["calibrate"] is True

    result = run_cli("info", "--model", saved, "--json")
    assert json.loads(result.stdout)["rung"] == "prompt"


def test_prompt_table_output(model_dir):
    result = run_cli("prompt", *task_args(), "--model", model_dir, "--shots", "1")
    assert result.exit_code == 0, result.output
    assert "acc" in result.stdout and "trainable" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--train", "missing.jsonl"], "missing.jsonl: file not found"),
    (["--train", DATA / "words.jsonl", "--shots", "50"], "--shots 50 is larger than the training set"),
    (["--train", DATA / "words.jsonl", "--shots", "two"], "--shots must be an integer"),
    (["--train", DATA / "words.jsonl", "--template", "{label} {text}"], "--template must end with {label}"),
    (["--train", DATA / "words.jsonl", "--label-field", "tag"], 'words.jsonl:1: field "tag" is missing'),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--train", DATA / "words.jsonl", "--shots", "0,1", "--save", "x"], "--save needs a single --shots"),
])
def test_prompt_bad_input_is_one_line_and_exit_2(model_dir, args, message):
    line = one_error_line(run_cli("prompt", "--model", model_dir, *args))
    assert message in line


def test_test_label_unknown_to_training(model_dir, tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text('{"text": "good", "label": "positive"}\n{"text": "meh", "label": "neutral"}\n')
    line = one_error_line(run_cli("prompt", "--model", model_dir, "--train", DATA / "words.jsonl", "--test", test))
    assert "test.jsonl:2:" in line and "'neutral' does not occur in the training set" in line


def test_single_label_training_file(model_dir, tmp_path):
    train = tmp_path / "one.jsonl"
    train.write_text('{"text": "good", "label": "positive"}\n{"text": "nice", "label": "positive"}\n')
    assert "only one label" in one_error_line(run_cli("prompt", "--model", model_dir, "--train", train))


def test_eval_refuses_a_folder_that_is_not_a_predictor(tmp_path):
    line = one_error_line(run_cli("eval", "--model", tmp_path, *task_args()))
    assert "not a tunelab predictor folder" in line


def test_bad_model_spec_is_one_line(tmp_path):
    assert "not a model folder" in one_error_line(run_cli("info", "--model", tmp_path))


def test_info_memory_plans_every_method_without_loading_weights(model_dir):
    result = run_cli("info", "--model", model_dir, "--memory", "--json")
    assert result.exit_code == 0, result.output
    plans = json.loads(result.stdout)["plans"]
    assert [(p["method"], p["base_precision"]) for p in plans] == [
        ("score", "fp32"), ("probe", "fp32"), ("lora", "fp32"), ("lora", "bf16"), ("full", "fp32")]
    by = {(p["method"], p["base_precision"]): p for p in plans}
    assert by["full", "fp32"]["parts"]["optimizer"] > 0 == by["score", "fp32"]["parts"]["optimizer"]
    assert by["lora", "bf16"]["parts"]["weights"] * 2 == by["lora", "fp32"]["parts"]["weights"]  # loaded in bf16
    assert by["lora", "bf16"]["parts"]["training copy"] == by["lora", "fp32"]["parts"]["training copy"] == 0
    assert by["full", "fp32"]["parts"]["training copy"] > 0  # full fine-tuning trains a copy; LoRA shares the base
    assert by["lora", "fp32"]["parts"]["merged copy (after training)"] > 0
    assert all(p["fits"] == (p["total"] <= 0.9 * p["room"]) for p in plans)


def test_tune_refuses_a_run_that_will_not_fit_or_more_processes_than_cores(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_MEMORY_LIMIT_MB", "1")
    line = one_error_line(run_cli("tune", *task_args(), "--model", model_dir, "--method", "full",
                                  "--out", tmp_path / "out"))
    assert re.search(r"will not fit: full .* needs [0-9.]+ GiB .* may hold [0-9.]+ GiB \(TUNELAB_MEMORY_LIMIT_MB", line)
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv("TUNELAB_MEMORY_LIMIT_MB")
    line = one_error_line(run_cli("tune", *task_args(), "--model", model_dir, "--nproc", "999",
                                  "--out", tmp_path / "out"))
    assert "--nproc 999: this process may run on" in line and not (tmp_path / "out").exists()


def test_every_command_shows_one_example_whose_flags_it_takes_and_the_list_follows_the_ladder():
    from tunelab.cli.app import COMMAND_ORDER

    commands = dict(_commands(typer.main.get_command(app)))
    for name, command in commands.items():
        examples = [line.strip() for line in command.help.splitlines() if line.strip().startswith("Example:")]
        assert len(examples) == 1, name
        words = examples[0].removeprefix("Example:").split()
        assert words[: 1 + len(name)] == ["tunelab", *name], (name, examples[0])
        flags = {opt for param in command.params for opt in param.opts}
        assert {w for w in words if w.startswith("--")} <= flags, (name, examples[0])
    listed = [line.split()[1] for line in run_cli("--help").output.splitlines()
              if line.startswith("│ ") and len(line.split()) > 1 and line.split()[1] in COMMAND_ORDER]
    assert listed == list(COMMAND_ORDER)


def test_output_that_is_not_a_terminal_gets_plain_lines_with_elapsed_time_and_an_eta():
    import io
    import time as clock

    from rich.console import Console

    from tunelab.report.console import PlainProgress, heartbeat, progress_bars

    log = io.StringIO()
    console = Console(file=log, force_terminal=False, width=200)
    now = [0.0]
    bars = PlainProgress(console, every_s=30, clock=lambda: now[0])
    step = bars.bar("scoring the test split", 400)
    for seconds in (1, 10, 31, 40, 100):  # one line at the start, one past 30 s, one at the end
        now[0] = seconds
        step(50 if seconds < 100 else 200)
    lines = log.getvalue().splitlines()
    assert lines == ["scoring the test split: started (400 to do)",
                     "scoring the test split: 150/400, 30 s elapsed, ETA 50 s",
                     "scoring the test split: done, 400 in 99 s"]
    with progress_bars(console) as chosen:
        assert isinstance(chosen, PlainProgress)
    beats = io.StringIO()
    with heartbeat(Console(file=beats, force_terminal=False), lambda: "ladder: lora running", every_s=0.05):
        clock.sleep(0.3)
    assert beats.getvalue().count("ladder: lora running") >= 2
