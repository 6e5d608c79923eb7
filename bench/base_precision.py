"""LoRA on a bf16 base against LoRA on the fp32 base: the same task, seed and settings, the quality difference
paired over the test split (95% bootstrap), the training time and each run's peak memory (its own process).

    python bench/base_precision.py [--tasks vader,subjectivity] [--model smollm2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from harness import run_with_peak
from rich.console import Console
from rich.table import Table

from tunelab.measure.evaluate import deciding_metric, gold_and_outputs
from tunelab.measure.intervals import paired_difference
from tunelab.predictor import load_predictor, predict
from tunelab.tasks import load_task


def tuned(task: str, model: str, base: str, out: Path) -> tuple[dict, float]:
    """`tunelab tune` in its own process: its --json result and its peak RSS in GiB."""
    command = [sys.executable, "-m", "tunelab.cli", "tune", "--task", task, "--model", model, "--method", "lora",
               "--base-precision", base, "--precision", "fp32", "--out", str(out), "--overwrite", "--json"]
    code, _, peak, stdout, stderr = run_with_peak(command)
    if code != 0:
        sys.exit(f"{' '.join(command)} failed: {stderr[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="vader,subjectivity")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tunelab-base-precision"))
    args = parser.parse_args()
    table = Table(title=f"LoRA on {args.model}: bf16 base minus fp32 base, paired over each test split (fp32 compute)")
    for column in ("task", "fp32 base", "bf16 base", "bf16 - fp32 [95%]", "same predictions", "train s fp32 / bf16",
                   "peak GiB fp32 / bf16"):
        table.add_column(column)
    for name in args.tasks.split(","):
        task = load_task(name)
        results, outputs = {}, {}
        for base in ("fp32", "bf16"):
            out = Path(args.work) / f"{name}-{base}"
            results[base] = tuned(name, args.model, base, out)
            gold, outputs[base] = gold_and_outputs(task, predict(load_predictor(out), [e.text for e in task.test]))
        paired = paired_difference(deciding_metric(task), gold, outputs["bf16"], outputs["fp32"])
        (fp32, fp32_peak), (bf16, bf16_peak) = results["fp32"], results["bf16"]
        metric = "accuracy" if task.is_classification else "spearman"
        low, high = paired["interval"]
        table.add_row(name, f"{fp32[metric]:.3f}", f"{bf16[metric]:.3f}",
                      f"{paired['difference']:+.3f} [{low:+.3f}, {high:+.3f}]",
                      f"{np.mean(outputs['bf16'] == outputs['fp32']):.1%}",
                      f"{fp32['train_seconds']:.0f} / {bf16['train_seconds']:.0f}",
                      f"{fp32_peak:.2f} / {bf16_peak:.2f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
