"""The scoring core on every common causal-LM family and on both kinds of tokenizer, all built tiny in memory.

The reference is the exactness invariant (verbalizer.score_reference): the whole prompt string tokenized once and
the model's own forward logits, whatever softcapping or scaling the architecture applies.
"""

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OlmoConfig,
    OlmoForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tunelab.models import make_model
from tunelab.predictor import load_predictor, predict, save_predictor
from tunelab.rungs.causal_lm import CausalLMPredictor
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.rungs.students import prune_layers
from tunelab.rungs.tuning import TuneConfig, finetune
from tunelab.scoring.length import fit_text
from tunelab.scoring.tokens import score_reference
from tunelab.scoring.verbalizer import Verbalizer
from tunelab.tasks import Example, make_task

POSITIVE = ["a good film", "great acting and a kind story", "lovely", "nice, happy ending!", "superb\tcast"]
NEGATIVE = ["a bad film", "awful acting and a cruel story", "grim", "nasty, sad ending?", "vile  plot"]
CORPUS = [f"Review: {t}\nSentiment: {label}\n\n" for t in POSITIVE for label in ("positive", "negative")] + [
    f"Review: {t}\nSentiment: negative\n\n" for t in NEGATIVE] + ["Decide whether each review is positive or negative."]


def _byte_level() -> PreTrainedTokenizerFast:
    """GPT-2/SmolLM2 style: byte-level BPE, no BOS; merges that cross the prompt's boundaries ("\\n\\n" + "Review")."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=["<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS * 3, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>")


def _metaspace() -> PreTrainedTokenizerFast:
    """Llama 2/Mistral/Gemma style: a word-start marker (SentencePiece's "▁") and a BOS token before every text."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<pad>", "<s>"])
    backend.train_from_iterator(CORPUS * 3, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>")


TOKENIZERS = {"byte-level": _byte_level(), "metaspace": _metaspace()}
SIZES = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
             max_position_embeddings=512, initializer_range=0.3)  # large weights: large logits, visible transforms


def _gemma3_config(vocab_size: int) -> Gemma3TextConfig:
    """Gemma 3 as the 270M model is built (sliding-window layers with a global one between them, each with its own
    rotary base; query scaling by query_pre_attn_scalar, not head_dim; sandwich norms; embeddings scaled by
    sqrt(hidden)), shrunk: a 6-token window, so the few-shot prompts' rows reach past it and the prefix cache,
    cropped and repeated, must keep the window right."""
    return Gemma3TextConfig(vocab_size=vocab_size, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=24,
                            sliding_window=6, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                             "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
                            final_logit_softcapping=3.0, **{**SIZES, "num_hidden_layers": 3})


ARCHITECTURES = {
    "llama": lambda v: LlamaForCausalLM(LlamaConfig(vocab_size=v, num_key_value_heads=1, **SIZES)),
    "mistral": lambda v: MistralForCausalLM(MistralConfig(vocab_size=v, num_key_value_heads=1, sliding_window=256,
                                                          **SIZES)),
    "qwen2": lambda v: Qwen2ForCausalLM(Qwen2Config(vocab_size=v, num_key_value_heads=1, **SIZES)),
    "qwen3": lambda v: Qwen3ForCausalLM(Qwen3Config(vocab_size=v, num_key_value_heads=1, head_dim=16, **SIZES)),
    "gemma2": lambda v: Gemma2ForCausalLM(Gemma2Config(vocab_size=v, num_key_value_heads=1, head_dim=16,
                                                       final_logit_softcapping=3.0, sliding_window=256, **SIZES)),
    "gemma3": lambda v: Gemma3ForCausalLM(_gemma3_config(v)),
    "phi3": lambda v: Phi3ForCausalLM(Phi3Config(vocab_size=v, num_key_value_heads=1, pad_token_id=1, **SIZES)),
    "gpt2": lambda v: GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=2, n_positions=512,
                                                 initializer_range=0.3, bos_token_id=0, eos_token_id=0)),
    "gpt-neox": lambda v: GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=v, **SIZES)),
    "granite": lambda v: GraniteForCausalLM(GraniteConfig(vocab_size=v, num_key_value_heads=1, logits_scaling=0.25,
                                                          **SIZES)),
    "olmo": lambda v: OlmoForCausalLM(OlmoConfig(vocab_size=v, num_key_value_heads=1, pad_token_id=1, **SIZES)),
}


