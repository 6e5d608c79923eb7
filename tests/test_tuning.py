import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

from tunelab.errors import ConfigError, ModelError, TrainingError
from tunelab.models import load_model
from tunelab.predictor import load_predictor, predict
from tunelab.rungs import tuning
from tunelab.rungs.tuning import TuneConfig, _checkpointing, _with_adapter, finetune
from tunelab.rungs.tuning_loss import _batches, _loss_step, rating_loss, verbalizer_loss
from tunelab.scoring.tokens import PrefixCache, label_log_likelihoods, tokenize_pairs
from tunelab.scoring.verbalizer import Verbalizer
from tunelab.tasks import Example, load_task, make_task

DATA = Path(__file__).parent / "data"
FAST = dict(epochs=2, batch_size=4, val_fraction=0.25, min_steps=0)  # min_steps: only the steps asked for


def _texts(task):
    return [e.text for e in task.test]


def test_verbalizer_loss_is_cross_entropy_over_label_scores():
    scores = torch.tensor([[-0.1, -2.3], [-1.2, -0.4]])
    targets = torch.tensor([0, 1])
    expected = -(torch.log_softmax(scores, -1)[[0, 1], [0, 1]]).mean()
    assert torch.allclose(verbalizer_loss(scores, targets), expected)


def test_rating_loss_is_zero_at_the_gold_rating_and_grows_with_distance():
    certain_on_3 = torch.full((1, 9), -1e4)
    certain_on_3[0, 2] = 0.0
    assert rating_loss(certain_on_3, torch.tensor([3.0])).item() == pytest.approx(0.0, abs=1e-8)
    assert rating_loss(certain_on_3, torch.tensor([5.0])) < rating_loss(certain_on_3, torch.tensor([9.0]))
    assert rating_loss(certain_on_3, torch.tensor([7.0])).item() == pytest.approx((4 / 8) ** 2)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_prefix_encoded_once_per_step_gives_the_full_rows_loss_and_gradients(tiny_model, method):
    lm = tiny_model.lm
    if method == "lora":
        lm, _ = _with_adapter(lm, TuneConfig(method="lora"))
        for name, parameter in lm.named_parameters():  # LoRA B starts at zero: move it so gradients reach A
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.1)
    tokenizer, pad = tiny_model.tokenizer, tiny_model.tokenizer.pad_token_id
    prefix, queries = "Classify each word .", [" Word : good", " Word : vile cruel", " Word : x"]
    pairs = tokenize_pairs(tokenizer, prefix, queries, [" positive", " negative"])
    trainable = [p for p in lm.parameters() if p.requires_grad]

    def loss_and_grads(scores):
        loss = verbalizer_loss(scores, torch.tensor([0, 1, 0]))
        return loss.detach(), torch.autograd.grad(loss, trainable)

    expected = loss_and_grads(label_log_likelihoods(lm, PrefixCache([]), pairs, pad)[0])  # every row whole
    shared = loss_and_grads(label_log_likelihoods(lm, PrefixCache(tokenizer(prefix).input_ids), pairs, pad)[0])
    assert torch.allclose(shared[0], expected[0], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(shared[1], expected[1]))
    assert any(g.abs().sum() > 0 for g in shared[1])


def test_full_finetuning_updates_every_parameter_and_keeps_the_count(tiny_model, tiny_task, tmp_path):
    before = {k: v.clone() for k, v in tiny_model.lm.state_dict().items()}
    predictor = finetune(tiny_model, tiny_task, TuneConfig(method="full", lr=1e-2, **FAST), out_dir=tmp_path / "f")
    assert predictor.params_total == tiny_model.params_total == predictor.params_trainable
    tuned = predictor.model.lm.state_dict()
    assert all(not torch.equal(before[k], tuned[k]) for k in before if "rotary" not in k)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.lm.state_dict().items()), "base must stay intact"


