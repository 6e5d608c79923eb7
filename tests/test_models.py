import json
import subprocess
import sys

import pytest
import torch
from helpers import one_error_line, run_cli
from transformers import BertConfig, BertModel

from tunelab.errors import ModelError
from tunelab.models import choose_device, count_parameters, load_model


def test_parameter_counts_match_the_modules(tiny_model):
    expected = sum(p.numel() for p in tiny_model.lm.parameters())
    assert count_parameters(tiny_model.lm) == (expected, expected)
    tiny_model.lm.get_input_embeddings().weight.requires_grad_(False)
    embeddings = tiny_model.lm.get_input_embeddings().weight.numel()
    assert count_parameters(tiny_model.lm) == (expected, expected - embeddings)


def test_tied_weights_are_counted_once():
    layer = torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(layer, layer)
    assert count_parameters(model) == (20, 20)


def test_fingerprint_follows_the_weights(tiny_model):
    first = tiny_model.fingerprint
    del tiny_model.__dict__["fingerprint"]  # drop the cached value
    assert tiny_model.fingerprint == first
    with torch.no_grad():
        next(tiny_model.lm.parameters()).add_(1.0)
    del tiny_model.__dict__["fingerprint"]
    assert tiny_model.fingerprint != first


def test_folder_round_trip_keeps_outputs_and_facts(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m", device=torch.device("cpu"))
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(loaded.lm(ids).logits, tiny_model.lm(ids).logits, atol=1e-6)
    facts = loaded.describe()
    assert facts["params_total"] == tiny_model.params_total
    assert (facts["layers"], facts["hidden_size"], facts["architecture"]) == (2, 32, "LlamaForCausalLM")
    assert loaded.fingerprint == tiny_model.fingerprint
    assert load_model(tmp_path / "m") is loaded  # cached within the process
    # transformers' default would fetch layer kernels from the hub at train()/eval() on a GPU (failed offline there)
    assert getattr(loaded.lm, "use_kernels", False) is False


def test_device_choice_prefers_an_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert choose_device().type == "cpu"


def test_unloadable_specs_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="GGUF file not found"):
        load_model(tmp_path / "missing.gguf")


def test_a_folder_that_asks_to_run_its_own_code_is_refused_and_its_code_never_runs(tiny_model, tmp_path):
    folder = tmp_path / "remote"
    tiny_model.save(folder)
    marker = tmp_path / "ran.txt"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import LlamaForCausalLM as EvilForCausalLM\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    line = one_error_line(run_cli("info", "--model", folder))
    assert "asks to run its own code" in line and not marker.exists()
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", "info", "--model", str(folder)], input="y\ny\n",
                          capture_output=True, text=True, timeout=120)  # answering "yes" to any prompt changes nothing
    assert done.returncode == 2 and "asks to run its own code" in done.stderr and not marker.exists()


def test_folders_that_are_not_causal_lms_are_one_line(word_tokenizer, tiny_model, tmp_path):
    BertModel(BertConfig(vocab_size=len(word_tokenizer), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=13)).save_pretrained(tmp_path / "bert")
    word_tokenizer.save_pretrained(tmp_path / "bert")
    assert "not a causal language model" in one_error_line(run_cli("info", "--model", tmp_path / "bert"))
    tiny_model.lm.save_pretrained(tmp_path / "no-tokenizer")
    assert "no usable tokenizer" in one_error_line(run_cli("info", "--model", tmp_path / "no-tokenizer"))
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + bytes(200))
    assert "cannot read GGUF" in one_error_line(run_cli("info", "--model", tmp_path / "junk.gguf"))



def test_the_output_head_gets_a_contiguous_input_and_the_same_logits(tiny_model):
    seen = []
    head = tiny_model.lm.get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, out: seen.append(args[0].is_contiguous()))
    ids = torch.randint(0, tiny_model.lm.config.vocab_size, (3, 9))
    try:
        with torch.no_grad():
            kept = tiny_model.lm(input_ids=ids, logits_to_keep=2).logits  # a strided slice of the hidden states
            whole = tiny_model.lm(input_ids=ids).logits
    finally:
        handle.remove()
    assert seen == [True, True]
    assert torch.allclose(kept, whole[:, -2:], atol=1e-5)
    for parameter in tiny_model.lm.parameters():  # frozen, as every tuned model: the path that was slow
        parameter.requires_grad_(False)
    assert tiny_model.inference_lm("bf16").get_output_embeddings()._forward_pre_hooks  # the bf16 copy keeps it


def test_a_released_model_is_loaded_afresh(tiny_model, tmp_path):
    from tunelab.models import release

    tiny_model.save(tmp_path / "m")
    first = load_model(tmp_path / "m", device=torch.device("cpu"))
    release(first)
    assert load_model(tmp_path / "m", device=torch.device("cpu")) is not first
