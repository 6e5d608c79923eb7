"""Helpers shared by the tests that drive the `tunelab` command."""

from pathlib import Path

from typer.testing import CliRunner

from tunelab.cli import app

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunelab: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def task_args():
    return ["--train", DATA / "words.jsonl", "--test", DATA / "words_test.csv"]
