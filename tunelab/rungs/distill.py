"""Distillation: a student with fewer parameters learns a teacher's label distribution on a transfer set.

Loss (Hinton et al. 2015, section 2): T^2 * KL(teacher_T || student_T) on temperature-softened distributions, plus
alpha times the cross-entropy on gold labels where they exist; regression: MSE to the teacher's value plus alpha
times MSE to the gold value. The students are built in rungs/students.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from tunelab.config import DistillConfig
from tunelab.distributed import from_env
from tunelab.errors import InputError
from tunelab.measure.evaluate import evaluate, headline_quality, quality_metric
from tunelab.measure.multilabel import choose_thresholds, label_matrix
from tunelab.models import tunelab_home
from tunelab.offline.bulk import BulkConfig, normalise, predict_all, read_inputs, text_key
from tunelab.offline.store import Store
from tunelab.predictor import Predictor, check_fits_task, length_batches, predict, save_predictor
from tunelab.rungs.causal_lm import CausalLMPredictor
from tunelab.rungs.students import EncoderStudent, make_student
from tunelab.scoring.precision import bf16_is_fast, choose_precision, choose_training_precision
from tunelab.rungs.tuning_loss import label_set_loss
from tunelab.scoring.verbalizer import choose_label_thresholds, expected_rating, rating_to_value
from tunelab.tasks import Task
from tunelab.training import Deadline, adamw, backward_seconds, training_step

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


def per_label_distillation_loss(student_logits, teacher_scores, gold, has_gold, alpha: float, *,
                                rows: int | None = None, gold_rows: int | None = None):
    """Several labels an example: one sigmoid per label, binary cross-entropy against the teacher's score of each
    label, plus alpha * the same against the gold labels on the rows that have them."""
    loss = F.binary_cross_entropy_with_logits(student_logits, teacher_scores, reduction="sum") / (
        (rows or len(student_logits)) * student_logits.shape[1])
    if alpha > 0 and has_gold.any():
        gold_loss = F.binary_cross_entropy_with_logits(student_logits[has_gold], gold[has_gold], reduction="sum")
        loss = loss + alpha * gold_loss / ((gold_rows or int(has_gold.sum())) * student_logits.shape[1])
    return loss


def regression_distillation_loss(student_values, teacher_values, gold, has_gold, alpha: float, *,
                                 rows: int | None = None, gold_rows: int | None = None):
    loss = F.mse_loss(student_values, teacher_values, reduction="sum") / (rows or len(student_values))
    if alpha > 0 and has_gold.any():
        gold_loss = F.mse_loss(student_values[has_gold], gold[has_gold], reduction="sum")
        loss = loss + alpha * gold_loss / (gold_rows or int(has_gold.sum()))
    return loss


# ----------------------------------------------------------------------------------------------------------------
# Transfer set and training


def read_transfer_texts(path: str | Path, text_fields: tuple[str, ...] = ()) -> list[str]:
    """Unlabeled texts, distinct: one per line, or JSONL objects with a "text" field (bulk.read_inputs); for a task
    of several fields, JSONL or CSV rows holding them.

    Raises:
        InputError: a missing file, an unreadable line, or no texts at all.
    """
    texts = [text.strip() for text in read_inputs(path, text_fields=text_fields) if text.strip()]
    if not texts:
        raise InputError("holds no texts; the transfer set is empty", path=path)
    return list(dict.fromkeys(texts))


def _teacher_targets(teacher: Predictor, texts: list[str], gold: dict, task: Task, on_progress):
    """The teacher's outputs on the transfer texts, by bulk inference into a store that later runs reuse."""
    store = Store(tunelab_home() / "teacher-labels.sqlite")
    try:
        predict_all(teacher, texts, store, BulkConfig(batch_size=32), on_progress=on_progress)
        keys = [text_key(normalise(text, fields=task.text_fields)) for text in texts]
        stored = store.get_many(teacher.fingerprint, keys)
    finally:
        store.close()
    outputs = [stored[key] for key in keys]
    if task.is_multilabel:  # the teacher's score of each label; gold as the label matrix
        soft = torch.tensor([[o.probs[label] for label in task.labels] for o in outputs], dtype=torch.float32)
        gold_index = torch.tensor([[float(label in gold.get(t, ())) for label in task.labels] for t in texts])
    elif task.is_classification:
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
    if task.is_multilabel and isinstance(student, CausalLMPredictor):  # label log-likelihoods share one softmax
        shares = soft / soft.sum(-1, keepdim=True).clamp_min(1e-12)  # as the tuned rung learns (label_set_loss)
        return label_set_loss(logits, shares) * len(rows) / batch_rows
    if task.is_multilabel:
        return per_label_distillation_loss(logits, soft, gold, has_gold, config.alpha, **counts)
    if task.is_classification:
        return distillation_loss(logits, soft, gold, has_gold, config.temperature, config.alpha, **counts)
    values = logits if isinstance(student, EncoderStudent) else rating_to_value(expected_rating(logits),
                                                                                  task.value_range)
    return regression_distillation_loss(values.reshape(-1), soft, gold, has_gold, config.alpha, **counts)


