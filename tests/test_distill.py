import dataclasses
import json

import pytest
import torch
from conftest import _llama
from helpers import one_error_line, run_cli, task_args

from tunelab.errors import ConfigError, InputError
from tunelab.models import make_model
from tunelab.predictor import ENCODER_BATCH, load_predictor, predict, save_predictor
from tunelab.rungs.distill import (
    DistillConfig,
    _student_loss,
    distill,
    kd_loss,
    read_transfer_texts,
    soften,
    summary_lines,
)
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.rungs.students import make_student, prune_layers
from tunelab.rungs.tuning import TuneConfig, finetune


@pytest.fixture
def four_layer_model(word_tokenizer):
    lm = _llama(len(word_tokenizer))
    lm.config.num_hidden_layers = 4
    lm = type(lm)(lm.config)
    return make_model(lm, word_tokenizer, name="tiny-4", device=torch.device("cpu"))


def _mean_kl(teacher, student, texts):
    p = torch.tensor(predict(teacher, texts).probs)
    q = torch.tensor(predict(student, texts).probs)
    return float((p * (p.log() - q.log())).sum(1).mean())


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kd_loss_is_zero_when_student_matches_teacher(temperature):
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]])
    assert kd_loss(logits, torch.softmax(logits, -1), temperature).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, torch.softmax(logits.flip(1), -1), temperature).item() > 0.01


def test_soften_equals_softmax_of_scaled_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert torch.allclose(soften(torch.softmax(logits, -1), 3.0), torch.softmax(logits / 3.0, -1), atol=1e-6)


def test_pruned_student_keeps_evenly_spaced_teacher_layers(four_layer_model):
    student = prune_layers(four_layer_model.lm, 2)
    assert student.kept_layers == [0, 3] and student.config.num_hidden_layers == 2
    teacher_layers = four_layer_model.lm.get_decoder().layers
    for new, old in enumerate(student.kept_layers):
        new_state, old_state = student.get_decoder().layers[new].state_dict(), teacher_layers[old].state_dict()
        assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)
    assert four_layer_model.lm.config.num_hidden_layers == 4, "the teacher is untouched"
    assert prune_layers(four_layer_model.lm, 3).kept_layers == [0, 2, 3]


def test_students_have_fewer_parameters_or_are_refused(tiny_model, tiny_task, tiny_encoder_dir):
    teacher = few_shot(tiny_model, tiny_task, PromptConfig(shots=0))
    pruned = make_student(teacher, tiny_task, DistillConfig(student="pruned:1"), {"config": {"max_length": 64}})
    assert pruned.params_total < teacher.params_total
    encoder = make_student(teacher, tiny_task, DistillConfig(student=f"encoder:{tiny_encoder_dir}"),
                           {"config": {"max_length": 64}})
    assert encoder.params_total < teacher.params_total
    with pytest.raises(ConfigError, match="not smaller than the teacher"):
        make_student(teacher, tiny_task, DistillConfig(student="pruned:2"), {})
    with pytest.raises(ConfigError, match="not fewer than the teacher"):
        make_student(teacher, tiny_task, DistillConfig(student="minilm"), {})


@pytest.fixture
def sharp_teacher(tiny_model, tiny_task, tmp_path):
    """A tiny model fine-tuned hard, so that its label distributions are far from uniform."""
    config = TuneConfig(method="full", lr=5e-2, epochs=3, batch_size=4, val_fraction=0.25, patience=3, min_steps=0)
    return finetune(tiny_model, tiny_task, config, out_dir=tmp_path / "teacher")


@pytest.mark.parametrize("spec", ["pruned:1", "encoder"])
def test_student_micro_batches_add_up_to_the_whole_batch_gradient(tiny_model, tiny_task, tiny_encoder_dir, spec):
    teacher = few_shot(tiny_model, tiny_task, PromptConfig(shots=0))
    config = DistillConfig(student=f"encoder:{tiny_encoder_dir}" if spec == "encoder" else spec, alpha=0.5)
    student = make_student(teacher, tiny_task, config, {"config": {"max_length": 64}})
    module = student.encoder if spec == "encoder" else student.model.lm
    module.eval()  # no dropout: the same function of the weights in every pass
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    texts = [e.text for e in tiny_task.train]
    soft = predict(teacher, texts).probs  # (n, labels)
    gold = torch.tensor([tiny_task.labels.index(e.label) for e in tiny_task.train])
    has_gold = torch.arange(len(texts)) % 3 != 0  # some rows without a gold label
    targets, rows = (torch.tensor(soft, dtype=torch.float32), gold, has_gold), torch.arange(len(texts))
    trainable = [p for p in module.parameters() if p.requires_grad]
    n_gold = int(has_gold.sum())
    whole = torch.autograd.grad(_student_loss(student, tiny_task, config, texts, rows, targets, len(rows), n_gold),
                                trainable)
    parts = [torch.autograd.grad(_student_loss(student, tiny_task, config, texts, rows[i : i + 5], targets,
                                               len(rows), n_gold), trainable) for i in range(0, len(rows), 5)]
    assert len(parts) > 1
    assert all(torch.allclose(sum(g), w, atol=1e-5) for g, w in zip(zip(*parts), whole))


