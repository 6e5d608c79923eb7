"""Fine-tuning: full or LoRA (PEFT) training of a causal LM through the verbalizer loss, resumable per epoch.

The model learns to put probability on the right label word after the task's zero-shot prompt, the same scoring
the prompt rung uses, so a tuned model and a prompted one are compared on the same footing. Regression uses the
numeric verbalizer (ratings 1..9): the loss is the squared error of the expected rating, so no head is added and
the tuned model keeps exactly its base model's parameter count.

Why a short explicit loop rather than transformers' Trainer: the loss needs every label's score per example
(a custom compute_loss either way), and the per-epoch checkpoints here are safetensors only (Trainer writes the
optimizer state with torch.save, a pickle) and atomic, which resuming after a SIGKILL relies on.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import time
import warnings
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from transformers import get_linear_schedule_with_warmup

from tunelab.config import TuneConfig
from tunelab.distributed import from_env
from tunelab.errors import ConfigError, TrainingError
from tunelab.measure.evaluate import evaluate, peak_rss_mb
from tunelab.models import Model, count_parameters, make_model
from tunelab.predictor import ARTIFACT_FILE
from tunelab.rungs.causal_lm import CausalLMPredictor, adapter_fingerprint, base_fingerprint
from tunelab.rungs.low_precision import bf16_copy, merge_adapter, merged_if_it_fits, shared_copy
from tunelab.rungs.tuning_loss import (
    _Batch,
    _batches,
    _loss_step,
    _validation_loss,
    micro_batch_tokens,
)
from tunelab.scoring.precision import choose_precision, choose_training_precision, may_train_in_bf16
from tunelab.scoring.tokens import PrefixCache, row_tokens
from tunelab.scoring.verbalizer import Verbalizer, choose_label_thresholds, resolve_max_length
from tunelab.tasks import Task, split_examples
from tunelab.training import (
    Deadline,
    adamw,
    backward_seconds,
    load_trainable,
    read_checkpoint,
    restore_checkpoint,
    training_step,
    write_checkpoint,
)

WARMUP_FRACTION = 0.1
# Gradient checkpointing is the memory plan's choice (plan_memory): on only where the run would not fit without it.
# Measured on 64 sotu passages (~300-token prompts, LoRA, micro-batches of 512 row tokens): without it 225 tokens/s
# and 3.3 GB peak, with it 158 tokens/s and 2.4 GB.
CHECKPOINTS = "checkpoints"


def _prepare_out_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> dict | None:
    """Check the output folder; returns the checkpoint progress to resume from, if any.

    Raises:
        ConfigError: the folder holds something that this run must not silently replace.
    """
    is_run = (out_dir / ARTIFACT_FILE).is_file() or (out_dir / CHECKPOINTS).is_dir()
    if resume:
        progress = read_checkpoint(out_dir / CHECKPOINTS)
        if progress is None:
            finished = (out_dir / ARTIFACT_FILE).is_file()
            raise ConfigError(f"{out_dir}: {'this run already finished' if finished else 'no checkpoint to resume'}"
                              "; run without --resume (add --overwrite to replace it)")
        return progress
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            what = "holds a tunelab run (use --resume to continue it)" if is_run else "exists and is not a tunelab run"
            raise ConfigError(f"{out_dir}: {what}; use --overwrite to replace it")
        shutil.rmtree(out_dir)
    return None


def _checkpointing(lm, on: bool) -> None:
    """Activation (gradient) checkpointing on or off; transformers 5 renames the methods and keeps the old names."""
    kind = "activation" if hasattr(lm, "activation_checkpointing_enable") else "gradient"
    if on:
        getattr(lm, f"{kind}_checkpointing_enable")(**{f"{kind}_checkpointing_kwargs": {"use_reentrant": False}})
    else:
        getattr(lm, f"{kind}_checkpointing_disable")()


def training_copy(lm: torch.nn.Module, config: TuneConfig) -> torch.nn.Module:
    """The model training changes, the caller's staying as it was: LoRA trains on its frozen base (shared, or in
    bf16 with --base-precision bf16); full fine-tuning on a copy of its own."""
    if config.base_precision == "bf16":
        return bf16_copy(lm)
    return shared_copy(lm) if config.method == "lora" else copy.deepcopy(lm)


def _with_adapter(lm, config: TuneConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_targets if config.lora_targets == "all-linear"
                      else [t.strip() for t in config.lora_targets.split(",")], task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # peft reads a property that transformers 5 deprecates; not ours to fix
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
            return get_peft_model(lm, lora), lora
    except ValueError as err:
        raise ConfigError(f"--lora-targets {config.lora_targets!r} does not fit this model ({err})") from None


def run_summary(predictor: CausalLMPredictor, out_dir: Path | None = None) -> dict:
    """A tuned predictor's test metrics with the facts of the run that made it (one --json object)."""
    training = predictor.meta["training"]
    return {**predictor.meta["metrics"], "method": predictor.meta["method"],
            "train_seconds": training["train_seconds"], "peak_rss_mb": training["peak_rss_mb"],
            "epochs_run": training["epochs_run"], "best_epoch": training["best_epoch"],
            "passes_per_epoch": training.get("passes_per_epoch", 1), "distributed": training.get("distributed"),
            "padding": training.get("padding"), "cut_short": training.get("cut_short"),
            "memory_plan": training.get("memory_plan"),
            **({"out": str(out_dir)} if out_dir is not None else {})}


