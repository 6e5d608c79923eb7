"""Data-parallel scaling of fine-tuning on this machine: 1 process x C threads against N processes x C/N threads.

Each arm is `tunelab tune` in its own processes on the same task files and the same global batch (written once from
a built-in task, so every arm trains on the same examples); the table shows training tokens/s per process and in
all (padding not counted; from the artifact's training.distributed record), the wall time, and the scaling
efficiency: N-process tokens/s over the one-process tokens/s (1.0 = the same machine does the same work as fast;
on a CPU whose cores one process already uses, data parallelism can only win what one process leaves idle). On a
GPU machine the one-GPU row is the same command with one process.

    python bench/scale.py [--task vader] [--train 256] [--method lora] [--nproc 2] [--out runs/bench-scale]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunelab.tasks import load_task


def write_task(task_name: str, n_train: int, out: Path) -> list[str]:
    task = load_task(task_name)
    rng = random.Random(0)
    train = rng.sample(task.train, min(n_train, len(task.train)))
    test = rng.sample(task.test, min(64, len(task.test)))
    for name, examples in (("train.jsonl", train), ("test.jsonl", test)):
        (out / name).write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples))
    return ["--train", str(out / "train.jsonl"), "--test", str(out / "test.jsonl")]


def arm(files: list[str], args, nproc: int, threads: int, out: Path) -> dict:
    folder = out / f"{nproc}x{threads}"
    threads_flag = [] if nproc > 1 else ["--threads", str(threads)]  # a job of N shares the cores out itself
    command = [sys.executable, "-m", "tunelab.cli", *threads_flag, "tune", *files, "--method", args.method,
               "--epochs", "1",
               "--min-steps", "0", "--batch-size", str(args.batch_size), "--precision", args.precision,
               "--out", str(folder), "--overwrite", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    wall = time.perf_counter() - started
    training = json.loads((folder / "tunelab.json").read_text())["training"]
    return {"processes": nproc, "threads": threads, "wall_s": wall, "train_s": training["train_seconds"],
            **training["distributed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="vader")
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-scale"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    files = write_task(args.task, args.train, args.out)
    rows = [arm(files, args, 1, cores, args.out), arm(files, args, args.nproc, max(1, cores // args.nproc), args.out)]
    base = rows[0]["tokens_per_s"]
    table = Table(title=f"{args.method} on {args.task} ({args.train} examples, global batch {args.batch_size}, "
                        f"{args.precision}, {cores} cores)")
    for column in ("processes x threads", "tokens/s per process", "tokens/s in all", "scaling efficiency",
                   "train s", "wall s (with start-up)", "backend"):
        table.add_column(column)
    for row in rows:
        table.add_row(f"{row['processes']} x {row['threads']}",
                      ", ".join(f"{r:,.0f}" for r in row["tokens_per_s_per_process"]), f"{row['tokens_per_s']:,.0f}",
                      f"{row['tokens_per_s'] / base:.2f}", f"{row['train_s']:.1f}", f"{row['wall_s']:.1f}",
                      row["backend"])
    Console(width=160).print(table)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
