"""Students for distillation: the teacher with evenly spaced layers kept and initialised from its own weights
(`pruned:N`, as DistilBERT did), or a small pretrained encoder with a head (`encoder:PATH`, `minilm`)."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from tunelab.config import DistillConfig
from tunelab.errors import ConfigError, ModelError
from tunelab.models import (
    LOCAL_ONLY,
    MODEL_LOCAL_ONLY,
    Model,
    bundled_minilm_path,
    check_model_folder,
    choose_device,
    count_parameters,
    make_model,
    module_facts,
)
from tunelab.predictor import ENCODER_BATCH, Predictions, Predictor, write_artifact_json
from tunelab.rungs.causal_lm import CausalLMPredictor
from tunelab.scoring.length import (
    TRAIN_MAX_TOKENS,
    check_max_length,
    fit_texts,
    length_quantile,
    special_frame,
    text_tokens,
    window_spans,
)
from tunelab.scoring.precision import autocast
from tunelab.scoring.verbalizer import Verbalizer, resolve_max_length
from tunelab.tasks import Task
from tunelab.tasks.fields import encoder_texts


def decoder_layers(lm: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The module holding the decoder's layer list, and the list's attribute name (`layers`, `h`, `blocks`, ...):
    the ModuleList with one entry per hidden layer.

    Raises:
        ModelError: no such list (a layout pruning does not know).
    """
    n_layers = getattr(lm.config, "num_hidden_layers", None)
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm
    for owner in (decoder, *decoder.modules()):
        for name, child in owner.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == n_layers:
                return owner, name
    raise ModelError(f"cannot prune {type(lm).__name__}: no list of its {n_layers} decoder layers was found")


def prune_layers(lm: torch.nn.Module, keep: int) -> torch.nn.Module:
    """A copy of the causal LM with `keep` evenly spaced decoder layers (first and last kept), same weights."""
    owner, name = decoder_layers(lm)
    total = len(getattr(owner, name))
    if keep >= total:
        raise ConfigError(f"--student pruned:{keep} is not smaller than the teacher ({total} layers)")
    indices = sorted({round(i * (total - 1) / max(1, keep - 1)) for i in range(keep)}) if keep > 1 else [0]
    student = copy.deepcopy(lm)
    owner, name = decoder_layers(student)
    setattr(owner, name, torch.nn.ModuleList([getattr(owner, name)[i] for i in indices]))
    for new_index, layer in enumerate(getattr(owner, name)):
        for module in layer.modules():  # the key/value cache is indexed by position in the new stack
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    student.config.num_hidden_layers = len(indices)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in indices]
    student.kept_layers = indices
    return student


