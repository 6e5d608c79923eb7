"""Full fine-tuning vs LoRA vs the zero-shot prompt on `vader` with SmolLM2, in one run.

Each arm runs as its own `tunelab` process, so that its peak memory is its own.

    python bench/tune.py [--epochs 2] [--out runs/bench-tune]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from harness import run_tunelab
from rich.console import Console
from rich.table import Table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-tune"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    results = {"zero-shot": run_tunelab("prompt", "--task", "vader", "--shots", "0")}
    for method in ("lora", "full"):
        results[method] = run_tunelab("tune", "--task", "vader", "--method", method, "--epochs", str(args.epochs),
                                      "--out", str(args.out / method))
    full, lora = results["full"], results["lora"]
    table = Table(title=f"fine-tuning on vader (SmolLM2-135M, 540 train / 60 validation / 400 test words, "
                        f"{args.epochs} epochs max)")
    for column in ("arm", "accuracy", "macro-F1", "train s/epoch", "peak RSS MB", "trainable params",
                   "trainable %", "epochs run"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm, r in results.items():
        per_epoch = r["train_seconds"] / r["epochs_run"] if "train_seconds" in r else None
        table.add_row(arm, f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}",
                      f"{per_epoch:.1f}" if per_epoch else "-",
                      f"{r['peak_rss_mb']:,.0f}" if "peak_rss_mb" in r else "-",
                      f"{r['params_trainable']:,}", f"{100 * r['params_trainable'] / r['params_total']:.2f}",
                      str(r.get("epochs_run", "-")))
    console = Console(width=150)
    console.print(table)
    speed = (full["train_seconds"] / full["epochs_run"]) / (lora["train_seconds"] / lora["epochs_run"])
    console.print(f"LoRA vs full: accuracy {100 * (lora['accuracy'] - full['accuracy']):+.1f} points, "
                  f"{speed:.2f}x faster per epoch, {lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}x the peak memory, "
                  f"{100 * lora['params_trainable'] / lora['params_total']:.2f}% of parameters trainable; "
                  f"total parameters {lora['params_total']:,} (LoRA, merged) vs {full['params_total']:,} (full)")


if __name__ == "__main__":
    main()
