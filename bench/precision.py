"""bf16 against fp32 on the same split, in one run: accuracy with its interval (and the paired difference),
examples/s and tokens/s for zero-shot scoring and LoRA training, on a word task (vader) and a document task
(sotu-party). The naive baseline is fp32; `auto` picks bf16 only where it is as good.

    python bench/precision.py [--tasks vader,sotu-party] [--train 200] [--test 200] [--epochs 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from tunelab.config import PromptConfig, TuneConfig
from tunelab.measure.evaluate import evaluate_predictions, gold_and_outputs
from tunelab.measure.intervals import paired_difference
from tunelab.models import load_model
from tunelab.rungs.prompting import few_shot
from tunelab.rungs.tuning import finetune
from tunelab.tasks import load_task


def subsample(task, n_train: int, n_test: int):
    rng = random.Random(0)
    return dataclasses.replace(task, train=tuple(rng.sample(task.train, min(n_train, len(task.train)))),
                               test=tuple(rng.sample(task.test, min(n_test, len(task.test)))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="vader,sotu-party")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default="runs/bench-precision")
    args = parser.parse_args()
    model = load_model()
    table = Table(title="bf16 against fp32, same split (accuracy [95%]; the difference is paired)")
    for column in ("task", "rung", "precision", "accuracy [95%]", "bf16 - fp32 [95%]", "ex/s", "train s",
                   "speed-up"):
        table.add_column(column)
    for name in args.tasks.split(","):
        task = subsample(load_task(name), args.train, args.test)
        arms = {}
        for precision in ("fp32", "bf16"):
            started = time.perf_counter()
            zero = few_shot(model, task, PromptConfig(precision=precision))
            metrics, predictions = evaluate_predictions(zero, task)
            arms[("zero", precision)] = (metrics, predictions, time.perf_counter() - started, 0.0)
            config = TuneConfig(method="lora", precision=precision, epochs=args.epochs, min_steps=0)
            tuned = finetune(model, task, config, out_dir=f"{args.out}/{name}-lora-{precision}", overwrite=True)
            metrics, predictions = evaluate_predictions(tuned, task)
            arms[("lora", precision)] = (metrics, predictions, 0.0, tuned.meta["training"]["train_seconds"])
        for rung in ("zero", "lora"):
            fp32, bf16 = arms[(rung, "fp32")], arms[(rung, "bf16")]
            gold, first = gold_and_outputs(task, bf16[1])
            _, second = gold_and_outputs(task, fp32[1])
            paired = paired_difference(lambda g, o: float(np.mean(g == o)), gold, first, second)
            for precision, (metrics, _, _, train_s) in (("fp32", fp32), ("bf16", bf16)):
                low, high = metrics["intervals"]["accuracy"]
                difference = (f"{paired['difference']:+.3f} [{paired['interval'][0]:+.3f}, "
                              f"{paired['interval'][1]:+.3f}]") if precision == "bf16" else ""
                speed = (bf16[0]["examples_per_s"] / fp32[0]["examples_per_s"] if rung == "zero"
                         else fp32[3] / bf16[3])
                table.add_row(name, rung, precision, f"{metrics['accuracy']:.3f} [{low:.3f}, {high:.3f}]", difference,
                              f"{metrics['examples_per_s']:.1f}", f"{train_s:.0f}" if rung == "lora" else "-",
                              f"{speed:.2f}x ({'scoring' if rung == 'zero' else 'training'})"
                              if precision == "bf16" else "")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
