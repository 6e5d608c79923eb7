"""Distillation: a student with fewer parameters learns a teacher's label distribution on a transfer set.

Loss (Hinton et al. 2015, section 2): T^2 * KL(teacher_T || student_T) on temperature-softened distributions, plus
alpha times the cross-entropy on gold labels where they exist; regression: MSE to the teacher's value plus alpha
times MSE to the gold value. Students: the teacher with evenly spaced layers kept and initialised from its own
weights (`pruned:N`, as DistilBERT did), or a small pretrained encoder with a head (`encoder:PATH`, `minilm`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from tunelab.bulk import BulkConfig, normalise, predict_all, read_inputs, text_key
from tunelab.config import DistillConfig
from tunelab.errors import ConfigError, InputError, ModelError
from tunelab.evaluate import evaluate, headline_quality, quality_metric
from tunelab.models import (
    LOCAL_ONLY,
    Model,
    adamw,
    bundled_minilm_path,
    check_model_folder,
    choose_device,
    count_parameters,
    make_model,
    module_facts,
    tunelab_home,
)
from tunelab.predictor import (
    Predictions,
    Predictor,
    check_fits_task,
    length_batches,
    save_predictor,
    write_artifact_json,
)
from tunelab.store import Store
from tunelab.tasks import Task
from tunelab.verbalizer import (
    TRAIN_MAX_TOKENS,
    CausalLMPredictor,
    Verbalizer,
    context_window,
    expected_rating,
    fit_texts,
    length_quantile,
    rating_to_value,
    resolve_max_length,
    text_tokens,
)

# Characters per student forward/backward pass (about 1,000 tokens; a proxy that needs no tokenizer): a batch of
# long texts accumulates its gradient over several, so a student's activations follow this budget, not the batch
# size times the text length.
MICRO_BATCH_CHARS = 4_000


# ----------------------------------------------------------------------------------------------------------------
# Losses


def soften(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(z / T) from p = softmax(z): p^(1/T), renormalised. Teachers hand over probabilities, not logits."""
    log_probs = torch.log(probs.clamp_min(1e-12)) / temperature
    return torch.softmax(log_probs, dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float,
            rows: int | None = None) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), batch mean (Hinton et al. 2015; T^2 keeps gradients comparable across T).
    `rows`: the whole batch's size when these rows are one micro-batch of it (the sum is divided by it)."""
    student_log_probs = torch.log_softmax(student_logits / temperature, dim=-1)
    divergence = F.kl_div(student_log_probs, soften(teacher_probs, temperature), reduction="sum")
    return divergence * temperature**2 / (rows or len(student_logits))


def distillation_loss(student_logits, teacher_probs, gold, has_gold, temperature: float, alpha: float, *,
                      rows: int | None = None, gold_rows: int | None = None):
    """KD loss plus alpha * cross-entropy on the rows that have a gold label (has_gold: (batch,) bool). For one
    micro-batch of a batch, `rows` and `gold_rows` are the batch's counts, so the micro-batches' losses add up to
    the batch's."""
    loss = kd_loss(student_logits, teacher_probs, temperature, rows)
    if alpha > 0 and has_gold.any():
        gold_loss = F.cross_entropy(student_logits[has_gold], gold[has_gold], reduction="sum")
        loss = loss + alpha * gold_loss / (gold_rows or int(has_gold.sum()))
    return loss


def regression_distillation_loss(student_values, teacher_values, gold, has_gold, alpha: float, *,
                                 rows: int | None = None, gold_rows: int | None = None):
    loss = F.mse_loss(student_values, teacher_values, reduction="sum") / (rows or len(student_values))
    if alpha > 0 and has_gold.any():
        gold_loss = F.mse_loss(student_values[has_gold], gold[has_gold], reduction="sum")
        loss = loss + alpha * gold_loss / (gold_rows or int(has_gold.sum()))
    return loss