@pytest.mark.parametrize("spec", ["pruned:1", "encoder"])
def test_student_learns_the_teacher(sharp_teacher, tiny_task, tiny_encoder_dir, tmp_path, spec):
    teacher = sharp_teacher
    spec = f"encoder:{tiny_encoder_dir}" if spec == "encoder" else spec
    texts = [e.text for e in tiny_task.train + tiny_task.test]
    config = DistillConfig(student=spec, alpha=0.0, epochs=40, lr=2e-2, batch_size=8, temperature=1.0)
    untrained = make_student(teacher, tiny_task, config, {"config": {"max_length": 64}})
    student, report = distill(teacher, tiny_task, config, transfer_texts=texts, out_dir=tmp_path / "student")
    assert _mean_kl(teacher, student, texts) < 0.5 * _mean_kl(teacher, untrained, texts)
    assert report["params_student"] < report["params_teacher"] and 0 < report["param_ratio"] < 1
    assert report["speedup"] > 0 and report["quality_ratio"] >= 0
    payload = json.loads((tmp_path / "student" / "tunelab.json").read_text())
    assert payload["spec"] == spec and payload["params_teacher"] == teacher.params_total
    assert payload["params_total"] == student.params_total
    reloaded = load_predictor(tmp_path / "student")
    assert torch.allclose(torch.tensor(predict(reloaded, texts).probs), torch.tensor(predict(student, texts).probs),
                          atol=1e-5)
    info = run_cli("info", "--model", tmp_path / "student", "--json")  # every artifact tunelab writes
    assert info.exit_code == 0, info.output
    facts = json.loads(info.stdout)
    assert facts["rung"] == "distill" and facts["params_total"] == student.params_total
    assert facts["architecture"] == ("BertForSequenceClassification" if spec != "pruned:1" else "LlamaForCausalLM")


def test_label_space_mismatch_and_empty_transfer_are_refused(tiny_model, tiny_task, tiny_regression_task, tmp_path):
    teacher = few_shot(tiny_model, tiny_task, PromptConfig(shots=0))
    with pytest.raises(ConfigError, match="the teacher predicts classification"):
        distill(teacher, tiny_regression_task, DistillConfig(student="pruned:1"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="transfer set is empty"):
        read_transfer_texts(empty)
    with pytest.raises(InputError, match="transfer set is empty"):
        distill(teacher, tiny_task, DistillConfig(student="pruned:1"), transfer_texts=[])
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"text": "good"}\n{"txt": "bad"}\n')
    with pytest.raises(InputError, match=r't\.jsonl:2: field "text"'):
        read_transfer_texts(bad)