def training_notes(summary: dict) -> list[str]:
    """What a reader of the results table should also know: the padding the batches carried, a budget's cut."""
    notes = []
    if summary.get("padding"):
        padding = summary["padding"]
        notes.append(f"padding: {padding['share']:.1%} of the tokens the forward passes ran"
                     + (f" (shuffled batches: {padding['shuffled_share']:.1%})" if padding["grouped"] else ""))
    if summary.get("cut_short"):
        cut = summary["cut_short"]
        notes.append(f"cut short by --budget-s {cut['budget_s']:.0f}: epoch {cut['epoch']} stopped after "
                     f"{cut['steps_run']} of {cut['steps_in_epoch']} steps; the best weights so far are kept")
    return notes


def training_examples(task: Task, config: TuneConfig) -> int:
    """How many examples training visits at most (epochs x the training part of the split): a progress total."""
    train, _ = split_examples(list(task.train), task.kind, config.val_fraction, config.seed)
    return len(train) * passes_per_epoch(len(train), config) * config.epochs


def passes_per_epoch(n_train: int, config: TuneConfig) -> int:
    """How many times an epoch goes through the training set: once, or more for a set too small to give
    `config.min_steps` optimizer steps in `config.epochs` epochs."""
    examples_per_epoch = math.ceil(config.min_steps / config.epochs) * config.batch_size
    return max(1, math.ceil(examples_per_epoch / n_train))


def _epoch_order(lengths: list[int], passes: int, config: TuneConfig, epoch: int) -> list[int]:
    """The examples of one epoch: `passes` shuffles of the training set, one after the other; the same for a seed
    and an epoch whether or not the run was resumed. With length groups each shuffle is cut into groups of a few
    batches, each group sorted by length (transformers' sampler for its Trainer, used here as a function), so that
    consecutive `batch_size` slices hold texts of similar length."""
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    if not config.length_groups:
        return [i for _ in range(passes) for i in torch.randperm(len(lengths), generator=generator).tolist()]
    from transformers.trainer_pt_utils import get_length_grouped_indices

    return [i for _ in range(passes) for i in get_length_grouped_indices(lengths, config.batch_size,
                                                                          generator=generator)]


def _share(real: int, run: int) -> float:
    return 1 - real / run if run else 0.0


def _seconds_per_token(lm, verbalizer, batch, pad_id: int, cache_prefix: bool, trainable, precision: str) -> float:
    """Forward and backward of the first micro-batch `precision` would run, per prompt token."""
    micro = batch.micro_batches(micro_batch_tokens(precision, lm))[0]
    loss = partial(_loss_step, lm, verbalizer, micro, pad_id, cache_prefix, precision)
    return backward_seconds(loss, trainable) / max(1, micro.tokens)