# ----------------------------------------------------------------------------------------------------------------
# Students


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
        decided_by = json.dumps([weights, self.kind, list(self.label_names)])
        return hashlib.sha256(decided_by.encode()).hexdigest()[:16]

    def describe_model(self) -> dict:
        return {"model": self.meta.get("spec", "encoder"), **module_facts(self.encoder)}

    @property
    def max_length(self) -> int:
        return self.meta.get("max_length") or self.meta["config"]["max_length"]

    def _fit(self, texts: list[str]) -> list[tuple[str, bool]]:
        """The one length rule (head and tail kept), within the encoder's budget less its [CLS] and [SEP]."""
        return fit_texts(self.tokenizer, texts, self.max_length - ENCODER_SPECIAL_TOKENS)

    def count_truncated(self, texts: list[str]) -> int:
        return sum(cut for _, cut in self._fit(texts))

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens of `texts` as the encoder reads them, after the length policy's cut."""
        return text_tokens(self.tokenizer, [text for text, _ in self._fit(texts)])

    def logits(self, texts: list[str]) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        fitted = [text for text, _ in self._fit(texts)]
        batch = self.tokenizer(fitted, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(device)
        return self.encoder(**batch).logits  # (n, n_labels), or (n, 1) for regression

    @torch.no_grad()
    def predict_batch(self, texts: list[str]) -> Predictions:
        self.encoder.eval()
        logits = self.logits(texts).float().cpu()
        if self.kind == "classification":
            return Predictions("classification", self.label_names, probs=torch.softmax(logits, -1).numpy())
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

    meta = {k: payload[k] for k in ("teacher", "spec", "config", "params_teacher", "training", "metrics", "max_length")
            if k in payload}
    check_model_folder(directory / "model")
    try:
        encoder = AutoModelForSequenceClassification.from_pretrained(directory / "model", **LOCAL_ONLY)
        tokenizer = AutoTokenizer.from_pretrained(directory / "model", **LOCAL_ONLY)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{directory / 'model'}: cannot load the student ({err})") from None
    encoder = encoder.to(choose_device()).eval()
    return EncoderStudent(encoder, tokenizer, kind=payload["kind"], label_names=tuple(payload["labels"]), meta=meta)


ENCODER_SPECIAL_TOKENS = 2  # [CLS] and [SEP] around the text


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
        n_outputs = len(task.labels) if task.is_classification else 1
        with torch.random.fork_rng(devices=[]):  # the new head's initialisation draws from the global RNG
            torch.manual_seed(config.seed)
            encoder = AutoModelForSequenceClassification.from_pretrained(path, num_labels=n_outputs, **LOCAL_ONLY)
        tokenizer = AutoTokenizer.from_pretrained(path, **LOCAL_ONLY)
        context = context_window(encoder)
        if config.max_length is not None and config.max_length > context:
            raise ConfigError(f"--max-length {config.max_length} is larger than the student's context window "
                              f"({context} tokens)")
        derived = length_quantile([len(ids) for ids in tokenizer(_length_sample(task)).input_ids], context)
        meta = {**meta, "max_length": config.max_length or min(derived, context, TRAIN_MAX_TOKENS)}
        student = EncoderStudent(encoder.to(choose_device()), tokenizer, kind=task.kind, label_names=task.labels,
                                 meta=meta)
    if student.params_total >= teacher.params_total:
        raise ConfigError(f"--student {config.student} has {student.params_total:,} parameters, not fewer than the "
                          f"teacher's {teacher.params_total:,}")
    return student


# ----------------------------------------------------------------------------------------------------------------
# Transfer set and training


def read_transfer_texts(path: str | Path) -> list[str]:
    """Unlabeled texts, distinct: one per line, or JSONL objects with a "text" field (bulk.read_inputs).

    Raises:
        InputError: a missing file, an unreadable line, or no texts at all.
    """
    texts = [text.strip() for text in read_inputs(path) if text.strip()]
    if not texts:
        raise InputError("holds no texts; the transfer set is empty", path=path)
    return list(dict.fromkeys(texts))


def _teacher_targets(teacher: Predictor, texts: list[str], gold: dict, task: Task, on_progress):
    """The teacher's outputs on the transfer texts, by bulk inference into a store that later runs reuse."""
    store = Store(tunelab_home() / "teacher-labels.sqlite")
    try:
        predict_all(teacher, texts, store, BulkConfig(batch_size=32), on_progress=on_progress)
        keys = [text_key(normalise(text)) for text in texts]
        stored = store.get_many(teacher.fingerprint, keys)
    finally:
        store.close()
    outputs = [stored[key] for key in keys]
    if task.is_classification:
        soft = torch.tensor([[o.probs[label] for label in task.labels] for o in outputs], dtype=torch.float32)
        gold_index = torch.tensor([task.labels.index(gold[t]) if t in gold else 0 for t in texts])
    else:
        soft = torch.tensor([o.value for o in outputs], dtype=torch.float32)
        gold_index = torch.tensor([float(gold.get(t, 0.0)) for t in texts])
    has_gold = torch.tensor([t in gold for t in texts])
    return soft, gold_index, has_gold


def _student_loss(student, task: Task, config: DistillConfig, texts: list[str], rows: torch.Tensor, targets,
                  batch_rows: int, batch_gold_rows: int) -> torch.Tensor:
    """The distillation loss of `rows` (a micro-batch of a batch of `batch_rows`, `batch_gold_rows` with gold).
    `targets`: (teacher's soft targets, gold labels or values, has-gold flags) for every transfer text."""
    module = student.model.lm if isinstance(student, CausalLMPredictor) else student.encoder
    device = next(module.parameters()).device
    soft, gold, has_gold = (t[rows].to(device) for t in targets)
    batch_texts = [texts[i] for i in rows.tolist()]
    logits = (student.label_scores(batch_texts, train=True) if isinstance(student, CausalLMPredictor)
              else student.logits(batch_texts))
    counts = dict(rows=batch_rows, gold_rows=batch_gold_rows)
    if task.is_classification:
        return distillation_loss(logits, soft, gold, has_gold, config.temperature, config.alpha, **counts)
    values = logits if isinstance(student, EncoderStudent) else rating_to_value(expected_rating(logits),
                                                                                  task.value_range)
    return regression_distillation_loss(values.reshape(-1), soft, gold, has_gold, config.alpha, **counts)


def distill(
    teacher: Predictor,
    task: Task,
    config: DistillConfig = DistillConfig(),
    *,
    out_dir: str | Path | None = None,
    transfer_texts: list[str] | None = None,
    teacher_name: str = "teacher",
    on_label_progress: Callable[[int], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_eval_progress: Callable[[int], None] | None = None,
) -> tuple[Predictor, dict]:
    """Train a student from `teacher` on the transfer set; evaluate both on the test split in this run.

    The transfer set defaults to the training texts plus the task's unlabeled texts; the teacher labels it by
    bulk inference into TUNELAB_HOME/teacher-labels.sqlite, so later students of the same teacher reuse the labels.
    Returns the student and a
    report: both metric sets, params_teacher, params_student, param_ratio, speedup and quality_ratio.

    Raises:
        ConfigError: label space mismatch or a student not smaller than the teacher.
        InputError: an empty transfer set.
    """
    check_fits_task(teacher, task, "the teacher", exact=True)
    texts = transfer_texts if transfer_texts is not None else [e.text for e in task.train] + list(task.unlabeled)
    texts = list(dict.fromkeys(normalise(text) for text in texts if normalise(text)))
    if not texts:
        raise InputError("the transfer set is empty: give --transfer FILE or a task with training texts")
    meta = {"teacher": teacher_name, "teacher_fingerprint": teacher.fingerprint, "spec": config.student,
            "config": asdict(config), "params_teacher": teacher.params_total}
    student = make_student(teacher, task, config, meta)

    gold_labels = {normalise(e.text): e.label for e in task.train}
    soft, gold, has_gold = _teacher_targets(teacher, texts, gold_labels, task, on_label_progress)
    module = student.model.lm if isinstance(student, CausalLMPredictor) else student.encoder
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        module.train()
        trainable = [p for p in module.parameters()]
        for parameter in trainable:
            parameter.requires_grad_(True)
        optimizer = adamw(trainable, lr=config.learning_rate, weight_decay=0.01)
        for epoch in range(config.epochs):
            order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
            for start in range(0, len(texts), config.batch_size):
                rows = order[start : start + config.batch_size]
                batch_rows, batch_gold_rows, loss = len(rows), int(has_gold[rows].sum()), 0.0
                for part in length_batches([texts[i] for i in rows.tolist()], batch_rows, MICRO_BATCH_CHARS):
                    part_loss = _student_loss(student, task, config, texts, rows[part], (soft, gold, has_gold),
                                              batch_rows, batch_gold_rows)
                    part_loss.backward()
                    loss += part_loss.item()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if on_step:
                    on_step(len(rows), loss)
        module.eval()
        for parameter in trainable:
            parameter.requires_grad_(False)
    train_seconds = time.perf_counter() - started
    if isinstance(student, CausalLMPredictor):
        student.forget_cache()

    teacher_metrics = evaluate(teacher, task, on_progress=on_eval_progress)
    student_metrics = evaluate(student, task, on_progress=on_eval_progress)
    quality_key = quality_metric(task.kind)
    quality_ratio = headline_quality(student_metrics) / max(headline_quality(teacher_metrics), 1e-12)
    report = {
        "task": task.name, "rung": "distill", "student": config.student, "quality_metric": quality_key,
        "teacher": teacher_metrics, "student_metrics": student_metrics,
        "params_teacher": teacher.params_total, "params_student": student.params_total,
        "param_ratio": student.params_total / teacher.params_total,
        "speedup": student_metrics["examples_per_s"] / teacher_metrics["examples_per_s"],
        "quality_ratio": quality_ratio, "n_transfer": len(texts), "train_seconds": train_seconds,
    }
    student.meta.update(training={"n_transfer": len(texts), "train_seconds": train_seconds}, metrics=report)
    if out_dir is not None:
        save_predictor(student, out_dir)
    return student, report


def summary_lines(report: dict, out_dir: str | Path) -> list[str]:
    """The distillation report for people: teacher and student side by side, then the ratios."""
    metric = report["quality_metric"]
    lines = [f"distillation on {report['task']}: {report['n_transfer']:,} transfer texts, saved to {out_dir}",
             f"{'model':<24} {metric:>10} {'ex/s':>10} {'params':>14}"]
    for name, metrics in (("teacher", report["teacher"]), (f"student {report['student']}", report["student_metrics"])):
        lines.append(f"{name:<24} {metrics[metric]:>10.3f} {metrics['examples_per_s']:>10.1f} "
                     f"{metrics['params_total']:>14,}")
    lines.append(f"student: {report['param_ratio']:.1%} of the teacher's parameters, {report['speedup']:.1f}x its "
                 f"speed, {report['quality_ratio']:.1%} of its quality ({metric})")
    return lines