def _seconds_per_text(student, precision: str, *, trainable, loss: Callable[[], torch.Tensor], n: int) -> float:
    """Forward and backward of one micro-batch in `precision`, per text (choose_training_precision decides)."""
    student.set_precision(precision)
    return backward_seconds(loss, trainable) / max(1, n)


def _epoch_order(lengths: list[int], config: DistillConfig, epoch: int) -> torch.Tensor:
    """The transfer texts' order in one epoch: shuffled, or shuffled in groups sorted by length (as fine-tuning's
    batches, rungs/tuning.py) so that a batch's micro-batches carry little padding."""
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    if not config.length_groups:
        return torch.randperm(len(lengths), generator=generator)
    from transformers.trainer_pt_utils import get_length_grouped_indices

    return torch.tensor(get_length_grouped_indices(lengths, config.batch_size, generator=generator))


def _choose_student_thresholds(student, task: Task) -> None:
    if isinstance(student, CausalLMPredictor):
        choose_label_thresholds(student, list(task.train), task)
        return
    scores = predict(student, [e.text for e in task.train]).probs
    student.meta["thresholds"] = [float(t) for t in choose_thresholds(scores, label_matrix(task, task.train))]


def distill(
    teacher: Predictor,
    task: Task,
    config: DistillConfig = DistillConfig(),
    *,
    out_dir: str | Path | None = None,
    transfer_texts: list[str] | None = None,
    teacher_name: str = "teacher",
    teacher_metrics: dict | None = None,
    on_label_progress: Callable[[int], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_eval_progress: Callable[[int], None] | None = None,
) -> tuple[Predictor, dict]:
    """Train a student from `teacher` on the transfer set; evaluate both on the test split in this run.

    The transfer set defaults to the training texts plus the task's unlabeled texts; the teacher labels it by
    bulk inference into TUNELAB_HOME/teacher-labels.sqlite, so later students of the same teacher reuse the labels.
    `teacher_metrics`: the teacher's evaluate() result on this test split, when the caller measured it already
    (used when its fingerprint is the teacher's). Returns the student and a
    report: both metric sets, params_teacher, params_student, param_ratio, speedup and quality_ratio. In a
    data-parallel job each process trains on its shard of every batch; rank 0 alone evaluates, saves and returns
    them (the others return None, None).

    Raises:
        ConfigError: label space mismatch or a student not smaller than the teacher.
        InputError: an empty transfer set.
    """
    check_fits_task(teacher, task, "the teacher", exact=True)
    texts = transfer_texts if transfer_texts is not None else [e.text for e in task.train] + list(task.unlabeled)
    texts = [normalise(text, fields=task.text_fields) for text in texts]
    texts = list(dict.fromkeys(text for text in texts if text))
    if not texts:
        raise InputError("the transfer set is empty: give --transfer FILE or a task with training texts")
    meta = {"teacher": teacher_name, "teacher_fingerprint": teacher.fingerprint, "spec": config.student,
            "config": asdict(config), "params_teacher": teacher.params_total}
    student = make_student(teacher, task, config, meta)
    dist = from_env()  # a data-parallel job when a launcher started this process (distributed.py)

    gold_labels = {normalise(e.text, fields=task.text_fields): e.label for e in task.train}
    if dist.active and not dist.is_main:
        dist.barrier()  # rank 0 labels the transfer set into the shared store; the others then read it back
    soft, gold, has_gold = _teacher_targets(teacher, texts, gold_labels, task, on_label_progress)
    if dist.active and dist.is_main:
        dist.barrier()
    module = student.model.lm if isinstance(student, CausalLMPredictor) else student.encoder
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        module.train()
        # training runs in bf16 where the device is fast at it; the trained student's parity decides its inference
        fast = dist.broadcast(bf16_is_fast(next(module.parameters()).device.type))  # timed: rank 0 decides
        student.set_precision("bf16" if config.precision == "bf16" or (config.precision == "auto" and fast)
                              else "fp32")
        trainable = [p for p in module.parameters()]
        for parameter in trainable:
            parameter.requires_grad_(True)
        timed_record = {"requested": config.precision, "precision": student.precision}
        if config.precision == "auto" and student.precision == "bf16":  # a timed micro-batch each way decides
            first = _epoch_order([len(text) for text in texts], config, 0)[: config.batch_size]
            part = first[length_batches([texts[i] for i in first.tolist()], len(first), MICRO_BATCH_CHARS)[0]]

            def loss() -> torch.Tensor:
                return _student_loss(student, task, config, texts, part, (soft, gold, has_gold), len(part),
                                     int(has_gold[part].sum()))

            timed = partial(_seconds_per_text, student, trainable=trainable, loss=loss, n=len(part))
            timed_record = dist.broadcast(choose_training_precision(timed_record, timed) if dist.is_main else None)
            student.set_precision(timed_record["precision"])
        training_precision = student.precision
        optimizer = adamw(trainable, lr=config.learning_rate, weight_decay=0.01)
        deadline = Deadline(config.budget_s)
        cut_short = None
        for epoch in range(config.epochs):
            order = _epoch_order([len(text) for text in texts], config, epoch)
            for step, start in enumerate(range(0, len(texts), config.batch_size)):
                if deadline.active and dist.broadcast(deadline.reached()):  # rank 0's clock decides for all
                    cut_short = {"epoch": epoch + 1, "steps_run": step,
                                 "steps_in_epoch": math.ceil(len(texts) / config.batch_size),
                                 "budget_s": config.budget_s}
                    break
                rows = order[start : start + config.batch_size]
                batch_rows, batch_gold_rows = len(rows), int(has_gold[rows].sum())  # of the whole (global) batch
                local = rows[dist.rank :: dist.world]  # this process's shard; the losses are scaled to the whole
                micro_losses = (_student_loss(student, task, config, texts, local[part], (soft, gold, has_gold),
                                              batch_rows, batch_gold_rows)
                                for part in length_batches([texts[i] for i in local.tolist()], batch_rows,
                                                           MICRO_BATCH_CHARS))
                loss = training_step(trainable, optimizer, micro_losses, dist=dist,
                                     where=f"in epoch {epoch + 1} (try a lower --lr)")
                deadline.step_done()
                if on_step:
                    on_step(len(rows), loss)
            if cut_short:
                break
        module.eval()
        for parameter in trainable:
            parameter.requires_grad_(False)
    train_seconds = time.perf_counter() - started
    if not dist.is_main:
        return None, None  # rank 0 evaluates and saves the one student
    inference_precision = choose_precision(student, config.precision, texts, next(module.parameters()).device,
                                           task.value_range)
    student.meta["precision_record"] = {"training": training_precision, "inference": inference_precision,
                                        "training_step_speedup": timed_record.get("training_step_speedup")}
    if isinstance(student, CausalLMPredictor):
        student.forget_cache()
    if task.is_multilabel:  # thresholds on the labelled training examples (the only gold the student has)
        _choose_student_thresholds(student, task)

    if teacher_metrics is None or teacher_metrics.get("fingerprint") != teacher.fingerprint:
        teacher_metrics = evaluate(teacher, task, on_progress=on_eval_progress)  # else measured by the caller
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
        "distributed": dist.describe(), "cut_short": cut_short,
    }
    student.meta.update(training={"n_transfer": len(texts), "train_seconds": train_seconds, "cut_short": cut_short,
                                  "distributed": dist.describe()}, metrics=report)
    if out_dir is not None:
        save_predictor(student, out_dir, task.text_fields)
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
    if report.get("cut_short"):
        cut = report["cut_short"]
        lines.append(f"cut short by --budget-s {cut['budget_s']:.0f}: epoch {cut['epoch']} stopped after "
                     f"{cut['steps_run']} of {cut['steps_in_epoch']} steps")
    return lines