def test_lora_trains_only_adapters_and_merges_to_the_base_count(tiny_model, tiny_task, tmp_path, monkeypatch):
    import tunelab.rungs.tuning as tuning
    from tunelab.models import weights_fingerprint

    before = weights_fingerprint(tiny_model.lm)
    stored = {p.untyped_storage().data_ptr() for p in tiny_model.lm.parameters()}
    trained, shared = [], []
    adapt = tuning._with_adapter
    monkeypatch.setattr(tuning, "_with_adapter", lambda lm, config: trained.append(lm) or adapt(lm, config))

    def on_step(n, loss):  # during training the frozen weights are the caller's own tensors, not a copy
        shared.append(all(p.untyped_storage().data_ptr() in stored
                          for name, p in trained[0].named_parameters() if "lora_" not in name))

    config = TuneConfig(method="lora", lora_r=4, lr=1e-2, **FAST)
    predictor = finetune(tiny_model, tiny_task, config, out_dir=tmp_path / "l", on_step=on_step)
    assert shared and all(shared)
    assert weights_fingerprint(tiny_model.lm) == before  # the merge wrote fresh tensors, not the shared ones
    linears = [m for name, m in tiny_model.lm.named_modules()
               if isinstance(m, torch.nn.Linear) and "lm_head" not in name]
    assert predictor.params_trainable == sum(4 * (m.in_features + m.out_features) for m in linears)
    assert predictor.params_total == tiny_model.params_total
    assert predictor.meta["metrics"]["params_trainable"] == predictor.params_trainable
    assert predictor.model.fingerprint != tiny_model.fingerprint


def test_training_lowers_the_training_loss(tiny_model, tiny_task, tmp_path):
    config = TuneConfig(method="full", lr=1e-2, epochs=4, batch_size=4, val_fraction=0.25, patience=4, min_steps=0)
    history = finetune(tiny_model, tiny_task, config, out_dir=tmp_path / "t").meta["training"]["history"]
    assert len(history) == 4 and history[-1]["train_loss"] < history[0]["train_loss"]


def test_regression_tuning_through_the_rating_verbalizer(tiny_model, tiny_regression_task, tmp_path):
    predictor = finetune(tiny_model, tiny_regression_task, TuneConfig(method="lora", lr=1e-2, **FAST),
                         out_dir=tmp_path / "r")
    metrics = predictor.meta["metrics"]
    assert {"mae", "spearman"} <= set(metrics) and predictor.params_total == tiny_model.params_total
    values = predict(predictor, _texts(tiny_regression_task)).values
    assert np.all((values >= -4) & (values <= 4))


@pytest.mark.parametrize("merge", [False, True])
def test_saved_lora_reloads_with_the_same_predictions(tiny_model, tiny_task, tmp_path, merge):
    out = tmp_path / "run"
    predictor = finetune(tiny_model, tiny_task, TuneConfig(method="lora", lr=1e-2, merge=merge, **FAST), out_dir=out)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "model").is_dir() == merge
    assert not (out / "checkpoints").exists()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt")), "safetensors only"
    payload = json.loads((out / "tunelab.json").read_text())
    assert payload["params_total"] == tiny_model.params_total and payload["method"] == "lora"
    assert {"torch", "transformers", "peft", "tunelab"} <= set(payload["versions"])
    loaded = load_predictor(out)
    assert np.allclose(predict(loaded, _texts(tiny_task)).probs, predict(predictor, _texts(tiny_task)).probs,
                       atol=1e-5)


def test_an_fp32_adapter_whose_merge_would_not_fit_is_served_unmerged(tiny_model, tiny_task, tmp_path,
                                                                       monkeypatch):
    out = tmp_path / "run"
    merged = finetune(tiny_model, tiny_task, TuneConfig(method="lora", lr=1e-2, **FAST), out_dir=out)
    assert merged.meta["adapter_merged"] and load_predictor(out).meta["adapter_merged"]
    base_weights = [p.detach().clone() for p in tiny_model.lm.parameters()]
    monkeypatch.setattr("tunelab.memory.memory_room", lambda device=None: (1024, "a tiny limit", 1024))
    unmerged = load_predictor(out)  # the merge's fresh weights would not fit: the adapter stays a side path
    assert unmerged.meta["adapter_merged"] is False and unmerged.fingerprint == merged.fingerprint
    assert unmerged.params_total == tiny_model.params_total
    assert np.allclose(predict(unmerged, _texts(tiny_task)).probs, predict(merged, _texts(tiny_task)).probs,
                       atol=1e-5)
    assert all(torch.equal(p, q) for p, q in zip(tiny_model.lm.parameters(), base_weights))  # the base unchanged


