import pytest
import torch

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
