"""Label-scarce ladder: only N gold labels; does distillation's teacher-labelled transfer set beat the baselines?

Runs `tunelab ladder --train-labels N` (the other training texts and the task's unlabeled texts go unlabeled; the
distill rung's teacher labels them) on each task and prints the baselines, the teacher candidates and the student
side by side, each with its 95% interval, and the student's paired difference to each baseline.

    python bench/label_scarce.py [--tasks vader,subjectivity] [--labels 32] [--transfer 2000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from harness import run_tunelab
from rich.console import Console
from rich.table import Table

from tunelab.ladder import label_scarce
from tunelab.measure.evaluate import metric_functions
from tunelab.measure.intervals import paired_difference
from tunelab.tasks import load_task


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="vader,subjectivity")
    parser.add_argument("--labels", type=int, default=32)
    parser.add_argument("--rungs", default="tfidf,embed,few,lora,distill")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-label-scarce"))
    args = parser.parse_args()
    table = Table(title=f"label-scarce ladder: {args.labels} gold labels, the rest of the texts unlabeled")
    for column in ("task", "rung", "accuracy [95% interval]", "student - rung [paired 95%]", "params trainable",
                   "build s", "examples/s"):
        table.add_column(column, justify="left" if column in ("task", "rung") else "right")
    for name in args.tasks.split(","):
        out = args.out / name
        run_tunelab("ladder", "--task", name, "--train-labels", str(args.labels), "--rungs", args.rungs,
                    "--out", str(out))
        report = json.loads((out / "report.json").read_text())
        task = load_task(name)
        scarce = label_scarce(task, args.labels)
        accuracy = metric_functions(scarce)["accuracy"]
        codes = {label: i for i, label in enumerate(task.labels)}
        gold = [codes[e.label] for e in task.test]
        student = report["rungs"].get("distill")
        for rung, result in report["rungs"].items():
            metrics = result["metrics"]
            low, high = metrics["intervals"]["accuracy"]
            versus = "-"
            if student and rung != "distill":
                d = paired_difference(accuracy, np.array(gold),
                                      np.array([codes[o] for o in student["test_outputs"]]),
                                      np.array([codes[o] for o in result["test_outputs"]]))
                versus = f"{d['difference']:+.3f} [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}]"
            table.add_row(name, rung + (f" (teacher {Path(result['teacher']).parent.name})" if rung == "distill"
                                        else ""),
                          f"{metrics['accuracy']:.3f} [{low:.3f}, {high:.3f}]", versus,
                          f"{metrics['params_trainable']:,}", f"{result.get('train_seconds', 0):.1f}",
                          f"{metrics['examples_per_s']:.1f}")
        print(f"{name}: recommended {report['choice']['cheapest_to_build']} ({report['choice']['basis']}); "
              f"{report['split_note']}", flush=True)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
