"""bf16 where it is fast and in parity with fp32; fp32 otherwise; weights and fp32 fingerprints never change."""

import numpy as np
import pytest

from tunelab.config import PromptConfig
from tunelab.rungs.prompting import few_shot
from tunelab.scoring import precision
from tunelab.scoring.precision import FAST_RATIO, choose_training_precision, parity, resolve_precision


def test_parity_needs_the_same_predictions_and_close_probabilities():
    same = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert parity(same, same + [[-0.01, 0.01], [0.01, -0.01]])["passes"]
    flipped = parity(same, np.array([[0.4, 0.6], [0.2, 0.8]]))
    assert flipped["agreement"] == 0.5 and not flipped["passes"]
    assert not parity(same, same + [[-0.2, 0.2], [0.0, 0.0]])["passes"]  # same argmax, too far apart


def test_auto_is_fp32_on_a_slow_device_and_bf16_only_with_parity(monkeypatch):
    import torch

    cpu = torch.device("cpu")
    close = {"fp32": np.array([[0.9, 0.1]] * 10), "bf16": np.array([[0.89, 0.11]] * 10)}
    assert resolve_precision("auto", cpu, close.get)["precision"] == "fp32"  # conftest: no bf16 speed-up here
    monkeypatch.setattr(precision, "bf16_speedup", lambda device_type: 3.0)
    chosen = resolve_precision("auto", cpu, close.get)
    assert chosen["precision"] == "bf16" and chosen["parity"]["passes"] and chosen["bf16_speedup"] == 3.0
    apart = {"fp32": close["fp32"], "bf16": np.array([[0.4, 0.6]] * 10)}
    assert resolve_precision("auto", cpu, apart.get)["precision"] == "fp32"
    assert resolve_precision("bf16", cpu, apart.get)["precision"] == "bf16"  # asked for: no check


class _ClockedPredictor:
    """Advances a fake clock by a cost per text in each precision; `slow_first_bf16` slows its first bf16 pass (the
    parity check's), as another process sharing the cores would."""

    def __init__(self, clock, cost, slow_first_bf16=1.0):
        self.clock, self.cost, self.slow, self.precision, self.bf16_settings = clock, cost, slow_first_bf16, None, 0

    def set_precision(self, precision):
        self.precision = precision
        self.bf16_settings += precision == "bf16"

    def predict_batch(self, texts):
        from tunelab.predictor import Predictions

        slow = self.slow if self.precision == "bf16" and self.bf16_settings == 1 else 1.0  # the parity check's pass
        self.clock[0] += self.cost[self.precision] * slow * len(texts)
        return Predictions("classification", ("a", "b"), probs=np.tile([[0.7, 0.3]], (len(texts), 1)))