def _model(architecture: str, tokenizer_name: str):
    tokenizer = TOKENIZERS[tokenizer_name]
    torch.manual_seed(0)
    lm = ARCHITECTURES[architecture](len(tokenizer))
    return make_model(lm, tokenizer, name=f"tiny-{architecture}", device=torch.device("cpu"))


@pytest.fixture
def sentence_task():
    train = [Example(t, "positive") for t in POSITIVE[:3]] + [Example(t, "negative") for t in NEGATIVE[:3]]
    test = [Example(t, "positive") for t in POSITIVE[3:]] + [Example(t, "negative") for t in NEGATIVE[3:]]
    return make_task("reviews", "classification", train, test, template="Review: {text}\nSentiment: {label}",
                     instruction="Decide whether each review is positive or negative.\n\n")


def _reference(predictor, texts):
    model, fmt = predictor.model, predictor.verbalizer.fmt
    return torch.tensor([[score_reference(model.lm, model.tokenizer, predictor.prefix_text(), fmt.query(t), label)
                          for label in predictor.verbalizer.label_texts] for t in texts])


@pytest.mark.parametrize("tokenizer_name", list(TOKENIZERS))
@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_cached_batched_scores_equal_the_whole_string_reference(architecture, tokenizer_name, sentence_task):
    model = _model(architecture, tokenizer_name)
    texts = [e.text for e in sentence_task.test] + ["x"]  # different lengths: the rows are padded
    for shots in (0, 2):
        predictor = few_shot(model, sentence_task, PromptConfig(shots=shots))
        assert torch.allclose(predictor.log_likelihoods(texts), _reference(predictor, texts), atol=1e-4)


def test_the_transforms_and_the_tokenizers_matter():
    """The suite above can fail: the reference moves with Gemma 2's softcapping and Granite's scaling, and a
    word-start tokenizer gives a label other ids alone than inside the whole string."""
    for architecture, attribute, value in (("gemma2", "final_logit_softcapping", None),
                                           ("granite", "logits_scaling", 1.0)):
        model = _model(architecture, "byte-level")
        before = score_reference(model.lm, model.tokenizer, "Review: a good film\nSentiment:", "", " positive")
        setattr(model.lm.config, attribute, value)
        after = score_reference(model.lm, model.tokenizer, "Review: a good film\nSentiment:", "", " positive")
        assert abs(before - after) > 1e-3, architecture
    for tokenizer in TOKENIZERS.values():  # pieces tokenized apart and joined differ from the whole string
        pieces = ["Decide.\n\n", "Review: a good film\nSentiment:", " positive"]
        apart = sum((tokenizer(piece, add_special_tokens=False).input_ids for piece in pieces), [])
        assert apart != tokenizer("".join(pieces), add_special_tokens=False).input_ids


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "gemma2", "gemma3"])
def test_scores_do_not_depend_on_batch_size_or_batch_mates(architecture, sentence_task):
    predictor = few_shot(_model(architecture, "metaspace"), sentence_task, PromptConfig(shots=1))
    text = "great acting and a kind story"
    alone = predictor.log_likelihoods([text])
    crowded = predictor.log_likelihoods(["x", text, "a much longer review than the others, with more words"])[1]
    assert torch.allclose(alone[0], crowded, atol=1e-5)
    texts = [e.text for e in sentence_task.test]
    by_one = np.concatenate([predict(predictor, [t], batch_size=1).probs for t in texts])
    assert np.allclose(predict(predictor, texts, batch_size=8).probs, by_one, atol=1e-5)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma2", "gemma3", "phi3", "gpt2", "gpt-neox", "granite"])
