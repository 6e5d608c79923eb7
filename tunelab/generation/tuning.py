"""The tune rung for generation: LoRA (PEFT) on (seed name, language) -> name pairs, the loss on the name's tokens
only, so that `expand` can run a tuned generator against the prompted one on the same evaluation.

The tuned generator is saved as a plain Hugging Face folder (LoRA merged: exactly as many parameters as its base)
plus `tunelab-generator.json` recording its base, its training pairs, its parameter counts and the shots its prompt
was trained with; `expand --model DIR` reads that file and prompts it the same way.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from tunelab.atomic import replace_folder
from tunelab.distributed import from_env
from tunelab.errors import ConfigError
from tunelab.generation.concepts import Shot
from tunelab.generation.config import GeneratorTuneConfig
from tunelab.generation.prompts import render_prompt
from tunelab.models import Model, count_parameters
from tunelab.rungs.low_precision import merge_adapter, shared_copy
from tunelab.training import adamw, training_step

GENERATOR_FILE = "tunelab-generator.json"


def generator_shots(model_spec: str | Path) -> list[Shot] | None:
    """The shots a tuned generator was trained with (None for a model that is not one)."""
    path = Path(model_spec) / GENERATOR_FILE
    if not path.is_file():
        return None
    return [Shot(**shot) for shot in json.loads(path.read_text(encoding="utf-8"))["shots"]]


def _examples(model: Model, pairs: list[Shot], shots: list[Shot]) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per pair: the prompt's tokens masked with -100, then the name and the end of the turn."""
    tokenizer, examples = model.tokenizer, []
    for pair in pairs:
        prompt, chat = render_prompt(tokenizer, shots, pair.source, pair.language)
        end = "<|im_end|>" if chat and "<|im_end|>" in tokenizer.get_vocab() else (
            tokenizer.eos_token if chat else "\n")
        prompt_ids = tokenizer(prompt, add_special_tokens=not chat).input_ids
        target_ids = tokenizer(pair.name + end, add_special_tokens=False).input_ids
        examples.append((prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids))
    return examples


def _name_loss(lm, batch: list[tuple[list[int], list[int]]], pad_id: int, device) -> torch.Tensor:
    """The summed next-token loss of the names' tokens (the prompt's are masked with -100)."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in batch], device=device)
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=device)
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch], device=device)
    logits = lm(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="sum")


def tune_generator(model: Model, pairs: list[Shot], out_dir: str | Path, config: GeneratorTuneConfig = (
        GeneratorTuneConfig()), *, shots: list[Shot] = (), overwrite: bool = False,
        on_step: Callable[[int, float], None] | None = None) -> dict:
    """LoRA-tune a copy of `model` on `pairs` and save it, merged, to `out_dir` (atomically: the folder appears
    complete or not at all). Returns the training facts. In a data-parallel job each process trains on its shard of
    every batch and rank 0 saves (the others return {})."""
    from peft import LoraConfig, get_peft_model

    if not pairs:
        raise ConfigError("no training pairs: the generator needs (source, language, name) pairs")
    if Path(out_dir).exists() and not overwrite:
        raise ConfigError(f"{out_dir} exists; pass --overwrite to replace it")
    dist = from_env()  # a data-parallel job when a launcher started this process (distributed.py)
    examples = _examples(model, pairs, list(shots))
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        lm = get_peft_model(shared_copy(model.lm), LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                               target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = [p for p in lm.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    optimizer = adamw(trainable, lr=config.lr, weight_decay=0.0)
    started, losses, rng = time.perf_counter(), [], random.Random(config.seed)
    lm.train()
    for epoch in range(config.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = [examples[i] for i in order[start : start + config.batch_size]]
            # the mean over the whole batch's name tokens, of which this process sums its shard's
            n_targets = sum(sum(t != -100 for t in labels[1:]) for _, labels in batch)
            local = dist.shard(batch)
            loss = training_step(trainable, optimizer, [_name_loss(lm, local, pad_id, model.device) / n_targets]
                                 if local else [], dist=dist, where=f"in epoch {epoch + 1} (try a lower --lr)")
            total += loss * len(batch)
            if on_step:
                on_step(len(batch), loss)
        losses.append(total / len(examples))
    lm.eval()
    seconds = time.perf_counter() - started
    if not dist.is_main:
        return {}  # rank 0 saves the one generator
    merged = merge_adapter(lm)
    facts = {"base_model": model.name, "base_fingerprint": model.fingerprint, "pairs": len(pairs),
             "languages": sorted({p.language for p in pairs}), "config": asdict(config), "epoch_losses": losses,
             "train_seconds": seconds, "params_total": count_parameters(merged)[0], "params_trainable": n_trainable,
             "shots": [asdict(s) for s in shots], "distributed": dist.describe()}

    def fill(folder: Path) -> None:
        merged.save_pretrained(folder, safe_serialization=True)
        model.tokenizer.save_pretrained(folder)
        (folder / GENERATOR_FILE).write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")

    replace_folder(out_dir, fill)  # the old folder stays until the new one is complete
    return facts