def test_the_plan_serves_an_adapter_unmerged_where_only_its_merge_would_not_fit(tiny_model, tiny_task, tmp_path,
                                                                                 monkeypatch):
    from tunelab.memory import HEADROOM, ModelShape, peak, plan

    # wide layers, a short micro-batch: the merged copy of the linear weights outweighs training's activations
    wide = ModelShape.of(LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                     num_attention_heads=4, num_key_value_heads=2))
    sizes = dict(tokens=8, rows=1, baseline=0)
    ample = plan(wide, "lora", room=(1 << 40, "t"), **sizes)
    assert ample.parts["merged copy (after training)"] > 0 and "unmerged" not in ample.reason
    without = peak({**ample.parts, "merged copy (after training)": 0})
    room = int((without + 1) / HEADROOM) + 1  # training fits, the merge after it does not
    assert peak(ample.parts) > HEADROOM * room
    tight = plan(wide, "lora", room=(room, "t"), **sizes)
    assert tight.fits and tight.parts["merged copy (after training)"] == 0 and "served unmerged" in tight.reason
    assert not plan(wide, "lora", room=(room, "t"), merge=True, **sizes).fits  # --merge must merge
    # a plan without the merge: the trained adapter stays unmerged, with the base's parameter count
    planned = tuning.plan_memory

    def no_merge(*args, **kwargs):
        found = planned(*args, **kwargs)
        return {**found, "parts": {**found["parts"], "merged copy (after training)": 0}}

    monkeypatch.setattr(tuning, "plan_memory", no_merge)
    trained = finetune(tiny_model, tiny_task, TuneConfig(method="lora", lr=1e-2, **FAST), out_dir=tmp_path / "b")
    assert trained.meta["adapter_merged"] is False and trained.params_total == tiny_model.params_total
    assert load_predictor(tmp_path / "b").fingerprint == trained.fingerprint


def test_a_lora_artifact_reloads_where_merging_rounds_differently_but_not_with_a_changed_adapter(
        tiny_model, tiny_task, tmp_path, monkeypatch):
    """Merging an adapter is float arithmetic whose last bits depend on the device (a GPU merged to other bits than
    the run that saved it): the artifact is checked by its adapter's numbers, so it loads; a changed adapter does
    not."""
    from peft.tuners.tuners_utils import BaseTuner
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    finetune(tiny_model, tiny_task, TuneConfig(method="lora", lr=1e-2, **FAST), out_dir=out)
    merge = BaseTuner.merge_and_unload  # PeftModel hands the call on to its tuner

    def merge_rounding_otherwise(self, *args, **kwargs):
        merged = merge(self, *args, **kwargs)
        with torch.no_grad():
            weight = merged.model.layers[0].self_attn.q_proj.weight
            weight.copy_(torch.nextafter(weight, torch.full_like(weight, float("inf"))))  # one ulp up
        return merged

    monkeypatch.setattr(BaseTuner, "merge_and_unload", merge_rounding_otherwise)
    assert load_predictor(out).rung == "tune"
    adapter_file = out / "adapter" / "adapter_model.safetensors"
    state = load_file(adapter_file)
    name = sorted(state)[0]
    state[name] = state[name] + 1e-3
    save_file(state, adapter_file)
    with pytest.raises(ModelError, match="changed after it was saved"):
        load_predictor(out)


def test_a_lora_artifact_saved_with_the_merged_weights_fingerprint_still_loads(tiny_model, tiny_task, tmp_path):
    """Artifacts saved before adapters were fingerprinted recorded the hash of the merged weights."""
    out = tmp_path / "run"
    finetune(tiny_model, tiny_task, TuneConfig(method="lora", lr=1e-2, **FAST), out_dir=out)
    loaded = load_predictor(out)
    loaded.model._fingerprint = None
    loaded.model.__dict__.pop("fingerprint", None)
    payload = json.loads((out / "tunelab.json").read_text())
    assert loaded.fingerprint != payload["fingerprint"]
    payload["fingerprint"] = loaded.fingerprint  # what an older tunelab wrote
    (out / "tunelab.json").write_text(json.dumps(payload))
    assert load_predictor(out).fingerprint == payload["fingerprint"]


def test_micro_batches_fill_a_share_of_a_gpus_free_memory_and_stay_cpu_sized_on_a_cpu(tiny_model, monkeypatch):
    from types import SimpleNamespace

    from tunelab.rungs.tuning_loss import (
        GPU_MEMORY_SHARE,
        MICRO_BATCH_TOKENS,
        activation_bytes_per_token,
        micro_batch_tokens,
    )

    assert micro_batch_tokens("fp32", tiny_model.lm) == MICRO_BATCH_TOKENS
    assert micro_batch_tokens("bf16", tiny_model.lm) == 2 * MICRO_BATCH_TOKENS
    on_gpu = SimpleNamespace(config=tiny_model.lm.config,
                             parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda", 0))]))
    per_token = activation_bytes_per_token(tiny_model.lm.config, "bf16")
    assert per_token < activation_bytes_per_token(tiny_model.lm.config, "fp32")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * 2**30, 80 * 2**30))
    assert micro_batch_tokens("bf16", on_gpu) == int(80 * 2**30 * GPU_MEMORY_SHARE / per_token)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 2**30))  # nearly full
    assert micro_batch_tokens("bf16", on_gpu) == 2 * MICRO_BATCH_TOKENS


