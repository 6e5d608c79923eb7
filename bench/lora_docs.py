"""What it takes for the tuned rung to tie the frozen-LLM probe on documents (issue #24): one run, same split.

Fits TF-IDF and the probe on sotu-party (its 600/400 split), then fine-tunes LoRA (and full, if asked) under each
setting of a small grid (epochs, learning rate, rank) and prints every arm's accuracy with its interval, the paired
difference against the probe and against TF-IDF, the epochs it ran (early stopping may end sooner), its training
seconds and the device. Results are written after every arm, so a run stopped at --deadline-s keeps what it did.

    python bench/lora_docs.py [--model smollm2|FILE.gguf] [--grid "lora:1e-3:2,lora:1e-3:4,..."]
                              [--train N] [--test N] [--curve] [--deadline-s 480] [--out runs/bench-lora-docs]

A grid entry is method:lr:epochs[:rank]. On this project's CPUs one LoRA epoch over 600 passages costs ~7 minutes,
so the grid is meant for a machine with an accelerator; on a CPU pass --train/--test and a short grid.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from probe import Arms, console, subsample, timed

from tunelab.config import BaselineConfig, ProbeConfig, TuneConfig
from tunelab.models import count_parameters, load_model, make_model
from tunelab.rungs.baseline import fit_baseline
from tunelab.rungs.causal_lm import CausalLMPredictor
from tunelab.rungs.probe import fit_probe
from tunelab.rungs.tuning import _with_adapter, finetune
from tunelab.scoring.precision import bf16_is_fast
from tunelab.scoring.verbalizer import Verbalizer, resolve_max_length
from tunelab.tasks import load_task, split_examples
from tunelab.training import load_trainable

DEFAULT_GRID = "lora:1e-3:2,lora:1e-3:4,lora:1e-3:8,lora:3e-4:8,lora:2e-3:4,lora:1e-3:8:32,full:3e-5:4"


def parse_grid(text: str, min_steps: int) -> list[TuneConfig]:
    configs = []
    for entry in text.split(","):
        method, lr, epochs, *rank = entry.split(":")
        configs.append(TuneConfig(method=method, lr=float(lr), epochs=int(epochs), lora_r=int(rank[0]) if rank else 8,
                                  lora_alpha=2 * int(rank[0]) if rank else 16, min_steps=min_steps))
    return configs


def epoch_predictor(model, task, config: TuneConfig, checkpoint: Path) -> CausalLMPredictor:
    """The tuned model as it stood after one epoch: the epoch's checkpointed adapter, merged into a copy of the base
    (for a learning curve over epochs within one run; the run itself keeps the epoch with the best validation loss).
    Scored in bf16 where bf16 is fast, as the finished arm most likely is (its own choice adds a parity check)."""
    lm, _ = _with_adapter(copy.deepcopy(model.lm), config)
    load_trainable(lm, checkpoint)
    trainable = count_parameters(lm)[1]
    verbalizer = Verbalizer.for_task(model.tokenizer, task)
    train, _ = split_examples(list(task.train), task.kind, config.val_fraction, config.seed)
    max_length = resolve_max_length(verbalizer, [e.text for e in train], config.max_length, model.lm)
    tuned = make_model(lm.merge_and_unload(), model.tokenizer, name=f"{model.name}+lora", device=model.device)
    predictor = CausalLMPredictor(tuned, verbalizer, {"max_length": max_length, "params_trainable": trainable},
                                  rung="tune")
    predictor.set_precision("bf16" if bf16_is_fast(model.device.type) else "fp32")
    return predictor


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--task", default="sotu-party")
    parser.add_argument("--train", type=int, default=None)
    parser.add_argument("--test", type=int, default=None)
    parser.add_argument("--grid", default=DEFAULT_GRID)
    parser.add_argument("--min-steps", type=int, default=TuneConfig.min_steps, help="TuneConfig.min_steps")
    parser.add_argument("--curve", action="store_true",
                        help="also evaluate every LoRA epoch but the last on the test split (a curve over epochs)")
    parser.add_argument("--deadline-s", type=float, default=None, help="start no arm after this many seconds")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-lora-docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = load_model(args.model)
    task = subsample(load_task(args.task), args.train, args.test)
    configs = parse_grid(args.grid, args.min_steps)
    console.print(f"{task.name}: {len(task.train)} train / {len(task.test)} test on {device_name()}; "
                  f"tfidf, probe, then {len(configs)} fine-tuning settings", highlight=False)
    arms = Arms(task)
    record = {"task": task.name, "n_train": len(task.train), "n_test": len(task.test), "device": device_name(),
              "skipped": []}

    def write() -> None:
        table, rows = arms.table(f"{task.name}: {len(task.train)}/{len(task.test)} on {record['device']}",
                                 ("probe", "tfidf"))
        (args.out / "results.json").write_text(json.dumps({**record, "arms": rows}, indent=1, default=str))
        return table

    tfidf, seconds = timed(lambda: fit_baseline(task, BaselineConfig("tfidf")))
    arms.add("tfidf", tfidf, seconds)
    probe, seconds = timed(lambda: fit_probe(model, task, ProbeConfig(), measure=False))
    arms.add("probe", probe.uncached(), seconds, f"layer {probe.layer} {probe.pooling}")
    write()
    for config in configs:
        name = f"{config.method} lr {config.lr:g} epochs {config.epochs}" + (
            f" r {config.lora_r}" if config.method == "lora" and config.lora_r != 8 else "")
        if args.deadline_s and time.perf_counter() - started > args.deadline_s:
            record["skipped"].append(name)  # counted and reported, never dropped silently
            continue
        out_dir = args.out / name.replace(" ", "-")
        arm_started = time.perf_counter()

        def epoch_done(epoch: int, val_loss: float, name=name, config=config, out_dir=out_dir,
                       arm_started=arm_started) -> None:
            # printed as it happens: a run stopped from outside still shows how far each arm got and at what pace
            console.print(f"    {name}: epoch {epoch} done at {time.perf_counter() - arm_started:.0f} s, "
                          f"validation loss {val_loss:.3f}", highlight=False)
            if args.curve and config.method == "lora" and epoch < config.epochs:
                checkpoint = out_dir / "checkpoints" / f"epoch-{epoch:04d}" / "weights.safetensors"
                arms.add(f"{name} @ epoch {epoch}", epoch_predictor(model, task, config, checkpoint),
                         time.perf_counter() - arm_started, f"validation loss {val_loss:.3f}")
                write()

        tuned, seconds = timed(lambda config=config, out_dir=out_dir: finetune(
            model, task, config, out_dir=out_dir, overwrite=True, on_epoch_end=epoch_done))
        training = tuned.meta["training"]
        losses = ", ".join(f"{h['val_loss']:.3f}" for h in training["history"] if "val_loss" in h)
        note = (f"{training['epochs_run']} epochs run, best {training['best_epoch']}, "
                f"{tuned.meta['precision_record']['training']['precision']}; validation loss by epoch {losses}")
        arms.add(name, tuned, seconds, note)
        write()
    console.print(write())
    if record["skipped"]:
        console.print(f"not run (past --deadline-s {args.deadline_s:g}): {', '.join(record['skipped'])}")
    console.print(f"written {args.out / 'results.json'} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
