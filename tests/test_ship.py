"""Shipping: temperature calibration, the fast-then-strong cascade, ONNX export gated on parity."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import run_cli, task_args

from tunelab.config import BaselineConfig, DistillConfig, PromptConfig
from tunelab.errors import ConfigError, ModelError
from tunelab.predictor import load_predictor, predict, save_predictor
from tunelab.rungs.baseline import fit_baseline
from tunelab.rungs.distill import distill
from tunelab.rungs.prompting import few_shot
from tunelab.ship.calibration import CalibratedPredictor, calibrate, fit_temperature, with_temperature
from tunelab.ship.cascade import CascadePredictor, build_cascade, choose_threshold
from tunelab.ship.export import export_lines, export_onnx, parity_figures


def test_a_temperature_never_changes_the_predicted_label_and_fits_overconfidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 3)) * 4
    gold = np.where(rng.random(400) < 0.6, logits.argmax(axis=1), rng.integers(0, 3, 400))  # 60%+ right
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    temperature = fit_temperature(probs, gold)
    assert temperature > 1.5  # overconfident scores are softened
    for t in (0.1, 0.7, temperature, 9.0):
        assert np.array_equal(with_temperature(probs, t).argmax(axis=1), probs.argmax(axis=1))
        assert np.allclose(with_temperature(probs, t).sum(axis=1), 1.0)


def test_calibrated_predictor_round_trips_and_refuses_too_few_examples(tiny_model, tiny_task, tmp_path):
    prompt = few_shot(tiny_model, tiny_task, PromptConfig())
    with pytest.raises(ConfigError, match="at least 10"):
        calibrate(prompt, list(tiny_task.train[:5]), tiny_task, source="test")
    calibrated = calibrate(prompt, list(tiny_task.train) * 2, tiny_task, source="the training words, twice")
    assert isinstance(calibrated, CalibratedPredictor) and calibrated.params_total == prompt.params_total
    save_predictor(calibrated, tmp_path / "c")
    loaded = load_predictor(tmp_path / "c")
    texts = [e.text for e in tiny_task.test]
    assert np.allclose(predict(loaded, texts).probs, predict(calibrated, texts).probs, atol=1e-6)
    assert predict(loaded, texts).labels == predict(prompt, texts).labels


def test_the_calibration_report_gives_the_ece_change_with_its_paired_interval(tiny_model, tiny_task, tmp_path):
    import re

    from tunelab.ship.calibration import calibration_report

    prompt = few_shot(tiny_model, tiny_task, PromptConfig())
    calibrated = calibrate(prompt, list(tiny_task.train) * 2, tiny_task, source="the training words, twice")
    report = calibration_report(calibrated, tiny_task, tmp_path / "c")
    before, after = report["test_ece_before"]["ece"], report["test_ece_after"]["ece"]
    change = next(line for line in report["lines"] if line.startswith("ECE after - before"))
    low, high = map(float, re.search(r"\[([-+.\d]+), ([-+.\d]+)\], paired", change).groups())
    assert f"{after - before:+.3f}" in change and low <= round(after - before, 3) <= high
    verdict = "lowered" if high < 0 else "raised" if low > 0 else "no clear change"
    assert verdict in change


@pytest.fixture
def two_members(tiny_model, tiny_task, tmp_path):
    fast = fit_baseline(tiny_task, BaselineConfig("tfidf"), out_dir=tmp_path / "fast")
    strong = few_shot(tiny_model, tiny_task, PromptConfig())
    save_predictor(strong, tmp_path / "strong")
    return fast, strong, tmp_path / "fast", tmp_path / "strong"


def test_a_cascade_at_threshold_0_is_the_fast_model_and_at_1_the_strong_one(two_members, tiny_task):
    fast, strong, _, _ = two_members
    texts = [e.text for e in tiny_task.test]
    low = CascadePredictor(fast, strong, 0.0, {})
    assert np.allclose(predict(low, texts).probs, predict(fast, texts).probs) and low.escalated == 0
    high = CascadePredictor(fast, strong, 1.0, {})
    assert np.allclose(predict(high, texts).probs, predict(strong, texts).probs)
    assert high.escalated_share == 1.0


def test_the_threshold_reaches_the_target_with_the_fewest_escalations():
    rows = [{"threshold": 0.0, "quality": 0.80, "escalated": 0.0}, {"threshold": 0.6, "quality": 0.90,
            "escalated": 0.2}, {"threshold": 0.8, "quality": 0.92, "escalated": 0.5},
            {"threshold": 1.0, "quality": 0.91, "escalated": 1.0}]
    assert choose_threshold(rows, target_quality=0.9, max_escalated=None)["threshold"] == 0.6
    assert choose_threshold(rows, target_quality=None, max_escalated=0.3)["threshold"] == 0.6
    assert choose_threshold(rows, target_quality=0.99, max_escalated=None)["threshold"] == 0.8  # best reachable


def test_a_saved_cascade_names_its_members_and_refuses_a_changed_one(two_members, tiny_task, tmp_path):
    fast, strong, fast_dir, strong_dir = two_members
    built = build_cascade(fast_dir, strong_dir, tiny_task, list(tiny_task.train), source="training words",
                          out_dir=tmp_path / "cascade")
    save_predictor(built, tmp_path / "cascade")
    payload = json.loads((tmp_path / "cascade" / "tunelab.json").read_text())
    assert payload["fast"]["fingerprint"] == fast.fingerprint and payload["strong"]["rung"] == "prompt"
    assert payload["params_total"] == fast.params_total + strong.params_total
    assert {"threshold", "quality", "escalated"} <= set(payload["selection"]["frontier"][0])
    loaded = load_predictor(tmp_path / "cascade")
    texts = [e.text for e in tiny_task.test]
    assert np.allclose(predict(loaded, texts).probs, predict(built, texts).probs)
    save_predictor(few_shot(strong.model, tiny_task, PromptConfig(shots=1)), strong_dir)  # another predictor now
    with pytest.raises(ModelError, match="strong member"):
        load_predictor(tmp_path / "cascade")


@pytest.fixture
def student_dir(tiny_model, tiny_task, tiny_encoder_dir, tmp_path):
    teacher = few_shot(tiny_model, tiny_task, PromptConfig())
    config = DistillConfig(student=f"encoder:{tiny_encoder_dir}", epochs=2, max_length=8)
    long_texts = ["good bad nice sad fine poor kind grim great awful"]  # past max_length: read in windows
    distill(teacher, tiny_task, config, out_dir=tmp_path / "student",
            transfer_texts=[e.text for e in tiny_task.train] + long_texts)
    return tmp_path / "student"


def test_onnx_export_passes_parity_and_serves_without_torch(student_dir, tiny_task, tmp_path):
    texts = [e.text for e in tiny_task.test] + ["good bad nice sad fine poor kind grim great awful"]
    facts = export_onnx(student_dir, tmp_path / "onnx", texts)
    assert facts["parity"]["passes"] and facts["parity"]["agreement"] == 1.0
    assert facts["parity"]["max_prob_difference"] < 1e-4
    exported, student = load_predictor(tmp_path / "onnx"), load_predictor(student_dir)
    speed = facts["speed"]  # both measured here, so the user sees which one is faster on this machine
    assert speed["texts"] == len(texts) and speed["torch_precision"] == student.precision
    assert speed["torch_examples_per_s"] > 0 and speed["export_examples_per_s"] > 0
    assert "examples/s" in export_lines(facts, tmp_path / "onnx")[-1]
    assert exported.rung == "onnx" and exported.params_total == student.params_total
    assert np.allclose(predict(exported, texts).probs, predict(student, texts).probs, atol=1e-4)
    assert exported.count_windows(texts[-1:]) == student.count_windows(texts[-1:]) != [1]
    script = (f"import sys; from tunelab.predictor import load_predictor, predict; "
              f"p = load_predictor({str(tmp_path / 'onnx')!r}); print(predict(p, ['good']).labels); "
              f"from tunelab.offline.serve import create_app; "
              f"print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"  # loaded, predicted and served without torch


def test_int8_export_and_a_damaged_export_is_refused(student_dir, tiny_task, tmp_path, monkeypatch):
    texts = [e.text for e in tiny_task.test]
    facts = export_onnx(student_dir, tmp_path / "int8", texts, quantize="int8")
    assert facts["quantize"] == "int8" and facts["parity"]["passes"]
    import tunelab.ship.export as export_module

    real = export_module._export_graph

    def damaged(student, path):  # the classifier's weights scrambled before export
        import torch

        with torch.no_grad():
            student.encoder.classifier.weight.mul_(-7.0)
        real(student, path)

    monkeypatch.setattr(export_module, "_export_graph", damaged)
    with pytest.raises(ModelError, match="export refused.*agreement"):
        export_onnx(student_dir, tmp_path / "damaged", texts)
    assert not (tmp_path / "damaged").exists()  # nothing written


def test_parity_counts_flips_probability_moves_and_ece_drift():
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert parity_figures(reference, reference, np.array([0, 1, 0]))["passes"]
    moved = reference + np.array([[-0.06, 0.06], [0, 0], [0, 0]])
    assert not parity_figures(reference, moved, None)["passes"]
    flipped = reference[:, ::-1]
    figures = parity_figures(reference, flipped, np.array([0, 1, 0]))
    assert figures["agreement"] == 0.0 and not figures["passes"]


def test_export_refuses_what_it_cannot_export(tiny_model, tiny_task, tmp_path):
    save_predictor(few_shot(tiny_model, tiny_task, PromptConfig()), tmp_path / "prompt")
    with pytest.raises(ConfigError, match="encoder student"):
        export_onnx(tmp_path / "prompt", tmp_path / "out", ["good"])
    fit_baseline(tiny_task, BaselineConfig("tfidf"), out_dir=tmp_path / "tfidf")
    with pytest.raises(ConfigError, match="TF-IDF has no network"):
        export_onnx(tmp_path / "tfidf", tmp_path / "out", ["good"])


@pytest.mark.parametrize("long_texts", ["windows", "cut"])
def test_the_embed_baseline_exports_with_its_head_and_reads_long_texts_as_it_does(tiny_task, tmp_path, long_texts):
    fit_baseline(tiny_task, BaselineConfig("embed", long_texts=long_texts), out_dir=tmp_path / "embed")
    long_text = " ".join(["good bad nice sad fine poor kind grim"] * 40)  # ~320 tokens: past the 256 it reads
    texts = [e.text for e in tiny_task.test] + [long_text]
    facts = export_onnx(tmp_path / "embed", tmp_path / "onnx", texts)
    assert facts["parity"]["passes"] and facts["parity"]["max_prob_difference"] < 1e-4
    assert (tmp_path / "onnx" / "head.json").is_file()
    exported, baseline = load_predictor(tmp_path / "onnx"), load_predictor(tmp_path / "embed")
    assert exported.params_total == baseline.params_total and exported.params_trainable == 385
    windows, truncated = exported.count_windows([long_text])[0], exported.count_truncated([long_text])
    assert (windows >= 2 and truncated == 0) if long_texts == "windows" else (windows == 1 and truncated == 1)
    assert [windows] == baseline.count_windows([long_text]) and truncated == baseline.count_truncated([long_text])
    assert np.allclose(predict(exported, texts).probs, predict(baseline, texts).probs, atol=1e-4)


def test_calibrate_command_needs_held_out_examples(tiny_model, tiny_task, tmp_path):
    save_predictor(few_shot(tiny_model, tiny_task, PromptConfig()), tmp_path / "prompt")
    result = run_cli("calibrate", *task_args(), "--model", tmp_path / "prompt", "--out", tmp_path / "c")
    assert result.exit_code == 2 and "--validation FILE" in result.stderr


def test_bulk_prediction_reports_a_cascades_escalated_share(two_members, tiny_task, tmp_path):
    from tunelab.offline.bulk import BulkConfig, predict_all
    from tunelab.offline.store import Store

    fast, strong, _, _ = two_members
    store = Store(tmp_path / "preds.sqlite")
    try:
        summary = predict_all(CascadePredictor(fast, strong, 1.0, {}), [e.text for e in tiny_task.test], store,
                              BulkConfig())
    finally:
        store.close()
    assert summary["escalated_share"] == 1.0 and summary["predicted"] == len(tiny_task.test)