@pytest.mark.parametrize("cost, slow_first_bf16, chosen", [
    ({"fp32": 3.0, "bf16": 1.0}, 4.0, "bf16"),  # a slow moment: the timing again finds bf16 3x faster
    ({"fp32": 1.0, "bf16": 2.0}, 1.0, "fp32"),  # really slower in bf16 (a small encoder on words): confirmed
    ({"fp32": 3.0, "bf16": 1.0}, 1.0, "bf16"),  # faster at once: not timed again
])
def test_a_predictor_slower_in_bf16_is_timed_again_before_bf16_is_dropped(monkeypatch, cost, slow_first_bf16,
                                                                           chosen):
    import torch

    clock = [0.0]
    monkeypatch.setattr(precision.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(precision, "bf16_speedup", lambda device_type: 3.0)
    predictor = _ClockedPredictor(clock, cost, slow_first_bf16)
    record = precision.choose_precision(predictor, "auto", [f"text {i}" for i in range(100)], torch.device("cpu"))
    assert record["precision"] == chosen == predictor.precision
    first = cost["fp32"] / (cost["bf16"] * slow_first_bf16)
    assert record["predictor_speedup"] == round(first, 2)
    if first <= 1:
        assert record["predictor_speedup_retimed"] == round(cost["fp32"] / cost["bf16"], 2)
    else:
        assert "predictor_speedup_retimed" not in record


def test_training_keeps_bf16_only_where_a_timed_step_is_fast_enough():
    chosen = {"requested": "auto", "precision": "bf16"}
    fast = choose_training_precision(chosen, {"fp32": 2.0, "bf16": 1.0}.get)
    assert fast["precision"] == "bf16" and fast["training_step_speedup"] == 2.0
    even = choose_training_precision(chosen, {"fp32": 1.0, "bf16": 1.0}.get)  # words: autograd's cost, no gain
    assert even["precision"] == "fp32" and even["training_step_speedup"] == 1.0
    untimed = lambda precision: pytest.fail("timed without need")  # noqa: E731
    assert choose_training_precision({"requested": "bf16", "precision": "bf16"}, untimed)["precision"] == "bf16"
    assert choose_training_precision({"requested": "auto", "precision": "fp32"}, untimed)["precision"] == "fp32"
    failed = {"requested": "auto", "precision": "fp32", "parity": {"passes": False}}
    assert choose_training_precision(failed, untimed)["precision"] == "fp32"


def test_training_times_bf16_where_only_the_predictors_speed_turned_it_down():
    # as on the H200: bf16 in parity, the bf16 predictor slower (launch-bound), a training step twice as fast
    slower_predictor = {"requested": "auto", "precision": "fp32", "parity": {"passes": True},
                        "predictor_speedup": 0.48}
    trained = choose_training_precision(slower_predictor, {"fp32": 2.0, "bf16": 1.0}.get)
    assert trained["precision"] == "bf16" and trained["training_step_speedup"] == 2.0
    assert choose_training_precision(slower_predictor, {"fp32": 1.0, "bf16": 1.0}.get)["precision"] == "fp32"


def test_a_timed_training_step_waits_for_the_gpu_before_reading_the_clock(monkeypatch):
    import torch

    from tunelab import training

    synced, waited = [], []
    real = training.synchronize
    monkeypatch.setattr(training, "synchronize", lambda device: synced.append(device) or real(device))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    weight = torch.nn.Parameter(torch.ones(3))
    assert training.backward_seconds(lambda: (weight * 2).sum(), [weight]) >= 0 and weight.grad is None
    assert synced == [torch.device("cpu")] * 4 and waited == []  # before and after each of two passes; CPU: no wait
    real(torch.device("cuda", 0))
    assert waited == [torch.device("cuda", 0)]  # on a GPU backward() returns before its kernels have run


def test_auto_lora_training_records_its_timed_step_and_follows_it(tiny_model, tiny_task, tmp_path, monkeypatch):
    from tunelab.config import TuneConfig
    from tunelab.rungs import tuning

    chose_bf16 = {"requested": "auto", "precision": "bf16", "bf16_speedup": 3.0, "parity": {"passes": True}}
    monkeypatch.setattr(tuning, "choose_precision", lambda predictor, *args: dict(chose_bf16))  # as on an AMX CPU
    timed, real_timer = [], tuning._seconds_per_token
    monkeypatch.setattr(tuning, "_seconds_per_token", lambda *args: timed.append(args[-1]) or
                        {"fp32": 1.0, "bf16": 0.95}[args[-1]])  # bf16 barely faster: words
    config = TuneConfig(method="lora", epochs=1, lr=1e-2, min_steps=0, batch_size=4)
    tuned = tuning.finetune(tiny_model, tiny_task, config, out_dir=tmp_path / "auto")
    record = tuned.meta["precision_record"]["training"]
    assert timed == ["fp32", "bf16"] and record["training_step_speedup"] == round(1 / 0.95, 2)
    assert record["precision"] == "fp32"  # under FAST_RATIO: trained in fp32
    monkeypatch.setattr(tuning, "_seconds_per_token", real_timer)
    record = tuning.finetune(tiny_model, tiny_task, config, out_dir=tmp_path / "timed").meta["precision_record"]
    speedup = record["training"]["training_step_speedup"]  # the real micro-batch, timed each way
    assert speedup > 0 and record["training"]["precision"] == ("bf16" if speedup >= FAST_RATIO else "fp32")


def test_a_bf16_prompt_scores_close_to_fp32_and_changes_no_weight(tiny_model, tiny_task, monkeypatch):
    monkeypatch.setattr(precision, "bf16_speedup", lambda device_type: 3.0)
    before = tiny_model.fingerprint
    fp32 = few_shot(tiny_model, tiny_task, PromptConfig(precision="fp32"))
    bf16 = few_shot(tiny_model, tiny_task, PromptConfig(precision="bf16"))
    texts = [e.text for e in tiny_task.test]
    difference = np.abs(fp32.predict_batch(texts).probs - bf16.predict_batch(texts).probs).max()
    assert 0 < difference < 0.05  # computed differently, and close
    assert bf16.fingerprint != fp32.fingerprint  # a stored bf16 prediction is not an fp32 one
    from tunelab.models import weights_fingerprint

    assert weights_fingerprint(tiny_model.lm) == before
    auto = few_shot(tiny_model, tiny_task, PromptConfig())
    assert auto.config.precision in ("bf16", "fp32") and auto.precision_record["parity"]["n"] == len(tiny_task.train)


@pytest.mark.parametrize("requested", ["fp32", "auto"])
def test_fp32_artifacts_keep_their_fingerprint(tiny_model, tiny_task, requested):
    predictor = few_shot(tiny_model, tiny_task, PromptConfig(precision=requested))
    assert predictor.config.precision == "fp32"
    assert "precision" not in predictor._describe()["config"]


def test_lora_trained_in_bf16_stays_fp32_and_loads_back(tiny_model, tiny_task, tmp_path):
    import torch

    from tunelab.config import TuneConfig
    from tunelab.predictor import load_predictor
    from tunelab.rungs.tuning import finetune

    config = TuneConfig(method="lora", precision="bf16", epochs=1, lr=1e-2, min_steps=0, batch_size=4)
    tuned = finetune(tiny_model, tiny_task, config, out_dir=tmp_path / "lora16")
    assert {p.dtype for p in tuned.model.lm.parameters()} == {torch.float32}
    assert tuned.params_total == tiny_model.params_total and tuned.precision == "bf16"
    assert tuned.meta["precision_record"]["training"]["precision"] == "bf16"
    assert {p.dtype for p in tiny_model.lm.parameters()} == {torch.float32}  # autocast casts copies, never weights
    loaded = load_predictor(tmp_path / "lora16")  # the adapter on the fp32 base: the same fingerprint, or refused
    texts = [e.text for e in tiny_task.test]
    assert loaded.fingerprint == tuned.fingerprint
    assert np.allclose(loaded.predict_batch(texts).probs, tuned.predict_batch(texts).probs, atol=1e-6)


def test_bf16_inference_runs_a_bf16_copy_made_once_and_again_after_training(tiny_model, tiny_task):
    import torch

    assert tiny_model.inference_lm("fp32") is tiny_model.lm
    copy = tiny_model.inference_lm("bf16")
    assert copy is not tiny_model.lm and next(copy.parameters()).dtype == torch.bfloat16
    assert next(tiny_model.lm.parameters()).dtype == torch.float32  # the weights training starts from stay fp32
    assert tiny_model.inference_lm("bf16") is copy  # made once
    bf16 = few_shot(tiny_model, tiny_task, PromptConfig(precision="bf16"))
    texts = [e.text for e in tiny_task.test]
    before = bf16.predict_batch(texts).probs
    with torch.no_grad():  # an optimizer step changes weights in place: the copy must follow
        next(tiny_model.lm.parameters()).mul_(0.0)
    assert tiny_model.inference_lm("bf16") is not copy
    bf16.set_precision("bf16")  # forget the cached prefix, as training a predictor's model does
    assert not np.allclose(bf16.predict_batch(texts).probs, before)
