"""Distillation: a fully fine-tuned SmolLM2 teacher vs pruned and MiniLM students on one task, in one run, next to
the two classical baselines (TF-IDF and frozen MiniLM embeddings + logistic regression) on the same split.

Each student runs as `tunelab distill` (teacher and student evaluated on the same test words in the same
process); the teacher labels the transfer set once, and the later students reuse those labels from the store.
The teacher is trained first (full fine-tuning, 2 epochs) unless --teacher names a finished run.

    python bench/distill.py [--task vader] [--teacher DIR] [--transfer-size 4000] [--students pruned:10,pruned:6,minilm]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from harness import run_tunelab
from rich.console import Console
from rich.table import Table

from tunelab.tasks import load_task


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="vader", help="a built-in task with training and unlabeled texts")
    parser.add_argument("--teacher", type=Path, help="default: runs/bench-tune/full for vader (bench/tune.py's), "
                                                     "else OUT/teacher")
    parser.add_argument("--out", type=Path, help="default: runs/bench-distill, or runs/bench-distill-TASK")
    parser.add_argument("--transfer-size", type=int, default=4000)
    parser.add_argument("--students", default="pruned:10,pruned:6,minilm")
    parser.add_argument("--epochs", default="pruned=1,encoder=3", help="epochs per student type")
    args = parser.parse_args()
    args.out = args.out or Path("runs/bench-distill" if args.task == "vader" else f"runs/bench-distill-{args.task}")
    args.teacher = args.teacher or (Path("runs/bench-tune/full") if args.task == "vader" else args.out / "teacher")
    if not (args.teacher / "tunelab.json").is_file():
        print(f"training the teacher into {args.teacher} (full fine-tuning, 2 epochs)", flush=True)
        run_tunelab("tune", "--task", args.task, "--method", "full", "--epochs", "2", "--out", str(args.teacher),
                "--overwrite")
    task = load_task(args.task)
    args.out.mkdir(parents=True, exist_ok=True)
    transfer = [e.text for e in task.train] + random.Random(0).sample(list(task.unlabeled),
                                                                       args.transfer_size - len(task.train))
    (args.out / "transfer.txt").write_text("\n".join(transfer) + "\n")
    epochs = dict(item.split("=") for item in args.epochs.split(","))
    reports = []
    for spec in args.students.split(","):
        kind = "pruned" if spec.startswith("pruned") else "encoder"
        reports.append(run_tunelab("distill", "--teacher", str(args.teacher), "--task", args.task, "--student", spec,
                               "--transfer", str(args.out / "transfer.txt"), "--epochs", epochs[kind],
                               "--out", str(args.out / spec.replace(":", "-"))))
    baselines = {method: run_tunelab("baseline", "--task", args.task, "--method", method, "--out",
                                     str(args.out / f"baseline-{method}"), "--overwrite")
                 for method in ("tfidf", "embed")}
    fit_seconds = {method: json.loads((args.out / f"baseline-{method}" / "tunelab.json").read_text())["training"]
                   ["train_seconds"] for method in baselines}
    teacher = reports[0]["teacher"]
    table = Table(title=f"distillation on {args.task}: {len(transfer):,} transfer words labelled by the teacher, "
                        f"{len(task.test)} test words")
    for column in ("model", "accuracy [95%]", "params", "param ratio", "examples/s", "speed-up", "quality ratio",
                   "epochs / fit s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    def quality(metrics):
        low, high = metrics["intervals"]["accuracy"]
        return f"{metrics['accuracy']:.3f} [{low:.3f}, {high:.3f}]"

    table.add_row(f"teacher ({args.teacher})", quality(teacher), f"{teacher['params_total']:,}", "1.00",
                  f"{teacher['examples_per_s']:.1f}", "1.0x", "1.00", "-")
    for spec, report in zip(args.students.split(","), reports):
        student = report["student_metrics"]
        table.add_row(f"student {spec}", quality(student), f"{report['params_student']:,}",
                      f"{report['param_ratio']:.2f}", f"{student['examples_per_s']:.1f}", f"{report['speedup']:.1f}x",
                      f"{report['quality_ratio']:.3f}",
                      epochs["pruned" if spec.startswith("pruned") else "encoder"])
    for method, metrics in baselines.items():
        table.add_row(f"baseline {method} (gold labels only)", quality(metrics), f"{metrics['params_total']:,}",
                      f"{metrics['params_total'] / teacher['params_total']:.2f}", f"{metrics['examples_per_s']:.1f}",
                      f"{metrics['examples_per_s'] / teacher['examples_per_s']:.1f}x",
                      f"{metrics['accuracy'] / teacher['accuracy']:.3f}", f"fit {fit_seconds[method]:.1f} s")
    Console(width=150).print(table)
    Console(width=150).print("teacher examples/s as measured in each student's run: "
                    + ", ".join(f"{r['teacher']['examples_per_s']:.1f}" for r in reports))


if __name__ == "__main__":
    main()
