"""The causal-LM predictor of the tune and distill rungs: a (tuned or pruned) causal LM scored through the task's
zero-shot prompt, saved as an artifact folder (the full model, or a LoRA adapter on its base)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from tunelab.errors import ModelError
from tunelab.models import Model, load_model, make_model
from tunelab.predictor import Predictions, load_base_model, save_base_reference, write_artifact_json
from tunelab.rungs.low_precision import bf16_copy, merged_if_it_fits, shared_copy
from tunelab.scoring.length import text_tokens
from tunelab.scoring.precision import autocast
from tunelab.scoring.tokens import PrefixCache, encode_prefix, label_log_likelihoods
from tunelab.scoring.verbalizer import Verbalizer

_META_KEYS = ("method", "base_name", "params_trainable", "config", "training", "metrics", "versions", "student_type",
              "teacher", "teacher_fingerprint", "spec", "params_teacher", "kept_layers", "max_length", "precision",
              "precision_record", "base_precision", "params_total")


def adapter_fingerprint(base_fingerprint: str, state: dict[str, torch.Tensor], config) -> str:
    """The fingerprint of a LoRA-tuned model: its base model's and the adapter's stored numbers and scaling, not the
    merged weights. Merging is float arithmetic whose last bits depend on where it runs: a LoRA trained on a GPU and
    loaded on the same GPU merged to different bits (seen on an H200), and so would one loaded on another device."""
    digest = hashlib.sha256(base_fingerprint.encode())
    scaling = {key: getattr(config, key, None) for key in ("r", "lora_alpha", "use_rslora", "use_dora",
                                                           "fan_in_fan_out")}
    digest.update(json.dumps(scaling, sort_keys=True, default=str).encode())
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def base_fingerprint(fingerprint: str, base_precision: str) -> str:
    """A base's fingerprint as an adapter sees it: a bf16-stored base is another set of numbers."""
    return fingerprint if base_precision == "fp32" else f"{fingerprint}/{base_precision}"