def test_out_dir_that_is_not_a_run_is_refused_unless_overwrite(tiny_model, tiny_task, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not a tunelab run; use --overwrite"):
        finetune(tiny_model, tiny_task, TuneConfig(**FAST), out_dir=out)
    assert (out / "notes.txt").read_text() == "keep me"
    finetune(tiny_model, tiny_task, TuneConfig(**FAST), out_dir=out, overwrite=True)
    assert (out / "tunelab.json").is_file() and not (out / "notes.txt").exists()
    with pytest.raises(ConfigError, match="holds a tunelab run"):
        finetune(tiny_model, tiny_task, TuneConfig(**FAST), out_dir=out)
    with pytest.raises(ConfigError, match="already finished"):
        finetune(tiny_model, tiny_task, TuneConfig(**FAST), out_dir=out, resume=True)


def test_nan_loss_stops_with_a_clear_error(tiny_model, tiny_task, tmp_path):
    with torch.no_grad():
        tiny_model.lm.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="loss became nan in epoch 1"):
        finetune(tiny_model, tiny_task, TuneConfig(method="full", **FAST), out_dir=tmp_path / "nan")
    assert not (tmp_path / "nan" / "tunelab.json").exists()


def test_config_problems_name_their_flags():
    with pytest.raises(ConfigError) as caught:
        TuneConfig(method="half", epochs=0, val_fraction=1.5, merge=True)
    text = str(caught.value)
    assert "--method" in text and "--epochs" in text and "--val-fraction" in text


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from tunelab.models import load_model
    from tunelab.tasks import load_task
    from tunelab.rungs.tuning import finetune, TuneConfig
    model_dir, train, test, out = sys.argv[1:5]
    def die_after_epoch_2(epoch, val_loss):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    finetune(load_model(model_dir), load_task(train_path=train, test_path=test),
             TuneConfig(method="lora", epochs=4, lr=1e-2, batch_size=2, val_fraction=0.25, patience=4, min_steps=0,
                        precision="fp32"),
             out_dir=out, on_epoch_end=die_after_epoch_2)
