import shutil
import subprocess

import pytest
from helpers import one_error_line, run_cli

from tunelab.errors import ConfigError
from tunelab.ladder import LadderConfig, run

TINY = dict(rungs=("zero", "one", "few", "lora", "full", "distill"), curve=(0, 1, 2), epochs=1, student="pruned:1",
            target_quality=0.0)


@pytest.fixture
def ladder_run(tiny_model, tiny_task, tmp_path):
    steps = []
    report = run(tiny_model, tiny_task, LadderConfig(**TINY), tmp_path / "run",
                 on_step=lambda rung, state: steps.append((rung, state)))
    return report, steps, tmp_path / "run"


def test_every_rung_runs_and_the_parameter_facts_hold(ladder_run, tiny_model):
    report, steps, out = ladder_run
    assert [r for r, state in steps if state == "done"] == list(TINY["rungs"])
    assert set(report["rungs"]) == set(TINY["rungs"])
    facts = report["parameter_facts"]
    assert len(facts) == 4 and all(f["holds"] for f in facts)
    assert report["rungs"]["zero"]["metrics"]["params_trainable"] == 0
    assert report["rungs"]["full"]["metrics"]["params_total"] == tiny_model.params_total
    assert report["rungs"]["distill"]["metrics"]["params_total"] < tiny_model.params_total
    assert [p["shots"] for p in report["few_shot_curve"]] == [0, 1, 2, 4]
    few = report["rungs"]["few"]  # the searched prompt: never below the zero-shot prompt on validation
    assert few["search_rows"][0]["config"] == "K=0" and few["validation"] >= few["search_rows"][0]["validation"]
    assert few["searched"] in (out / "report.md").read_text()
    assert report["sensitivity"] and all(r["min"] <= r["median"] <= r["max"] for r in report["sensitivity"])
    assert report["choice"]["cheapest_to_build"] == "zero"  # target 0.0: everything reaches it
    for rung in TINY["rungs"]:
        probes = report["rungs"][rung]["bias"]["counterfactual"]
        assert probes["verdict"] == ("pass" if probes["max_gap"] <= probes["threshold"] else "fail")
    for name in ("report.json", "report.md", "report.html"):
        assert (out / name).is_file()
    assert "| lora |" in (out / "report.md").read_text()


def test_an_interrupted_ladder_resumes_from_finished_steps(ladder_run, tiny_model, tiny_task):
    report, _, out = ladder_run
    (out / "distill" / "result.json").unlink()
    steps = []
    again = run(tiny_model, tiny_task, LadderConfig(**TINY), out, on_step=lambda r, s: steps.append((r, s)))
    assert [r for r, s in steps if s == "skipped"] == ["zero", "one", "few", "lora", "full"]
    assert [r for r, s in steps if s == "done"] == ["distill"]
    assert again["rungs"]["lora"] == report["rungs"]["lora"]


def test_report_html_loads_in_headless_chromium(ladder_run, tmp_path):
    _, _, out = ladder_run
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is needed (make test installs Debian's chromium)"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--dump-dom", (out / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    dom = done.stdout
    assert '<table id="rungs">' in dom and dom.count("<tr>") >= 7
    assert dom.count("data:image/png;base64,") == 5 and "id=\"prompt-sensitivity\"" in dom.replace("'", '"')
    console_errors = [line for line in done.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert not console_errors, console_errors
    assert "http://" not in (out / "report.html").read_text() and "https://" not in (out / "report.html").read_text()


@pytest.mark.parametrize("flags, message", [
    (dict(rungs=("zero", "huge")), "--rungs must name some of"),
    (dict(target_quality=1.5), "--target-quality must lie in the metric's range"),
])
def test_bad_ladder_configs(flags, message):
    with pytest.raises(ConfigError, match=message):
        LadderConfig(**flags)


def test_ladder_cli_refuses_bad_input_before_any_work(tmp_path):
    line = one_error_line(run_cli("ladder", "--task", "vader", "--rungs", "zero,giant", "--out", tmp_path / "x"))
    assert "--rungs must name some of" in line and not (tmp_path / "x").exists()
    line = one_error_line(run_cli("ladder", "--task", "vader", "--target-quality", "-0.5", "--out", tmp_path / "y"))
    assert "0..1 for accuracy" in line and not (tmp_path / "y").exists()