def padding_share(micro_batches: list[_Batch], prefix: PrefixCache) -> tuple[int, int]:
    """(real, run) row tokens over these micro-batches, as the training forward passes run them."""
    counts = [row_tokens(prefix, micro.pairs) for micro in micro_batches]
    return sum(real for real, _ in counts), sum(run for _, run in counts)


def finetune(
    model: Model,
    task: Task,
    config: TuneConfig = TuneConfig(),
    *,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    on_epoch_end: Callable[[int, float], None] | None = None,
    on_eval_progress: Callable[[int], None] | None = None,
) -> CausalLMPredictor | None:
    """Fine-tune `model` on `task` into `out_dir`; the result has exactly the base model's parameter count.

    Checkpoints are written atomically after every epoch; with `resume` a killed run continues from the last one
    and ends as an uninterrupted run of the same seed would. The best epoch by validation loss is kept, evaluated
    on the test split (`predictor.meta["metrics"]`) and saved; the checkpoints are then removed.
    `on_step(n_examples, loss)`, `on_epoch_end(epoch, val_loss)` and `on_eval_progress(n)` report progress.

    In a data-parallel job (a launcher started the processes: distributed.py) each process trains on its shard of
    every batch, and only rank 0 evaluates, saves and returns the predictor; the others return None.

    Raises:
        ConfigError: bad output folder or LoRA targets. InputError: too few examples to validate on.
        TrainingError: the loss became NaN (the last good checkpoint is kept).
    """
    out_dir = Path(out_dir)
    dist = from_env()  # a data-parallel job when a launcher started this process (distributed.py)
    if dist.is_main:
        progress = _prepare_out_dir(out_dir, resume=resume, overwrite=overwrite)
        if progress is not None and progress["config"] != asdict(config):
            raise ConfigError(f"{out_dir}: --resume needs the same settings as the interrupted run "
                              f"({progress['config']})")
        out_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()  # the others start once rank 0 has checked and cleared the folder
    if not dist.is_main:
        progress = read_checkpoint(out_dir / CHECKPOINTS) if resume else None
    train, validation = split_examples(list(task.train), task.kind, config.val_fraction, config.seed)
    verbalizer = Verbalizer.for_task(model.tokenizer, task)
    pad_id = model.tokenizer.pad_token_id
    max_length = resolve_max_length(verbalizer, [e.text for e in train], config.max_length, model.lm)
    train_texts = [e.text for e in train]
    # auto: train in bf16 where the base model's scores in bf16 agree with fp32 on training texts
    if progress is not None and "training_precision" in progress:  # a resumed run trains as it began
        training_precision = progress["training_precision"]
    else:
        base = CausalLMPredictor(model, verbalizer, {"max_length": max_length}, rung="tune")
        training_precision = dist.broadcast(  # timed on rank 0: every process must train in the same precision
            choose_precision(base, config.precision, train_texts, model.device, task.value_range)
            if dist.is_main else None)

    # decided once, before the training copy is made: a run that would not fit stops here, in one line. Each
    # process plans for itself; `tune --nproc N` planned N processes together before starting them.
    lengths = [len(ids) for ids in model.tokenizer(train_texts, add_special_tokens=False)["input_ids"]]
    memory = dist.broadcast(plan_memory(model, config, training_precision["precision"], max_length, lengths)
                            if dist.is_main else None)
    checkpointing = memory["checkpointing"]
    with torch.random.fork_rng(devices=[]):  # weight init and dropout draw from the global RNG; keep ours apart
        torch.manual_seed(config.seed)
        # the caller's model stays as it was: LoRA trains on its shared frozen weights, full fine-tuning on a copy
        lm = training_copy(model.lm, config)
        lora = None
        if checkpointing:  # recompute activations in backward: memory per layer input, not per operation
            _checkpointing(lm, True)
        if config.method == "lora":
            lm, lora = _with_adapter(lm, config)
        params_total, params_trainable = count_parameters(lm)
        if config.method == "lora":
            params_total -= params_trainable  # the adapter merges into existing weights
        trainable = [p for p in lm.parameters() if p.requires_grad]
        optimizer = adamw(trainable, lr=config.learning_rate, weight_decay=0.0)
        passes = passes_per_epoch(len(train), config)
        steps_per_epoch = math.ceil(passes * len(train) / config.batch_size)
        total_steps = steps_per_epoch * config.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, int(WARMUP_FRACTION * total_steps), total_steps)
        validation_batches = _batches(verbalizer, validation, config, range(len(validation)), max_length)
        if progress is None:
            progress = {"config": asdict(config), "training_precision": training_precision, "epoch": 0,
                        "best_epoch": 0, "best_val_loss": None, "stale_epochs": 0, "history": [], "train_seconds": 0.0}
        else:
            restore_checkpoint(out_dir / CHECKPOINTS, progress, lm, optimizer, scheduler)

        if progress["epoch"] == 0 and not progress["history"] and may_train_in_bf16(training_precision):
            first = _batches(verbalizer, train, config, _epoch_order(lengths, passes, config, 0), max_length)[0]
            timed = partial(_seconds_per_token, lm, verbalizer, first, pad_id, not checkpointing, trainable)
            training_precision = dist.broadcast(  # rank 0's clock decides for all
                choose_training_precision(training_precision, timed) if dist.is_main else None)
            progress["training_precision"] = training_precision
        # the plan's micro-batch, in the precision training settled on (bf16 activations take half the room)
        scale = {("bf16", "fp32"): 2.0, ("fp32", "bf16"): 0.5}.get(
            (training_precision["precision"], memory["precision"]), 1.0)
        max_tokens = min(micro_batch_tokens(training_precision["precision"], lm),
                         int(memory["micro_batch_tokens"] * scale))
        prefix = PrefixCache(verbalizer.prefix_ids(verbalizer.fmt.instruction) if not checkpointing else [])
        shuffled = dataclasses.replace(config, length_groups=False)  # what plain shuffling would pad, for the record
        shuffled_batches = _batches(verbalizer, train, config, _epoch_order(lengths, passes, shuffled, 0), max_length)
        padding = {"grouped": config.length_groups, "real_tokens": 0, "run_tokens": 0, "shuffled_share": _share(
            *padding_share([m for batch in shuffled_batches for m in batch.micro_batches(max_tokens)], prefix))}
        deadline = Deadline(config.budget_s)
        tokens, train_seconds = 0, 0.0  # this process's, in this run (for tokens/s)
        for epoch in range(progress["epoch"], config.epochs):
            if progress["stale_epochs"] >= config.patience or progress.get("cut_short"):
                break
            torch.manual_seed(config.seed * 1000 + epoch)  # dropout masks depend on the epoch, not on resuming
            order = _epoch_order(lengths, passes, config, epoch)
            started = time.perf_counter()
            lm.train()
            losses, n_truncated = [], 0
            batches = _batches(verbalizer, train, config, order, max_length)
            for step, batch in enumerate(batches):
                if deadline.active and dist.broadcast(deadline.reached()):  # rank 0's clock decides for all
                    progress["cut_short"] = {"epoch": epoch + 1, "steps_run": step, "steps_in_epoch": len(batches),
                                             "budget_s": config.budget_s}
                    break
                n_truncated += batch.n_truncated
                local = batch.shard(dist)  # this process's part; each loss is scaled to its share of the whole
                tokens += local.tokens
                micro_batches = local.micro_batches(max_tokens)
                real, run = padding_share(micro_batches, prefix)  # the micro-batches the step runs, counted
                padding.update(real_tokens=padding["real_tokens"] + real, run_tokens=padding["run_tokens"] + run)
                micro_losses = (_loss_step(lm, verbalizer, micro, pad_id, not checkpointing,
                                           training_precision["precision"])
                                * (len(micro.pairs) / len(batch.pairs))
                                for micro in micro_batches)
                loss = training_step(trainable, optimizer, micro_losses, scheduler=scheduler, dist=dist, where=(
                    f"in epoch {epoch + 1}; the last good checkpoint is kept in {out_dir / CHECKPOINTS} "
                    "(try a lower --lr)"))
                losses.append(loss)
                deadline.step_done()
                if on_step:
                    on_step(len(batch.pairs), loss)
            if not losses:  # the budget ended at an epoch's start: nothing new to validate, the last epoch stands
                break
            val_loss = _validation_loss(lm, verbalizer, validation_batches, pad_id, training_precision["precision"],
                                        dist)
            seconds = time.perf_counter() - started
            train_seconds += seconds
            progress["train_seconds"] += seconds
            progress["history"].append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses),
                                        "val_loss": val_loss})
            progress["n_truncated"] = n_truncated // passes  # each training text is visited `passes` times
            if progress["best_val_loss"] is None or val_loss < progress["best_val_loss"]:
                progress.update(best_epoch=epoch + 1, best_val_loss=val_loss, stale_epochs=0)
            else:
                progress["stale_epochs"] += 1
            progress["epoch"] = epoch + 1
            if dist.is_main:  # every process holds the same weights and optimizer state: one writes them
                write_checkpoint(out_dir / CHECKPOINTS, epoch + 1, lm, optimizer, scheduler, progress)
            dist.barrier()
            if on_epoch_end:
                on_epoch_end(epoch + 1, val_loss)

    rates = dist.gather(tokens / train_seconds if train_seconds else 0.0)
    if not dist.is_main:
        return None  # rank 0 evaluates and saves the one artifact
    load_trainable(lm, out_dir / CHECKPOINTS / f"epoch-{progress['best_epoch']:04d}" / "weights.safetensors")
    adapter, merged = None, False
    if lora is not None:
        from peft import get_peft_model_state_dict

        adapter = {"config": lora, "state": {k: v.contiguous() for k, v in get_peft_model_state_dict(lm).items()}}
        if config.base_precision == "fp32" and config.merge:  # the merged model is written: it must be made
            lm, merged = merge_adapter(lm), True
        elif config.base_precision == "fp32" and memory["parts"]["merged copy (after training)"]:
            lm, merged = merged_if_it_fits(lm, model.device)  # planned to fit; checked again now
    if checkpointing:
        _checkpointing(lm, False)
    lm.eval()
    for parameter in lm.parameters():
        parameter.requires_grad_(False)
    tuned = make_model(lm, model.tokenizer, name=f"{model.name}+{config.method}", device=model.device)
    if adapter is not None and not config.merge:  # loaded back by merging again (merged weights load as saved)
        tuned._fingerprint = adapter_fingerprint(base_fingerprint(model.fingerprint, config.base_precision),
                                                 adapter["state"], lora)
    meta = {
        "method": config.method, "base_name": model.name, "params_trainable": params_trainable,
        "config": asdict(config), "max_length": max_length, "base_precision": config.base_precision,
        **({"text_fields": list(task.text_fields)} if task.text_fields else {}),  # for bulk inputs and requests
        "training": {"epochs_run": progress["epoch"], "best_epoch": progress["best_epoch"],
                     "train_seconds": progress["train_seconds"], "history": progress["history"],
                     "n_train": len(train), "passes_per_epoch": passes, "n_validation": len(validation),
                     "peak_rss_mb": peak_rss_mb(),
                     "n_truncated": progress.get("n_truncated", 0), "gradient_checkpointing": checkpointing,
                     "memory_plan": memory,
                     "padding": {"grouped": padding["grouped"], "shuffled_share": padding["shuffled_share"],
                                 "share": _share(padding["real_tokens"], padding["run_tokens"])},
                     "cut_short": progress.get("cut_short"),
                     "distributed": {**dist.describe(), "tokens_per_s_per_process": rates,
                                     "tokens_per_s": sum(rates)}},
        "versions": library_versions(),
    }
    if lora is not None:
        meta["adapter_merged"] = merged  # on a bf16 base, or where a merge would not fit: scored unmerged
    if lora is not None and not merged:  # the adapter is served unmerged: its weights merge into the base's
        meta["params_total"] = params_total
    elif params_total != tuned.params_total:
        raise TrainingError(f"internal: merged model has {tuned.params_total} parameters, base {params_total}")
    predictor = CausalLMPredictor(tuned, verbalizer, meta, rung="tune", adapter=adapter,
                                  base_model=model if lora else None)
    inference_precision = choose_precision(predictor, config.precision, train_texts, model.device, task.value_range)
    predictor.meta["precision_record"] = {"training": training_precision, "inference": inference_precision}
    if task.is_multilabel:  # each label's threshold on the validation split, which training did not fit
        choose_label_thresholds(predictor, validation, task)
    predictor.meta["metrics"] = evaluate(predictor, task, on_progress=on_eval_progress)
    predictor.save(out_dir)  # weights first, tunelab.json last: its presence marks a finished run
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    return predictor