def test_lora_merge_keeps_the_count_changes_the_scores_and_loads_with_plain_transformers(
        architecture, sentence_task, tmp_path):
    from peft import PeftModel

    model = _model(architecture, "byte-level")
    texts = [e.text for e in sentence_task.test]
    zero_shot = few_shot(model, sentence_task).log_likelihoods(texts)
    config = TuneConfig(method="lora", epochs=1, batch_size=3, lr=5e-2, merge=True, val_fraction=0.34, min_steps=0)
    tuned = finetune(model, sentence_task, config, out_dir=tmp_path / "lora")
    assert tuned.params_total == model.params_total
    scores = tuned.label_scores(texts)
    assert not torch.allclose(scores, zero_shot, atol=1e-3), "tuning changed nothing"
    # The artifact's folders load with plain transformers / PEFT and score the same.
    verbalizer = tuned.verbalizer
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "model").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "model"),
                                        tmp_path / "lora" / "adapter")  # weights differ; only loading is checked
    assert adapted is not None and set(json.loads((tmp_path / "lora" / "tunelab.json").read_text())["weights"]) == {
        "adapter", "model"}
    for i, text in enumerate(texts[:2]):
        reference = [score_reference(plain, model.tokenizer, verbalizer.fmt.instruction, verbalizer.fmt.query(text),
                                     label) for label in verbalizer.label_texts]
        assert torch.allclose(scores[i], torch.tensor(reference), atol=1e-4)
    base_plus_adapter = PeftModel.from_pretrained(model.lm, tmp_path / "lora" / "adapter").merge_and_unload()
    reference = score_reference(base_plus_adapter, model.tokenizer, verbalizer.fmt.instruction,
                                verbalizer.fmt.query(texts[0]), verbalizer.label_texts[0])
    assert abs(scores[0, 0].item() - reference) < 1e-4


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "gpt-neox", "gemma2", "gemma3", "granite", "phi3"])
def test_pruned_students_load_score_and_save(architecture, sentence_task, tmp_path):
    model = _model(architecture, "metaspace")
    pruned = make_model(prune_layers(model.lm, 1), model.tokenizer, device=torch.device("cpu"))
    assert pruned.params_total < model.params_total and pruned.lm.config.num_hidden_layers == 1
    meta = {"config": {"max_length": 64}, "student_type": "pruned", "params_trainable": pruned.params_total}
    student = CausalLMPredictor(pruned, Verbalizer.for_task(model.tokenizer, sentence_task), meta, rung="distill")
    texts = [e.text for e in sentence_task.test]
    before = predict(student, texts).probs
    save_predictor(student, tmp_path / "student")
    loaded = load_predictor(tmp_path / "student")
    assert loaded.fingerprint == student.fingerprint and np.allclose(predict(loaded, texts).probs, before, atol=1e-5)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "student" / "model").eval()
    fmt = student.verbalizer.fmt
    reference = [score_reference(plain, model.tokenizer, fmt.instruction, fmt.query(texts[0]), label)
                 for label in student.verbalizer.label_texts]
    assert torch.allclose(student.label_scores(texts[:1])[0], torch.tensor(reference), atol=1e-4)


def test_fit_text_keeps_head_and_tail_within_the_budget():
    tokenizer = TOKENIZERS["byte-level"]
    text = "Subject: refund please. " + "filler words here " * 40 + "Regards, Ann"
    cut, was_cut = fit_text(tokenizer, text, 40)
    assert was_cut and cut.startswith("Subject: ref") and cut.endswith(", Ann") and "[...]" in cut
    assert len(tokenizer(cut, add_special_tokens=False).input_ids) <= 44  # the marker's tokens may merge a little
    assert fit_text(tokenizer, "short", 20) == ("short", False)


MANY_LABELS = ["good film", "bad film", "kind story", "cruel story", "happy ending", "sad ending", "lovely cast",
               "vile plot", "great acting", "awful acting", "nice", "grim"]


@pytest.mark.parametrize("architecture", ["llama", "gemma3", "gpt2", "qwen2", "gemma2"])
@pytest.mark.parametrize("tokenizer_name", list(TOKENIZERS))
def test_many_labels_read_each_query_once_and_score_as_the_reference(architecture, tokenizer_name, monkeypatch):
    from tunelab.scoring import tokens

    texts = POSITIVE + NEGATIVE + ["a fine cast", "a dull plot"]
    examples = [Example(text, label) for text, label in zip(texts, MANY_LABELS)]
    task = make_task("aspects", "classification", examples, examples[:4], template="Review: {text}\nAspect: {label}")
    predictor = few_shot(_model(architecture, tokenizer_name), task, PromptConfig(shots=1))
    texts = [e.text for e in task.test] + ["x"]
    taken = []
    original = tokens._shared_query_scores
    monkeypatch.setattr(tokens, "_shared_query_scores", lambda *a: taken.append(1) or original(*a))
    shared = predictor.log_likelihoods(texts)
    assert taken, "the shared-query path was not taken"
    assert torch.allclose(shared, _reference(predictor, texts), atol=1e-4)
    monkeypatch.setattr(tokens, "SHARED_QUERY_SAVING", float("inf"))  # the one-pass rows, for comparison
    assert torch.allclose(predictor.log_likelihoods(texts), shared, atol=1e-4)
