"""Shared fixtures: tiny random models built from a config in memory, tiny tasks, an offline environment."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no hub, ever; set before transformers is imported
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from tokenizers.models import BPE, WordLevel  # noqa: E402
from tokenizers.pre_tokenizers import Whitespace  # noqa: E402
from tokenizers.trainers import BpeTrainer  # noqa: E402
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402,E501

from tunelab.models import make_model  # noqa: E402
from tunelab.tasks import Example, make_task  # noqa: E402

POSITIVE_WORDS = ["good", "great", "nice", "happy", "lovely", "superb", "fine", "kind"]
NEGATIVE_WORDS = ["bad", "awful", "poor", "sad", "nasty", "grim", "vile", "cruel"]
TEMPLATE_WORDS = ["Text", "Label", "Word", "Sentiment", "Rating", "Classify", "each", "word", ":", ".", "/",
                  "positive", "negative", "N", "A", "[", "]", "MASK", *[str(i) for i in range(1, 10)]]


@pytest.fixture(autouse=True)
def fp32_unless_asked(monkeypatch):
    """`--precision auto` resolves to fp32 in tests, as on a device without fast bf16: the exactness tests compare
    against fp32 references, and CI's CPU may lack bf16 anyway. Tests of bf16 itself set the speed-up they need."""
    monkeypatch.setattr("tunelab.scoring.precision.bf16_speedup", lambda device_type: 0.0)


@pytest.fixture(autouse=True)
def tunelab_home(tmp_path, monkeypatch):
    home = tmp_path / "tunelab-home"
    monkeypatch.setenv("TUNELAB_HOME", str(home))
    return home


def _llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    # Sizes follow transformers' causal_lm_tester: an odd intermediate size makes shape mix-ups fail.
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         pad_token_id=1, bos_token_id=None, eos_token_id=None)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def word_tokenizer():
    """Word-level: every label is one token."""
    words = ["[UNK]", "[PAD]", *TEMPLATE_WORDS, *POSITIVE_WORDS, *NEGATIVE_WORDS]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A small BPE: labels split into several tokens, to test multi-token scoring."""
    backend = Tokenizer(BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    trainer = BpeTrainer(vocab_size=70, special_tokens=["[UNK]", "[PAD]"])
    corpus = TEMPLATE_WORDS + POSITIVE_WORDS + NEGATIVE_WORDS
    backend.train_from_iterator(corpus * 3, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture
def tiny_model(word_tokenizer):
    return make_model(_llama(len(word_tokenizer)), word_tokenizer, name="tiny-llama",
                      device=torch.device("cpu"))


@pytest.fixture
def tiny_bpe_model(bpe_tokenizer):
    return make_model(_llama(len(bpe_tokenizer)), bpe_tokenizer, name="tiny-bpe", device=torch.device("cpu"))


@pytest.fixture
def tiny_encoder_dir(word_tokenizer, tmp_path):
    """A BERT far smaller than the tiny teacher, saved like a pretrained encoder folder."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(word_tokenizer), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=13, max_position_embeddings=32, pad_token_id=1)
    BertModel(config).save_pretrained(tmp_path / "encoder")
    word_tokenizer.save_pretrained(tmp_path / "encoder")
    return tmp_path / "encoder"


@pytest.fixture
def tiny_task():
    train = [Example(w, "positive") for w in POSITIVE_WORDS[:6]] + [Example(w, "negative") for w in NEGATIVE_WORDS[:6]]
    test = [Example(w, "positive") for w in POSITIVE_WORDS[6:]] + [Example(w, "negative") for w in NEGATIVE_WORDS[6:]]
    return make_task("tiny", "classification", train, test, instruction="Classify each word .\n",
                     template="Word: {text}\nSentiment: {label}")


@pytest.fixture
def tiny_regression_task():
    words = POSITIVE_WORDS + NEGATIVE_WORDS
    values = np.linspace(-3, 3, len(words))
    examples = [Example(w, float(v)) for w, v in zip(words, values)]
    return make_task("tiny-valence", "regression", examples[::2], examples[1::2], value_range=(-4.0, 4.0),
                     template="Word: {text}\nRating: {label}")


class LetterEmbedder:
    """A deterministic stand-in for MiniLM: normalised letter counts."""

    def encode(self, texts):
        vectors = np.zeros((len(texts), 26))
        for i, text in enumerate(texts):
            for ch in text.lower():
                if "a" <= ch <= "z":
                    vectors[i, ord(ch) - 97] += 1
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


@pytest.fixture
def letter_embedder():
    return LetterEmbedder()
