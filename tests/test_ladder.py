import shutil
import subprocess

import pytest
from helpers import one_error_line, run_cli

from tunelab.errors import ConfigError
from tunelab.ladder import LadderConfig, run

TINY = dict(rungs=("tfidf", "probe", "zero", "one", "few", "lora", "full", "distill", "cascade"), curve=(0, 1, 2),
            epochs=1,
            student="pruned:1", target_quality=0.0)


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
    assert len(facts) == 5 and all(f["holds"] for f in facts)
    cascade = report["rungs"]["cascade"]  # the student first, the full teacher for the rest
    assert cascade["metrics"]["params_total"] == (report["rungs"]["distill"]["metrics"]["params_total"]
                                                  + report["rungs"]["full"]["metrics"]["params_total"])
    assert 0.0 <= cascade["metrics"]["escalated_share"] <= 1.0 and "validation split" in cascade["fitted_on"]
    assert report["rungs"]["probe"]["metrics"]["params_trainable"] < 100 and report["rungs_left_out"] == {}
    assert report["rungs"]["zero"]["metrics"]["params_trainable"] == 0
    assert report["rungs"]["full"]["metrics"]["params_total"] == tiny_model.params_total
    assert report["rungs"]["distill"]["metrics"]["params_total"] < tiny_model.params_total
    assert [p["shots"] for p in report["few_shot_curve"]] == [0, 1, 2, 4]
    few = report["rungs"]["few"]  # the searched prompt: never below the zero-shot prompt on validation
    assert few["search_rows"][0]["config"] == "K=0" and few["validation"] >= few["search_rows"][0]["validation"]
    assert few["searched"] in (out / "report.md").read_text()
    assert report["sensitivity"] and all(r["min"] <= r["median"] <= r["max"] for r in report["sensitivity"])
    assert report["choice"]["cheapest_to_build"] == "tfidf"  # target 0.0: every interval reaches it
    assert report["choice"]["status"] == {rung: "reaches" for rung in TINY["rungs"]}
    for rung in TINY["rungs"]:
        metrics = report["rungs"][rung]["metrics"]
        low, high = metrics["intervals"]["accuracy"]
        assert low <= metrics["accuracy"] <= high and len(report["rungs"][rung]["test_outputs"]) == metrics["n_test"]
        probes = report["rungs"][rung]["bias"]["counterfactual"]
        low, high = probes["gap_interval"]
        expected = "pass" if high <= probes["threshold"] else "fail" if low > probes["threshold"] else "unclear"
        assert probes["verdict"] == expected and low <= probes["gap"] <= high
        assert probes["largest_flips"][0]["difference"] >= max(f["difference"] for f in probes["largest_flips"])
    for name in ("report.json", "report.md", "report.html"):
        assert (out / name).is_file()
    assert "| lora |" in (out / "report.md").read_text()
    for rung in ("probe", "zero", "few", "lora", "full"):  # each LLM rung planned; its peak its own, not the process's
        assert report["rungs"][rung]["memory_plan_mb"] > 0 and report["rungs"][rung]["peak_is_the_rungs_own"]
    assert report["rungs"]["tfidf"]["peak_rss_mb"] < max(r["peak_rss_mb"] for r in report["rungs"].values())