def test_distill_cli_reports_ratios_and_the_student_evaluates(tiny_model, tiny_task, tmp_path):
    teacher_dir = tmp_path / "teacher"
    save_predictor(few_shot(tiny_model, tiny_task, PromptConfig(shots=0)), teacher_dir)
    transfer = tmp_path / "transfer.txt"
    transfer.write_text("good\nbad\nnice\npoor\nkind\ngrim\n")
    result = run_cli("distill", "--teacher", teacher_dir, *task_args(), "--student", "pruned:1", "--transfer",
                  transfer, "--epochs", "2", "--out", tmp_path / "student", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("params_teacher", "params_student", "param_ratio", "speedup", "quality_ratio"):
        assert key in report
    assert report["n_transfer"] == 6 and report["params_student"] < report["params_teacher"]
    evaluated = json.loads(run_cli("eval", "--model", tmp_path / "student", *task_args(), "--json").stdout)
    assert evaluated["rung"] == "distill" and evaluated["params_total"] == report["params_student"]
    line = one_error_line(run_cli("distill", "--teacher", tmp_path, *task_args(), "--out", tmp_path / "s2"))
    assert "not a tunelab predictor folder" in line
    line = one_error_line(run_cli("distill", "--teacher", teacher_dir, *task_args(), "--student", "pruned:9",
                                "--out", tmp_path / "s3"))
    assert "not smaller than the teacher" in line


def test_encoder_student_reads_long_texts_whole_in_windows(tiny_model, tiny_task, tiny_encoder_dir):
    teacher = few_shot(tiny_model, tiny_task, PromptConfig(shots=0))
    config = DistillConfig(student=f"encoder:{tiny_encoder_dir}", max_length=6)  # 4 text tokens a window
    student = make_student(teacher, tiny_task, config, {})
    student.encoder.eval()
    long_text = "good bad nice sad fine poor kind grim"  # 8 tokens: windows (0,4) (3,7) (4,8), stride 3
    assert student.count_windows([long_text, "good"]) == [3, 1] and student.count_truncated([long_text]) == 0
    with torch.no_grad():
        whole = student.logits([long_text, "good"])
        parts = student.logits(["good bad nice sad", "sad fine poor kind", "fine poor kind grim"])
    assert torch.allclose(whole[0], parts.mean(0), atol=1e-5)
    cut = make_student(teacher, tiny_task, dataclasses.replace(config, long_texts="cut"), {})
    assert cut.count_truncated([long_text, "good"]) == 1 and cut.fingerprint != student.fingerprint


def test_a_student_budget_stops_training_and_says_so(tiny_model, tiny_task):
    teacher = few_shot(tiny_model, tiny_task, PromptConfig(shots=0))
    texts = [e.text for e in tiny_task.train + tiny_task.test]
    steps = []
    config = DistillConfig(student="pruned:1", epochs=5, batch_size=2, budget_s=1e-6)
    student, report = distill(teacher, tiny_task, config, transfer_texts=texts, on_step=lambda n, loss: steps.append(n))
    assert len(steps) == 1 and report["cut_short"]["steps_run"] == 1 and report["cut_short"]["epoch"] == 1
    assert student.meta["training"]["cut_short"] == report["cut_short"]
    assert any("cut short by --budget-s" in line for line in summary_lines(report, "out"))
    whole, _ = distill(teacher, tiny_task, DistillConfig(student="pruned:1", epochs=2, batch_size=2),
                       transfer_texts=texts)
    assert whole.meta["training"]["cut_short"] is None


def test_auto_student_training_times_a_micro_batch_each_way_and_follows_it(tiny_model, tiny_task, monkeypatch):
    from tunelab.scoring import precision

    monkeypatch.setattr(precision, "bf16_speedup", lambda device_type: 3.0)  # as on an AMX CPU
    teacher = few_shot(tiny_model, tiny_task, PromptConfig(shots=0))
    texts = [e.text for e in tiny_task.train + tiny_task.test]
    student, _ = distill(teacher, tiny_task, DistillConfig(student="pruned:1", epochs=1, batch_size=4),
                         transfer_texts=texts)
    record = student.meta["precision_record"]
    speedup = record["training_step_speedup"]
    assert speedup > 0 and record["training"] == ("bf16" if speedup >= precision.FAST_RATIO else "fp32")
    fixed, _ = distill(teacher, tiny_task, DistillConfig(student="pruned:1", epochs=1, batch_size=4, precision="fp32"),
                       transfer_texts=texts)
    assert fixed.meta["precision_record"]["training_step_speedup"] is None  # asked for: nothing timed


def test_an_encoder_student_predicts_short_texts_in_large_batches(tiny_model, tiny_task, tiny_encoder_dir):
    teacher = few_shot(tiny_model, tiny_task, PromptConfig(shots=0))
    student = make_student(teacher, tiny_task, DistillConfig(student=f"encoder:{tiny_encoder_dir}"), {})
    student.encoder.eval()
    sizes, predict_batch = [], student.predict_batch
    student.predict_batch = lambda texts: sizes.append(len(texts)) or predict_batch(texts)
    texts = [f"good {i}" for i in range(300)]
    whole = predict(student, texts).probs
    assert sizes == [ENCODER_BATCH, 300 - ENCODER_BATCH]  # not predict's default of 32 a call
    assert torch.allclose(torch.tensor(whole[:5]), torch.tensor(predict(student, texts[:5]).probs), atol=1e-5)
