"""The whole ladder on documents within a time budget: its plan against the time each section took, in one run.

Writes N training and M test sotu-party passages (a fixed sample) as CSV files, the way a user brings their own
documents, then runs `tunelab ladder --train ... --test ... --budget-s B` (every rung) and prints, from its
report: each section's estimate, budget and measured seconds, what the budget cut short, the ETA's error, the
padding share of the fine-tuning batches, and each rung's accuracy with its interval.

    python bench/ladder_docs.py [--train 300] [--test 100] [--budget-s 1200] [--out runs/bench-ladder-docs]
    python bench/ladder_docs.py --data runs/mails --target-quality 0.9   # CSVs written by bench/mails.py
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunelab.tasks import load_task


def write_csv(path: Path, examples) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([e.text, e.label] for e in examples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--budget-s", type=float, default=1200.0, help="the ladder's --budget-s (0: none)")
    parser.add_argument("--data", type=Path, help="a folder with train.csv and test.csv to use instead of sotu-party")
    parser.add_argument("--target-quality", type=float, default=0.7)
    parser.add_argument("--rungs", help="the ladder's --rungs (default: every rung)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ladder-docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or args.out
    if args.data is None:
        task, rng = load_task("sotu-party"), random.Random(0)
        write_csv(args.out / "train.csv", rng.sample(task.train, args.train))
        write_csv(args.out / "test.csv", rng.sample(task.test, args.test))
    command = [sys.executable, "-m", "tunelab.cli", "ladder", "--train", str(data / "train.csv"), "--test",
               str(data / "test.csv"), "--target-quality", str(args.target_quality), "--out", str(args.out / "run")]
    command += ["--budget-s", str(args.budget_s)] if args.budget_s else []
    command += ["--rungs", args.rungs] if args.rungs else []
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    report = json.loads((args.out / "run" / "report.json").read_text())
    plan = report["plan"]
    table = Table(title=f"ladder on {data} (CSV), --budget-s "
                        f"{args.budget_s:.0f}: {wall / 60:.1f} min in all")
    for column in ("section", "estimate s", "budget s", "measured s", "cut short"):
        table.add_column(column)
    for section in plan["sections"]:
        budget = section.get("budget_s")
        cut = report["cut_short"].get(section["name"])
        table.add_row(section["name"], f"{section['estimate_s']:.0f}", "-" if budget is None else f"{budget:.0f}",
                      "-" if section.get("seconds") is None else f"{section['seconds']:.0f}",
                      "" if not cut else json.dumps(cut))
    after = plan["seconds_after_plan"]
    table.add_row("total", f"{plan['estimate_s']:.0f}", "", f"{after:.0f}",
                  f"ETA error {(plan['estimate_s'] - after) / after:+.0%}; {plan['seconds_before_plan']:.0f} s "
                  "of precision check and probes before the plan")
    console = Console()
    console.print(table)
    rungs = Table(title="rungs")
    for column in ("rung", "accuracy [95%]", "examples/s", "build s", "padding (shuffled)"):
        rungs.add_column(column)
    for name, result in report["rungs"].items():
        metrics, padding = result["metrics"], result.get("padding")
        low, high = metrics["intervals"]["accuracy"]
        rungs.add_row(name, f"{metrics['accuracy']:.3f} [{low:.3f}, {high:.3f}]", f"{metrics['examples_per_s']:,.1f}",
                      f"{result.get('train_seconds', 0):.0f}",
                      f"{padding['share']:.1%} ({padding['shuffled_share']:.1%})" if padding else "")
    console.print(rungs)
    choice = report["choice"]
    console.print(f"cheapest to build at the target: {choice['cheapest_to_build']}; fastest to serve: "
                  f"{choice['fastest_to_serve']}")


if __name__ == "__main__":
    main()