def plan_memory(model: Model, config: TuneConfig, precision: str, max_length: int, lengths: list[int],
                processes: int = 1) -> dict:
    """The run's memory plan (tunelab/memory.py): the largest micro-batch, up to the precision's default, that fits
    with or without gradient checkpointing (checkpointing only where it must: it recomputes every layer).

    Raises:
        MemoryPlanError: not even one prompt a micro-batch fits; the line says what would.
    """
    from tunelab.memory import ModelShape, check, plan

    shape = ModelShape(model.lm.config, model.params_total)
    row = min(max_length, sorted(lengths)[len(lengths) // 2] + 16) if lengths else max_length  # a median prompt
    tokens, first = micro_batch_tokens(precision, model.lm), None
    while True:
        found = plan(shape, config.method, precision=precision, base_precision=config.base_precision, tokens=tokens,
                     rows=max(1, tokens // row), processes=processes, lora_r=config.lora_r, device=model.device,
                     loaded=True, weights_precision=model.weights_precision, merge=config.merge)
        first = first or found
        if found.fits or tokens <= max_length:
            break
        tokens //= 2
    if not found.fits:
        check(first)
    if tokens < micro_batch_tokens(precision, model.lm):
        found.reason += f"; micro-batches of {tokens} tokens, the most that fit"
    return found.describe()


def time_training_step(model: Model, task: Task, config: TuneConfig) -> float:
    """Seconds per training example of one optimizer step as `finetune` would run it (same method, precision,
    length policy, batch size and micro-batches), timed on a copy of the model after a warm-up step on the same
    batch (the first step pays for allocation): what the ladder's plan counts training in."""
    train = list(task.train)[: config.batch_size]
    verbalizer = Verbalizer.for_task(model.tokenizer, task)
    max_length = resolve_max_length(verbalizer, [e.text for e in task.train], config.max_length, model.lm)
    precision = "bf16" if config.precision == "bf16" else "fp32"
    lengths = [len(ids) for ids in model.tokenizer([e.text for e in train], add_special_tokens=False)["input_ids"]]
    memory = plan_memory(model, config, precision, max_length, lengths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        lm = training_copy(model.lm, config)
        if memory["checkpointing"]:
            _checkpointing(lm, True)
        if config.method == "lora":
            lm, _ = _with_adapter(lm, config)
        trainable = [p for p in lm.parameters() if p.requires_grad]
        optimizer = adamw(trainable, lr=config.learning_rate)
        lm.train()
        seconds = 0.0
        batch = _batches(verbalizer, train, config, range(len(train)), max_length)[0]
        for _ in range(2):
            started = time.perf_counter()
            training_step(trainable, optimizer, (_loss_step(lm, verbalizer, micro, model.tokenizer.pad_token_id,
                                                            not memory["checkpointing"], precision)
                                                 for micro in batch.micro_batches(memory["micro_batch_tokens"])))
            seconds = time.perf_counter() - started
    return seconds / len(train)


def library_versions() -> dict:
    import peft
    import transformers

    from tunelab import __version__

    return {"tunelab": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}