class CausalLMPredictor:
    """A causal LM (fine-tuned, or a pruned student) scored through the task's zero-shot prompt.

    `meta["config"]["max_length"]` bounds every prompt: texts are cut to fit (fit_text), the same rule in training
    and use. A LoRA run keeps its `adapter` (saved alone, loadable on `base_model`) besides the merged weights.
    """

    def __init__(self, model: Model, verbalizer: Verbalizer, meta: dict, *, rung: str, adapter: dict | None = None,
                 base_model: Model | None = None):
        self.model, self.verbalizer, self.meta, self.rung = model, verbalizer, meta, rung
        self.kind, self.label_names = verbalizer.kind, verbalizer.label_names
        self.adapter, self.base_model = adapter, base_model  # LoRA: {"config": LoraConfig, "state": tensors}
        self._prefix: PrefixCache | None = None

    @property
    def max_length(self) -> int:
        """Tokens per prompt (the run's --max-length, or the length derived from its training texts)."""
        return self.meta.get("max_length") or self.meta["config"]["max_length"]

    def count_truncated(self, texts: list[str]) -> int:
        return self.verbalizer.fit(texts, self.max_length)[1]

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens of `texts` as the model reads them, after the length policy's cut."""
        return text_tokens(self.model.tokenizer, self.verbalizer.fit(texts, self.max_length)[0])

    @property
    def params_total(self) -> int:
        # a merged LoRA model: exactly the base model's count; one served unmerged (on a bf16 base) records it
        return self.meta.get("params_total") or self.model.params_total

    @property
    def params_trainable(self) -> int:
        return self.meta.get("params_trainable", self.model.params_total)

    @property
    def fingerprint(self) -> str:
        """Covers what decides a prediction: the weights, the label space and kind, the prompt, the length bound."""
        decided_by = [self.model.fingerprint, self.verbalizer.describe(), self.max_length]
        if self.precision == "bf16":  # fp32 artifacts keep the fingerprints they had before precision was a choice
            decided_by.append("bf16")
        return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def precision(self) -> str:
        return self.meta.get("precision", "fp32")

    def set_precision(self, precision: str) -> None:
        """Score in `precision` from now on (the cached prefix was computed in the old one)."""
        self.meta["precision"], self._prefix = precision, None

    def label_scores(self, texts: list[str], *, train: bool = False) -> torch.Tensor:
        """(n, n_labels) label log-likelihoods; with `train`, with gradients (the instruction encoded per call)."""
        verbalizer, lm, pad_id = self.verbalizer, self.model.lm, self.model.tokenizer.pad_token_id
        pairs = verbalizer.pairs(verbalizer.fmt.instruction, verbalizer.fit(texts, self.max_length)[0])
        with autocast(self.model.device, self.precision):
            if train:
                prefix = PrefixCache(verbalizer.prefix_ids(verbalizer.fmt.instruction))
                return label_log_likelihoods(lm, prefix, pairs, pad_id)[0].float()
            lm = self.model.inference_lm(self.precision)
            with torch.no_grad():
                if self._prefix is None:
                    self._prefix = encode_prefix(lm, verbalizer.prefix_ids(verbalizer.fmt.instruction))
                return label_log_likelihoods(lm, self._prefix, pairs, pad_id)[0].float()

    def predict_batch(self, texts: list[str]) -> Predictions:
        return self.verbalizer.predictions(self.label_scores(texts).cpu())

    def forget_cache(self) -> None:
        """Drop the instruction's cached keys and values (after the weights changed)."""
        self._prefix = None

    def save(self, directory: Path) -> None:
        directory, weights = Path(directory), []
        if self.adapter is not None:
            (directory / "adapter").mkdir(parents=True, exist_ok=True)
            self.adapter["config"].save_pretrained(directory / "adapter")
            from safetensors.torch import save_file

            save_file(self.adapter["state"], directory / "adapter" / "adapter_model.safetensors")
            weights.append("adapter")
        if self.adapter is None or self.meta["config"].get("merge"):
            self.model.save(directory / "model")
            weights.append("model")
        base = save_base_reference(self.base_model, directory) if self.base_model is not None else {}
        write_artifact_json(directory, {
            "rung": self.rung, **self.meta, **base, "weights": weights, **self.verbalizer.describe(),
            "params_total": self.params_total, "params_trainable": self.params_trainable,
            "fingerprint": self.fingerprint,
        })

    @classmethod
    def load(cls, directory: Path, payload: dict) -> CausalLMPredictor:
        """From an artifact folder: the full model in `model/`, or the LoRA `adapter/` on the base it names."""
        if "model" in payload.get("weights", ["model"]):
            model = load_model(directory / "model")
        else:
            from peft import PeftModel
            from safetensors.torch import load_file

            base = load_base_model(directory, payload)
            base_precision = payload.get("base_precision", "fp32")
            try:  # on a bf16 base as it was trained (unmerged), else merged into fresh weights beside the fp32 base
                with warnings.catch_warnings():  # peft reads a property that transformers 5 deprecates
                    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
                    adapted = PeftModel.from_pretrained(bf16_copy(base.lm) if base_precision == "bf16" else
                                                        shared_copy(base.lm), directory / "adapter",
                                                        local_files_only=True)
                state = load_file(directory / "adapter" / "adapter_model.safetensors")
            except (OSError, ValueError, KeyError, RuntimeError) as err:
                raise ModelError(f"{directory / 'adapter'}: cannot load the LoRA adapter ({err})") from None
            config = adapted.peft_config["default"]
            merged = False
            if base_precision != "bf16":  # unmerged, as trained, on a bf16 base; merged in fp32 where it fits
                adapted, merged = merged_if_it_fits(adapted, base.device)
            model = make_model(adapted, base.tokenizer, name=f"{base.name}+lora", device=base.device)
            model.lm.requires_grad_(False)
            model._fingerprint = adapter_fingerprint(base_fingerprint(base.fingerprint, base_precision), state,
                                                     config)
        meta = {key: payload[key] for key in _META_KEYS if key in payload}
        if "model" not in payload.get("weights", ["model"]):
            meta["adapter_merged"] = merged  # where it was not, scoring adds each layer's low-rank product
        predictor = cls(model, Verbalizer.from_description(model.tokenizer, payload), meta, rung=payload["rung"])
        if "model" not in payload.get("weights", ["model"]) and predictor.fingerprint != payload.get("fingerprint"):
            # saved before adapters were fingerprinted: those hashed the merged weights (load_predictor then checks)
            model._fingerprint = None
            model.__dict__.pop("fingerprint", None)  # Model.fingerprint is a cached property
        return predictor