""")


def test_resume_after_sigkill_ends_like_an_uninterrupted_run(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "base")
    train, test = DATA / "words.jsonl", DATA / "words_test.csv"
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    killed = subprocess.run([sys.executable, script, tmp_path / "base", train, test, tmp_path / "resumed"],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads((tmp_path / "resumed" / "checkpoints" / "latest.json").read_text())["epoch"] == 2
    assert not (tmp_path / "resumed" / "tunelab.json").exists()

    model, task = load_model(tmp_path / "base"), load_task(train_path=train, test_path=test)
    config = TuneConfig(method="lora", epochs=4, lr=1e-2, batch_size=2, val_fraction=0.25, patience=4, min_steps=0,
                        precision="fp32")
    resumed = finetune(model, task, config, out_dir=tmp_path / "resumed", resume=True)
    straight = finetune(model, task, config, out_dir=tmp_path / "straight")
    assert resumed.meta["training"]["history"] == straight.meta["training"]["history"]
    assert resumed.meta["training"]["epochs_run"] == 4
    assert resumed.fingerprint == straight.fingerprint


class Interrupted(Exception):
    pass


def test_resume_needs_the_same_settings(tiny_model, tiny_task, tmp_path):
    def stop(epoch, val_loss):
        raise Interrupted

    with pytest.raises(Interrupted):
        finetune(tiny_model, tiny_task, TuneConfig(**FAST), out_dir=tmp_path / "run", on_epoch_end=stop)
    with pytest.raises(ConfigError, match="--resume needs the same settings"):
        finetune(tiny_model, tiny_task, TuneConfig(**{**FAST, "epochs": 3}), out_dir=tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match="no checkpoint to resume"):
        finetune(tiny_model, tiny_task, TuneConfig(**FAST), out_dir=tmp_path / "empty", resume=True)


LONG = "Subject: refund for a broken kettle. " + "The order came late and the box was open. " * 30 + "Regards, Ann"


def test_long_texts_are_cut_head_and_tail_and_counted_the_same_way_in_training_and_use(tiny_bpe_model, tmp_path):
    train = [Example(LONG + f" {i}", "positive" if i % 2 else "negative") for i in range(8)]
    test = [Example(LONG, "positive"), Example("short one", "negative")]
    task = make_task("tickets", "classification", train, test, template="Ticket: {text}\nLabel: {label}")
    config = TuneConfig(method="lora", epochs=1, batch_size=4, max_length=48, val_fraction=0.25, min_steps=0)
    predictor = finetune(tiny_bpe_model, task, config, out_dir=tmp_path / "t")
    metrics = predictor.meta["metrics"]
    assert (metrics["n_truncated"], metrics["max_length"]) == (1, 48)
    assert predictor.meta["training"]["n_truncated"] == 6  # every long training text, none twice
    fitted = predictor.verbalizer.fit([LONG], 48)[0][0]
    assert fitted.startswith("Subject") and fitted.endswith("Ann") and "[...]" in fitted
    pairs = predictor.verbalizer.pairs(predictor.verbalizer.fmt.instruction, [fitted])[0]
    assert max(len(p.ids) for p in pairs) <= 48


def test_a_max_length_past_the_context_window_is_a_config_error(tiny_model, tiny_task, tmp_path):
    with pytest.raises(ConfigError, match="larger than the model's context window"):
        finetune(tiny_model, tiny_task, TuneConfig(max_length=100_000), out_dir=tmp_path / "t")


def test_derived_max_length_holds_most_prompts_and_is_capped(tiny_model, tiny_task):
    verbalizer = Verbalizer.for_task(tiny_model.tokenizer, tiny_task)
    texts = ["good"] * 99 + ["good " * 400]
    derived = verbalizer.derive_max_length(texts, context=512, cap=64)
    assert derived == verbalizer.overhead() + 1  # the one long outlier does not set it
    assert verbalizer.derive_max_length(["good " * 400] * 10, context=512, cap=64) == 64


@pytest.mark.parametrize("method", ["full", "lora"])
def test_micro_batches_accumulate_to_the_whole_batch_gradient(tiny_model, tiny_task, method):
    lm = tiny_model.lm
    if method == "lora":
        lm, _ = _with_adapter(lm, TuneConfig(method="lora"))
        for name, parameter in lm.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.1)
    verbalizer = Verbalizer.for_task(tiny_model.tokenizer, tiny_task)
    examples = list(tiny_task.train)
    (batch,) = _batches(verbalizer, examples, TuneConfig(batch_size=len(examples)), range(len(examples)), 64)
    trainable = [p for p in lm.parameters() if p.requires_grad]
    pad = tiny_model.tokenizer.pad_token_id
    whole = torch.autograd.grad(_loss_step(lm, verbalizer, batch, pad), trainable)
    micro = batch.micro_batches(max_tokens=30)
    assert len(micro) > 2
    parts = [torch.autograd.grad(_loss_step(lm, verbalizer, m, pad) * len(m.pairs) / len(batch.pairs), trainable)
             for m in micro]
    assert all(torch.allclose(sum(g), w, atol=1e-5) for g, w in zip(zip(*parts), whole))


def test_checkpointing_turns_on_from_its_prompt_length_and_changes_no_gradient(tiny_model, tiny_bpe_model, tiny_task,
                                                                              tmp_path, monkeypatch):
    verbalizer = Verbalizer.for_task(tiny_model.tokenizer, tiny_task)
    examples = list(tiny_task.train)
    (batch,) = _batches(verbalizer, examples, TuneConfig(batch_size=len(examples)), range(len(examples)), 64)
    lm, pad = tiny_model.lm, tiny_model.tokenizer.pad_token_id
    lm.train()
    plain = torch.autograd.grad(_loss_step(lm, verbalizer, batch, pad, cache_prefix=False), list(lm.parameters()))
    _checkpointing(lm, True)
    try:
        recomputed = torch.autograd.grad(_loss_step(lm, verbalizer, batch, pad, cache_prefix=False),
                                         list(lm.parameters()))
    finally:
        _checkpointing(lm, False)
        lm.eval()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, recomputed))

    train = [Example(LONG + f" {i}", "positive" if i % 2 else "negative") for i in range(4)]
    task = make_task("tickets", "classification", train, train[:2], template="Ticket: {text}\nLabel: {label}")
    config = TuneConfig(method="lora", epochs=1, batch_size=2, max_length=48, val_fraction=0.5, min_steps=0)
    tuned = finetune(tiny_bpe_model, task, config, out_dir=tmp_path / "off")
    plan = tuned.meta["training"]["memory_plan"]
    assert not tuned.meta["training"]["gradient_checkpointing"] and not plan["checkpointing"] and plan["fits"]
    assert plan["parts"]["training copy"] == 0  # LoRA trains on the caller's own frozen weights


def test_the_memory_plan_turns_checkpointing_on_only_where_it_must_and_refuses_what_cannot_fit(tiny_model):
    from tunelab.errors import MemoryPlanError
    from tunelab.memory import ModelShape, check, plan

    shape = ModelShape(tiny_model.lm.config, tiny_model.params_total)
    ample = plan(shape, "full", tokens=4096, room=(1 << 40, "test"), baseline=0)
    assert not ample.checkpointing and ample.fits
    recomputed = plan(shape, "full", tokens=4096, checkpointing=True, room=(1 << 40, "test"), baseline=0)
    assert recomputed.parts["activations"] < ample.parts["activations"]
    between = (recomputed.total + ample.total) / 2 / 0.9  # fits only with checkpointing
    tight = plan(shape, "full", tokens=4096, room=(int(between), "test"), baseline=0)
    assert tight.checkpointing and tight.fits and "checkpointing on" in tight.reason
    full = tiny_model.params_total
    assert ample.parts["gradients"] == 4 * full and ample.parts["optimizer"] == 8 * full  # fp32 grads, AdamW moments
    assert plan(shape, "full", tokens=4096, processes=3, room=(1 << 40, "t"), baseline=0).total > 2.9 * ample.total
    # weights large against activations, as in a real model: full does not fit where LoRA does
    wide = ModelShape.of(LlamaConfig(vocab_size=20000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1))
    lora = plan(wide, "lora", tokens=64, room=(1 << 40, "t"), baseline=0)
    refused = plan(wide, "full", tokens=64, room=(int(lora.total / 0.85), "cgroup memory.max 0.0 GiB"), baseline=0)
    assert not refused.fits and refused.alternatives[0].startswith("--method lora")
    with pytest.raises(MemoryPlanError, match=r"^will not fit: full .* needs .* Would fit: --method lora"):
        check(refused)


def test_a_run_that_will_not_fit_is_refused_before_anything_is_written(tiny_model, tiny_task, tmp_path,
                                                                        monkeypatch):
    from tunelab.errors import MemoryPlanError

    monkeypatch.setenv("TUNELAB_MEMORY_LIMIT_MB", "1")
    with pytest.raises(MemoryPlanError, match="will not fit"):
        finetune(tiny_model, tiny_task, TuneConfig(method="full", min_steps=0), out_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())


def test_a_small_training_set_is_repeated_to_reach_min_steps(tiny_model, tiny_task, tmp_path):
    steps = []
    config = TuneConfig(method="lora", epochs=2, batch_size=4, min_steps=12, val_fraction=0.25)
    predictor = finetune(tiny_model, tiny_task, config, out_dir=tmp_path / "t",
                         on_step=lambda n, loss: steps.append(n))
    n_train = predictor.meta["training"]["n_train"]
    passes = tuning.passes_per_epoch(n_train, config)
    assert passes > 1 and len(steps) >= 12 and sum(steps) == 2 * passes * n_train
    assert predictor.meta["training"]["passes_per_epoch"] == passes  # what a tokens/s figure must count
    assert tuning.passes_per_epoch(600, config) == 1  # a large set is never repeated
    lengths = [len(e.text) for e in tiny_task.train[:n_train]]
    assert sorted(tuning._epoch_order(lengths, passes, config, 1)) == sorted(list(range(n_train)) * passes)


def test_length_groups_keep_every_example_and_batch_similar_lengths():
    lengths = [int(n) for n in torch.randint(5, 400, (256,), generator=torch.Generator().manual_seed(1))]
    grouped, shuffled = (TuneConfig(batch_size=8, length_groups=on) for on in (True, False))
    order = tuning._epoch_order(lengths, 2, grouped, 0)
    assert sorted(order) == sorted(list(range(256)) * 2)  # every example, once a pass
    assert order == tuning._epoch_order(lengths, 2, grouped, 0) != tuning._epoch_order(lengths, 2, grouped, 1)

    def spread(order):  # mean (longest - shortest) within a batch
        batches = [order[i : i + 8] for i in range(0, len(order), 8)]
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    assert spread(order) < 0.3 * spread(tuning._epoch_order(lengths, 2, shuffled, 0))


def test_row_tokens_counts_what_the_forward_pass_runs(tiny_bpe_model):
    verbalizer = Verbalizer.for_task(tiny_bpe_model.tokenizer, make_task(
        "t", "classification", [Example("a", "positive"), Example("b", "negative")], [Example("c", "positive")]))
    pairs = verbalizer.pairs(verbalizer.fmt.instruction, ["short", LONG[:300], "a middling text of some words"])
    prefix = PrefixCache(verbalizer.prefix_ids(verbalizer.fmt.instruction))
    seen = {}

    def capture(module, args, kwargs):
        seen.update(rows=kwargs["input_ids"].numel(), real=int(kwargs["attention_mask"].sum()), width=kwargs[
            "attention_mask"].shape[1] - kwargs["input_ids"].shape[1])

    handle = tiny_bpe_model.lm.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        label_log_likelihoods(tiny_bpe_model.lm, prefix, pairs, tiny_bpe_model.tokenizer.pad_token_id)
    finally:
        handle.remove()
    real, run = tuning.row_tokens(prefix, pairs)
    n_rows = seen["rows"] // (seen["rows"] // len({p.ids for row in pairs for p in row}) or 1)
    assert run == seen["rows"] and real == seen["real"] - seen["width"] * n_rows  # the prefix columns are not rows
    assert 0 < real < run  # three lengths: some padding


def test_length_groups_cut_the_padding_training_reports(tiny_bpe_model, tmp_path):
    rng = np.random.default_rng(0)
    train = [Example(" ".join(["word"] * int(n)), "positive" if i % 2 else "negative")
             for i, n in enumerate(rng.integers(2, 60, 200))]
    task = make_task("lengths", "classification", train, train[:4])
    shares = {}
    for on in (True, False):
        config = TuneConfig(method="lora", epochs=1, batch_size=4, min_steps=0, length_groups=on)
        padding = finetune(tiny_bpe_model, task, config, out_dir=tmp_path / str(on)).meta["training"]["padding"]
        shares[on] = padding["share"]
        assert padding["shuffled_share"] > 0.2  # what shuffled batches of 2..60 words pad
    assert shares[True] < 0.5 * shares[False]
    assert shares[False] == pytest.approx(padding["shuffled_share"])  # the same count, the same order


def test_a_training_budget_stops_early_keeps_the_weights_and_says_so(tiny_model, tiny_task, tmp_path, capsys):
    config = TuneConfig(method="lora", epochs=3, batch_size=4, min_steps=0, val_fraction=0.25, budget_s=1e-6)
    predictor = finetune(tiny_model, tiny_task, config, out_dir=tmp_path / "t")
    training = predictor.meta["training"]
    assert training["cut_short"]["steps_run"] == 1 and training["epochs_run"] == 1
    assert training["cut_short"]["steps_in_epoch"] > 1
    assert load_predictor(tmp_path / "t").predict_batch(_texts(tiny_task))  # saved and usable
    assert any("cut short by --budget-s" in line for line in tuning.training_notes(tuning.run_summary(predictor)))
    with pytest.raises(ConfigError, match="--budget-s must be > 0"):
        TuneConfig(budget_s=0)


def test_a_deadline_stops_before_a_step_that_would_end_past_it(monkeypatch):
    from tunelab import training

    clock = [100.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    deadline = training.Deadline(10.0)
    assert not deadline.reached()  # the first step always runs
    clock[0] += 4.0
    deadline.step_done()
    assert not deadline.reached()  # 4 s used, a 4 s step ends at 8 s
    clock[0] += 4.0
    deadline.step_done()
    assert deadline.reached()  # a third 4 s step would end at 12 s, past 10 s
    assert not training.Deadline(None).reached()


def test_a_budget_that_ends_at_an_epoch_boundary_keeps_the_finished_epoch(tiny_model, tiny_task, tmp_path,
                                                                          monkeypatch):
    config = TuneConfig(method="lora", epochs=3, batch_size=4, min_steps=0, val_fraction=0.25, budget_s=100.0)
    n_train = len(tuning.split_examples(list(tiny_task.train), tiny_task.kind, 0.25, 0)[0])
    per_epoch = -(-n_train // 4)

    class AfterOneEpoch(tuning.Deadline):
        def reached(self):
            return self.steps >= per_epoch

    monkeypatch.setattr(tuning, "Deadline", AfterOneEpoch)
    training = finetune(tiny_model, tiny_task, config, out_dir=tmp_path / "t").meta["training"]
    assert training["cut_short"] == {"epoch": 2, "steps_run": 0, "steps_in_epoch": per_epoch, "budget_s": 100.0}
    assert training["epochs_run"] == training["best_epoch"] == 1 and len(training["history"]) == 1


def test_a_widened_bf16_linear_gives_fp32_gradients_of_its_input():
    from tunelab.rungs.low_precision import _WidenedLinear

    torch.manual_seed(0)
    weight = torch.randn(5, 3).to(torch.bfloat16)
    x = torch.randn(4, 3, requires_grad=True)
    y = _WidenedLinear.apply(x, weight, None)
    assert y.dtype == torch.float32 and torch.allclose(y, x @ weight.float().T)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.ones(4, 5) @ weight.float())


def test_lora_on_a_bf16_base_trains_reloads_as_trained_and_leaves_the_base_alone(tiny_model, tiny_task, tmp_path):
    from tunelab.models import weights_fingerprint
    from tunelab.predictor import load_predictor, predict

    before = weights_fingerprint(tiny_model.lm)
    config = TuneConfig(method="lora", base_precision="bf16", epochs=2, lr=5e-2, batch_size=4, val_fraction=0.25,
                        min_steps=0)
    tuned = finetune(tiny_model, tiny_task, config, out_dir=tmp_path / "bf16")
    frozen = {p.dtype for name, p in tuned.model.lm.named_parameters() if "lora_" not in name}
    adapters = {p.dtype for name, p in tuned.model.lm.named_parameters() if "lora_" in name}
    assert frozen == {torch.bfloat16} and adapters == {torch.float32}  # half the base's memory; fp32 adapters
    assert tuned.params_total == tiny_model.params_total  # the adapter merges into the base's own weights
    assert weights_fingerprint(tiny_model.lm) == before and next(tiny_model.lm.parameters()).dtype == torch.float32
    texts = [e.text for e in tiny_task.test]
    loaded = load_predictor(tmp_path / "bf16")
    assert loaded.fingerprint == tuned.fingerprint
    assert np.allclose(predict(loaded, texts).probs, predict(tuned, texts).probs, atol=1e-6)
    fp32 = finetune(tiny_model, tiny_task, dataclasses.replace(config, base_precision="fp32"), out_dir=tmp_path / "f")
    assert fp32.fingerprint != tuned.fingerprint  # another base, another model


def test_a_bf16_base_is_for_unmerged_lora_only():
    with pytest.raises(ConfigError, match="base-precision bf16 applies"):
        TuneConfig(method="full", base_precision="bf16")
    with pytest.raises(ConfigError, match="base-precision bf16 applies"):
        TuneConfig(method="lora", base_precision="bf16", merge=True)


def test_lora_on_a_base_loaded_in_bf16_shares_its_weights_and_reloads_on_the_same_base(tiny_model, tiny_task,
                                                                                        tmp_path):
    tiny_model.save(tmp_path / "base")
    base = load_model(tmp_path / "base", precision="bf16")
    assert base.weights_precision == "bf16" and base is not load_model(tmp_path / "base")
    config = TuneConfig(method="lora", base_precision="bf16", epochs=1, lr=5e-2, batch_size=4, val_fraction=0.25,
                        min_steps=0)
    tuned = finetune(base, tiny_task, config, out_dir=tmp_path / "lora")
    plan = tuned.meta["training"]["memory_plan"]
    assert plan["parts"]["training copy"] == 0 and plan["parts"]["weights"] == 2 * base.params_total
    stored = {p.untyped_storage().data_ptr() for p in base.lm.parameters()}
    frozen = [p for name, p in tuned.model.lm.named_parameters() if "lora_" not in name]
    assert all(p.untyped_storage().data_ptr() in stored for p in frozen)  # lent, not copied
    loaded = load_predictor(tmp_path / "lora")
    texts = [e.text for e in tiny_task.test]
    assert loaded.fingerprint == tuned.fingerprint
    assert np.allclose(predict(loaded, texts).probs, predict(tuned, texts).probs, atol=1e-6)