class EncoderStudent:
    """A small pretrained encoder with a classification (or one-value regression) head; reads the bare text."""

    rung = "distill"
    min_batch_size = ENCODER_BATCH

    def __init__(self, encoder: torch.nn.Module, tokenizer, *, kind: str, label_names: tuple[str, ...], meta: dict):
        self.encoder, self.tokenizer, self.meta = encoder, tokenizer, meta
        self.kind, self.label_names = kind, tuple(label_names)

    @property
    def params_total(self) -> int:
        return count_parameters(self.encoder)[0]

    @property
    def params_trainable(self) -> int:
        return self.params_total  # every weight of the student is trained

    @property
    def fingerprint(self) -> str:
        """Covers what decides a prediction: the weights, the kind and the label space."""
        weights = Model(self.encoder, self.tokenizer, name="student").fingerprint
        decided_by = json.dumps([weights, self.kind, list(self.label_names)]
                                + ([self.meta["thresholds"]] if "thresholds" in self.meta else [])
                                + (["bf16"] if self.precision == "bf16" else [])
                                + ([self.long_texts, self.max_length] if self.long_texts == "windows" else [])
                                + ([list(self.text_fields)] if self.text_fields else []))
        return hashlib.sha256(decided_by.encode()).hexdigest()[:16]

    def describe_model(self) -> dict:
        return {"model": self.meta.get("spec", "encoder"), **module_facts(self.encoder)}

    @property
    def thresholds(self) -> list[float]:
        """Several labels an example: each label's threshold (chosen after distillation; 0.5 before)."""
        return self.meta.get("thresholds", [0.5] * len(self.label_names))

    @property
    def max_length(self) -> int:
        return self.meta.get("max_length") or self.meta["config"]["max_length"]

    @property
    def long_texts(self) -> str:
        return self.meta.get("long_texts", "cut")  # artifacts from before windows cut

    @property
    def text_fields(self) -> tuple[str, ...]:
        return tuple(self.meta.get("text_fields", ()))

    @text_fields.setter
    def text_fields(self, fields: tuple[str, ...]) -> None:  # load_predictor sets it from tunelab.json
        if fields:
            self.meta["text_fields"] = list(fields)
        else:
            self.meta.pop("text_fields", None)

    def encoder_texts(self, texts: list[str]) -> list[str]:
        """What the encoder reads: the text, or a record's values joined by its separator token (measured against
        the encoder's text pair in bench/fields.py)."""
        return encoder_texts(texts, self.text_fields, self.tokenizer.sep_token)

    def _fit(self, texts: list[str]) -> list[tuple[str, bool]]:
        """The one length rule (head and tail kept), within the encoder's budget less its [CLS] and [SEP]."""
        texts = self.encoder_texts(texts)
        if self.long_texts == "windows":
            return [(text, False) for text in texts]
        return fit_texts(self.tokenizer, texts, self.max_length - ENCODER_SPECIAL_TOKENS)

    def _windows(self, texts: list[str]) -> list[list[list[int]]]:
        """Each text's windows of at most max_length tokens, special tokens included."""
        room = max(1, self.max_length - ENCODER_SPECIAL_TOKENS)
        stride = max(1, room - min(ENCODER_OVERLAP, room // 4))
        before, after = special_frame(self.tokenizer)
        return [[before + row[a:b] + after for a, b in window_spans(len(row), room, stride)]
                for row in self.tokenizer(self.encoder_texts(texts), add_special_tokens=False).input_ids]

    def count_truncated(self, texts: list[str]) -> int:
        return sum(cut for _, cut in self._fit(texts))

    def count_windows(self, texts: list[str]) -> list[int]:
        return [len(w) for w in self._windows(texts)] if self.long_texts == "windows" else [1] * len(texts)

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens of `texts` as the encoder reads them, after the length policy's cut (windows: every token once)."""
        return text_tokens(self.tokenizer, [text for text, _ in self._fit(texts)])

    @property
    def precision(self) -> str:
        return self.meta.get("precision", "fp32")

    def set_precision(self, precision: str) -> None:
        self.meta["precision"] = precision

    def logits(self, texts: list[str]) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        if self.long_texts == "windows":
            return self._window_logits(texts, device)
        fitted = [text for text, _ in self._fit(texts)]
        batch = self.tokenizer(fitted, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(device)
        with autocast(device, self.precision):
            return self.encoder(**batch).logits.float()  # (n, n_labels), or (n, 1) for regression

    def _window_logits(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """Every window of every text in one pass; a text's output is the mean of its windows' (differentiable, so
        training reads long texts whole too)."""
        per_text = self._windows(texts)
        batch = self.tokenizer.pad({"input_ids": [ids for windows in per_text for ids in windows]},
                                   return_tensors="pt").to(device)
        with autocast(device, self.precision):
            logits = self.encoder(**batch).logits.float()
        counts = torch.tensor([len(windows) for windows in per_text], device=device)
        owner = torch.repeat_interleave(torch.arange(len(texts), device=device), counts)
        summed = torch.zeros(len(texts), logits.shape[1], device=device).index_add(0, owner, logits)
        return summed / counts.unsqueeze(1)

    @torch.no_grad()
    def predict_batch(self, texts: list[str]) -> Predictions:
        self.encoder.eval()
        logits = self.logits(texts).float().cpu()
        if self.kind == "classification":
            return Predictions("classification", self.label_names, probs=torch.softmax(logits, -1).numpy())
        if self.kind == "multilabel":  # one sigmoid per label
            return Predictions("multilabel", self.label_names, probs=torch.sigmoid(logits).numpy(),
                               thresholds=np.asarray(self.thresholds))
        return Predictions("regression", values=logits[:, 0].numpy())

    def save(self, directory: Path) -> None:
        self.encoder.save_pretrained(directory / "model", safe_serialization=True)
        self.tokenizer.save_pretrained(directory / "model")
        write_artifact_json(directory, {"rung": self.rung, "student_type": "encoder", "kind": self.kind,
                                        "max_length": self.max_length,
                                        "labels": list(self.label_names), **self.meta,
                                        "params_total": self.params_total, "params_trainable": self.params_trainable,
                                        "fingerprint": self.fingerprint})


def load_student(directory: Path, payload: dict):
    """Load either kind of student from its artifact folder."""
    if payload.get("student_type") == "pruned":
        return CausalLMPredictor.load(directory, payload)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    meta = {k: payload[k] for k in ("teacher", "spec", "config", "params_teacher", "training", "metrics", "max_length",
                                    "precision", "precision_record", "long_texts", "text_fields", "thresholds")
            if k in payload}
    check_model_folder(directory / "model")
    try:
        encoder = AutoModelForSequenceClassification.from_pretrained(directory / "model", **MODEL_LOCAL_ONLY)
        tokenizer = AutoTokenizer.from_pretrained(directory / "model", **LOCAL_ONLY)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{directory / 'model'}: cannot load the student ({err})") from None
    encoder = encoder.to(choose_device()).eval()
    return EncoderStudent(encoder, tokenizer, kind=payload["kind"], label_names=tuple(payload["labels"]), meta=meta)


ENCODER_SPECIAL_TOKENS = 2  # [CLS] and [SEP] around the text
ENCODER_OVERLAP = 32  # tokens two neighbouring windows of a long text share (at most a quarter of the window)


def _length_sample(task: Task) -> list[str]:
    """The texts a student's derived max_length is measured on: the training texts and some unlabeled ones."""
    return [e.text for e in task.train] + list(task.unlabeled[:1000])


def make_student(teacher: Predictor, task: Task, config: DistillConfig, meta: dict):
    """An untrained student for `teacher`, per `config.student`.

    Raises:
        ConfigError: a student that is not smaller than the teacher, or that cannot be built from it.
    """
    if config.student_type == "pruned":
        model = getattr(teacher, "model", None)
        if not isinstance(model, Model):
            raise ConfigError(f"--student {config.student} needs a causal-LM teacher; this teacher is a "
                              f"{teacher.rung} predictor without one")
        lm = prune_layers(model.lm, int(config.student.split(":")[1]))
        student_model = make_model(lm, model.tokenizer, name=f"{model.name}-pruned{lm.config.num_hidden_layers}",
                                   device=model.device)
        verbalizer = Verbalizer.for_task(model.tokenizer, task)
        max_length = resolve_max_length(verbalizer, _length_sample(task), config.max_length, lm)
        meta = {**meta, "student_type": "pruned", "kept_layers": lm.kept_layers, "max_length": max_length,
                "params_trainable": student_model.params_total}  # every weight of the student is trained
        student = CausalLMPredictor(student_model, verbalizer, meta, rung="distill")
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = bundled_minilm_path() if config.student == "minilm" else Path(config.student.split(":", 1)[1])
        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"--student {config.student}: {path} is not a model folder (no config.json)")
        check_model_folder(Path(path))
        n_outputs = len(task.labels) if task.kind != "regression" else 1
        with torch.random.fork_rng(devices=[]):  # the new head's initialisation draws from the global RNG
            torch.manual_seed(config.seed)
            encoder = AutoModelForSequenceClassification.from_pretrained(path, num_labels=n_outputs, **MODEL_LOCAL_ONLY)
        tokenizer = AutoTokenizer.from_pretrained(path, **LOCAL_ONLY)
        context = check_max_length(config.max_length, encoder, "the student's")
        sample = encoder_texts(_length_sample(task), task.text_fields, tokenizer.sep_token)
        derived = length_quantile([len(ids) for ids in tokenizer(sample).input_ids], context)
        fields = {"text_fields": list(task.text_fields)} if task.text_fields else {}
        meta = {**meta, "max_length": config.max_length or min(derived, context, TRAIN_MAX_TOKENS),
                "long_texts": config.long_texts, **fields}
        student = EncoderStudent(encoder.to(choose_device()), tokenizer, kind=task.kind, label_names=task.labels,
                                 meta=meta)
    if student.params_total >= teacher.params_total:
        raise ConfigError(f"--student {config.student} has {student.params_total:,} parameters, not fewer than the "
                          f"teacher's {teacher.params_total:,}")
    return student




def time_encoder_training(task: Task, config: DistillConfig, n_texts: int = 32) -> float:
    """Seconds per transfer text of an encoder student's training (forward and backward, in the config's precision),
    timed on a fresh copy of the encoder after a warm-up pass: what the ladder's plan counts distillation in."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = bundled_minilm_path() if config.student == "minilm" else Path(config.student.split(":", 1)[1])
    with torch.random.fork_rng(devices=[]):  # the new head's initialisation draws from the global RNG
        encoder = AutoModelForSequenceClassification.from_pretrained(path, num_labels=max(1, len(task.labels)),
                                                                     **MODEL_LOCAL_ONLY).to(choose_device()).train()
    tokenizer = AutoTokenizer.from_pretrained(path, **LOCAL_ONLY)
    texts = ([e.text for e in task.train] + list(task.unlabeled))[:n_texts]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=TRAIN_MAX_TOKENS, return_tensors="pt")
    seconds = 0.0
    for _ in range(2):
        started = time.perf_counter()
        with autocast(encoder.device, "bf16" if config.precision == "bf16" else "fp32"):
            loss = encoder(**batch.to(encoder.device)).logits.float().sum()
        loss.backward()
        seconds = time.perf_counter() - started
    return seconds / len(texts)