def test_an_interrupted_ladder_resumes_from_finished_steps(ladder_run, tiny_model, tiny_task):
    report, _, out = ladder_run
    (out / "distill" / "result.json").unlink()
    steps = []
    again = run(tiny_model, tiny_task, LadderConfig(**TINY), out, on_step=lambda r, s: steps.append((r, s)))
    assert [r for r, s in steps if s == "skipped"] == ["tfidf", "probe", "zero", "one", "few", "lora", "full",
                                                        "cascade"]
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
    assert '<table id="rungs" class="sortable">' in dom
    rungs_table = dom.split('<table id="rungs" class="sortable">', 1)[1].split("</table>", 1)[0]
    assert rungs_table.count("<tr>") == len(TINY["rungs"]) + 1  # other tables (faster rungs) vary with the timings
    figures = ("quality-vs-params", "quality-vs-speed", "quality-vs-build", "per-slice", "few-shot-curve",
               "prompt-sensitivity", "reliability", "cascade-frontier")
    for name in figures:  # plotly drew each figure: its div now holds the SVG the script made
        div = dom.split(f'id="plot-{name}"', 1)[1].split("</figure>", 1)[0]
        assert 'class="main-svg"' in div, f"{name} did not render"
    assert dom.count('class="card"') == len(TINY["rungs"]) and "Recommended: tfidf" in dom
    console_errors = [line for line in done.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert not console_errors, console_errors
    page = (out / "report.html").read_text()
    assert "<script src" not in page and "<link" not in page  # one file: nothing fetched from anywhere


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


def test_label_scarce_keeps_n_balanced_labels_and_moves_the_rest_to_unlabeled(tiny_task):
    from tunelab.ladder import label_scarce

    scarce = label_scarce(tiny_task, 4, seed=0)
    assert len(scarce.train) == 4 and sorted(e.label for e in scarce.train) == sorted(tiny_task.labels * 2)
    assert len(scarce.unlabeled) == len(tiny_task.train) - 4 + len(tiny_task.unlabeled)
    assert {e.text for e in scarce.train}.isdisjoint(scarce.unlabeled[: len(tiny_task.train) - 4])
    assert scarce.test == tiny_task.test and "label-scarce: 4 of" in scarce.split_note


def _result(outputs, low, high, speed=1.0):
    accuracy = sum(o == "positive" for o in outputs) / len(outputs)
    return {"metrics": {"accuracy": accuracy, "intervals": {"accuracy": [low, high]}, "examples_per_s": speed},
            "test_outputs": outputs}


def test_the_recommendation_never_names_a_rung_below_the_target_when_another_reaches_it():
    from tunelab.ladder import recommend
    from tunelab.tasks import Example, make_task

    test = [Example(f"t{i}", "positive") for i in range(40)]
    task = make_task("t", "classification", test + [Example("n", "negative")], test)
    results = {"tfidf": _result(["negative"] * 40, 0.0, 0.0),  # below
               "zero": _result(["positive"] * 36 + ["negative"] * 4, 0.8, 0.97),  # holds 0.9: compatible
               "lora": _result(["positive"] * 40, 1.0, 1.0, speed=5.0)}  # reaches
    choice = recommend(results, task, 0.9)
    assert choice["status"] == {"tfidf": "below", "zero": "compatible", "lora": "reaches"}
    assert choice["cheapest_to_build"] == "lora" and choice["basis"] == "reaches"
    del results["lora"]
    choice = recommend(results, task, 0.9)  # nothing reaches: the lowest compatible rung, said so
    assert choice["cheapest_to_build"] == "zero" and choice["basis"] == "compatible"
    # No target: the lowest rung the test set cannot tell apart from the best.
    results = {"tfidf": _result(["positive"] * 39 + ["negative"], 0.9, 1.0),
               "lora": _result(["positive"] * 40, 1.0, 1.0)}
    choice = recommend(results, task, None)
    assert choice["cheapest_to_build"] == "tfidf" and choice["indistinguishable"] == ["lora"]


def test_the_recommendation_names_every_faster_compatible_rung_with_its_trade_off():
    from tunelab.ladder import recommend
    from tunelab.ladder.choice import examples_to_decide
    from tunelab.report.ladder import trade_off_table
    from tunelab.tasks import Example, make_task

    test = [Example(f"t{i}", "positive") for i in range(40)]
    task = make_task("t", "classification", test + [Example("n", "negative")], test)
    results = {"embed": _result(["positive"] * 37 + ["negative"] * 3, 0.85, 0.99, speed=500.0),  # compatible, fast
               "zero": _result(["positive"] * 20 + ["negative"] * 20, 0.3, 0.6, speed=300.0),  # below: never named
               "lora": _result(["positive"] * 40, 0.95, 1.0, speed=10.0),  # reaches: the recommendation
               "distill": _result(["positive"] * 39 + ["negative"], 0.92, 1.0, speed=200.0)}  # reaches, faster
    choice = recommend(results, task, 0.9)
    assert choice["cheapest_to_build"] == "lora"
    faster = choice["faster_compatible"]
    assert list(faster) == ["embed", "distill"]  # by speed ratio; zero is below the target
    assert faster["embed"]["speed_ratio"] == 50.0 and faster["distill"]["speed_ratio"] == 20.0
    assert faster["embed"]["difference"] == pytest.approx(37 / 40 - 1.0)
    table = trade_off_table(choice, len(test))  # one row per faster rung, fastest first
    assert len(table) == 6 and table[4].startswith("| embed | 50.0x | 500.0 | -0.075 [")
    assert table[5].startswith("| distill | 20.0x")
    # intervals narrow as 1/sqrt(n): halving the half-width takes four times the examples
    assert examples_to_decide(100, [0.0, 0.2], 0.05) == 400 and examples_to_decide(100, [0.0, 0.2], 0.0) is None


def test_the_plan_splits_a_budget_and_bounds_the_optional_sections(tiny_task):
    from tunelab.ladder.plan import FLOOR_S, SLACK, make_plan

    probes = {"score_s_per_token": 0.001, "train": {"lora": 0.1}, "precision": "fp32"}
    tokens = {"train": 400, "test": 100, "probe": 300, "probe_texts": 30, "unlabeled": 0}
    rungs = ("zero", "lora")
    unbounded = make_plan(tiny_task, LadderConfig(rungs=rungs), probes, tokens, curve_ks=[2, 4],
                          sensitivity_evaluations=6, n_validation=5)
    sections = {s["name"]: s for s in unbounded.sections}
    curve = sections["few-shot curve"]
    assert curve["estimate_s"] == pytest.approx(2 * 100 * 0.001)  # two K values, each the test split's tokens
    assert curve["budget_s"] == SLACK * curve["estimate_s"] + FLOOR_S  # bounded even without --budget-s
    assert sections["zero"]["estimate_s"] == pytest.approx((100 + 300) * 0.001)  # test split and probes, by tokens
    assert all(s["budget_s"] is None for s in unbounded.sections if s["name"] in rungs)
    whole = sum(s["whole_s"] for s in unbounded.sections)
    shortenable = sum(s["shortenable_s"] for s in unbounded.sections)
    assert sections["lora"]["shortenable_s"] > 0 and sections["zero"]["shortenable_s"] == 0
    lora = sections["lora"]["shortenable_s"]
    shared = make_plan(tiny_task, LadderConfig(rungs=rungs, budget_s=whole + lora / 2), probes, tokens, [2, 4], 6, 5)
    budgets = {s["name"]: s["budget_s"] for s in shared.sections}
    assert budgets["zero"] is None  # scoring the test split is never cut
    assert budgets["lora"] == pytest.approx(lora / 2)  # the rungs' training first ...
    assert budgets["few-shot curve"] == budgets["prompt sensitivity"] == 0.0  # ... the optional sections after
    assert shared.estimate_s == pytest.approx(whole + lora / 2)  # the ETA is the budget when it binds
    ample = make_plan(tiny_task, LadderConfig(rungs=rungs, budget_s=whole + lora + (shortenable - lora) / 2), probes,
                      tokens, [2, 4], 6, 5)
    assert ample.budget("lora") >= lora and ample.budget("few-shot curve") == pytest.approx(curve["shortenable_s"] / 2)
    starved = make_plan(tiny_task, LadderConfig(rungs=rungs, budget_s=whole / 2), probes, tokens, [2, 4], 6, 5)
    assert [s["budget_s"] for s in starved.sections if s["budget_s"] is not None] == [0.0, 0.0, 0.0]
    assert "total" in starved.lines()[-1] and "budget" in starved.lines()[-1]


def test_a_section_past_its_budget_is_cut_short_and_says_so(tiny_model, tiny_task, tmp_path):
    plans = []
    report = run(tiny_model, tiny_task, LadderConfig(rungs=("zero", "one"), curve=(0, 1, 2, 4), budget_s=0.001,
                                                     target_quality=0.0), tmp_path / "cut", on_plan=plans.append)
    assert plans and plans[0][0].startswith("plan (probed here")
    assert report["cut_short"]["few-shot curve"] == [2, 4]
    assert [p["shots"] for p in report["few_shot_curve"]] == [0, 1]
    assert report["cut_short"]["prompt sensitivity"]  # no K measured: the rungs used the whole budget
    markdown = (tmp_path / "cut" / "report.md").read_text()
    assert "Cut short by its budget: few-shot curve (K=2, 4 not measured)" in markdown
    assert {s["name"] for s in report["plan"]["sections"]} >= {"zero", "one", "few-shot curve", "prompt sensitivity"}


def test_a_ladder_budget_cuts_training_short_and_the_report_says_so(tiny_model, tiny_task, tmp_path):
    report = run(tiny_model, tiny_task, LadderConfig(rungs=("zero", "lora"), epochs=3, budget_s=0.001,
                                                     target_quality=0.0), tmp_path / "cut")
    cut = report["cut_short"]["lora"]
    assert cut["steps_run"] == 1 and cut["epoch"] == 1  # the first step always runs
    assert report["rungs"]["lora"]["metrics"]["accuracy"] is not None  # still measured on the whole test split
    assert 0 <= report["rungs"]["lora"]["padding"]["share"] < 1
    markdown = (tmp_path / "cut" / "report.md").read_text()
    assert "Cut short by its budget: lora (training stopped after 1 of" in markdown
    assert "Padding in the fine-tuning batches" in markdown


def test_the_model_axis_runs_each_llm_rung_per_model_and_tests_the_size_claim(tiny_model, word_tokenizer, tiny_task,
                                                                              tmp_path):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from tunelab.ladder.axis import run_models
    from tunelab.models import make_model

    torch.manual_seed(1)  # a larger Gemma 3 shape: sliding and global layers
    gemma = make_model(Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(word_tokenizer), hidden_size=48, intermediate_size=53, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], pad_token_id=1)),
        word_tokenizer, name="tiny-gemma3", device=torch.device("cpu"))
    assert gemma.params_total > tiny_model.params_total
    config = LadderConfig(rungs=("tfidf", "zero", "lora", "distill"), curve=(0,), epochs=1, student="pruned:1",
                          search_budget_s=0, target_quality=None)
    loaded = []
    report = run_models({"big": lambda: loaded.append("big") or gemma, "small": lambda: loaded.append("small")
                         or tiny_model}, tiny_task, config, tmp_path / "axis")
    assert loaded == ["big", "small"]  # one after the other, as each run starts
    assert list(report["rungs"]) == ["tfidf", "zero@small", "zero@big", "lora@small", "lora@big", "distill@small",
                                     "distill@big"]  # the baseline once; the smaller model first within a rung
    assert not (tmp_path / "axis" / "small" / "tfidf").exists()
    assert report["rungs"]["lora@big"]["metrics"]["params_total"] == gemma.params_total
    assert set(report["choice"]["status"]) == set(report["rungs"])  # the choice spans every (model, rung)
    claim = {row["rung"]: row for row in report["size_claim"]}
    assert list(claim) == ["zero", "lora", "distill"]
    for row in claim.values():
        low, high = row["interval"]
        assert low <= row["difference"] <= high
        assert row["verdict"] == ("holds" if low > 0 else "does not hold" if high < 0 else
                                  "cannot tell on this test set")
        big, small = report["rungs"][f"{row['rung']}@big"], report["rungs"][f"{row['rung']}@small"]
        assert row["difference"] == pytest.approx(big["metrics"]["accuracy"] - small["metrics"]["accuracy"])
    assert claim["zero"]["params_ratio"] == pytest.approx(gemma.params_total / tiny_model.params_total)
    markdown = (tmp_path / "axis" / "report.md").read_text()
    assert "Does a larger base model predict better?" in markdown and "| lora@big |" in markdown
    html = (tmp_path / "axis" / "report.html").read_text()
    assert "quality-by-model-size" in html and "size-claim" in html
    assert (tmp_path / "axis" / "big" / "report.json").is_file()


def test_the_model_axis_refuses_one_model_or_a_repeated_one():
    from tunelab.ladder.axis import check_labels

    for labels, message in ((["smollm2"], "two or more"), (["a", "a"], "twice"), (["a", "../b"], "cannot name")):
        with pytest.raises(ConfigError, match=message):
            check_labels(labels)
