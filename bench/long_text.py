"""Long texts: the length policy on the document task (sotu-party), against the old rule and TF-IDF, in one run.

Arms, each a `tunelab` process of its own (so that its peak memory is its own, read with os.wait4):
- prompt: zero-shot, the whole passage (the model's context window bounds it);
- lora: LoRA, 1 epoch, max_length derived from the training texts, texts cut head + tail where longer;
- lora, old rule: the naive baseline, the first session's rule: only the last 64 tokens of each prompt (texts are
  cut to their tail here and written to files, then tuned with --max-length 64);
- full: full fine-tuning under the new policy, for the memory comparison;
- minilm: the MiniLM student distilled from the lora arm (teacher labels on the training and unlabeled passages);
- tfidf: scikit-learn TF-IDF (word 1-2 grams) + logistic regression, fit in this process on the same split;
- lora on vader, the word task, one epoch: the training speed the document task is compared with.
Tokens are SmolLM2 prompt tokens after the arm's cut, the task's instruction not counted (training: per epoch;
prediction: the test split).

    python bench/long_text.py [--task sotu-party] [--train N] [--test N] [--unlabeled N] [--epochs N]
                              [--out runs/bench-long]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from tunelab.models import load_model
from tunelab.scoring.verbalizer import Verbalizer
from tunelab.tasks import load_task

OLD_RULE_TOKENS = 64  # the first session's max_length, keeping the last tokens of each prompt


def run_arm(*args: str) -> tuple[dict, float]:
    """`tunelab ARGS --json` in its own process: (its last JSON line, its own peak RSS in MiB, from wait4)."""
    command = [sys.executable, "-m", "tunelab.cli", *args, "--json"]
    out_path, err_path = Path(f"/tmp/tunelab-bench-{os.getpid()}.out"), Path(f"/tmp/tunelab-bench-{os.getpid()}.err")
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        process = subprocess.Popen(command, stdout=out_file, stderr=err_file)
        _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(command)} failed:\n{err_path.read_text()[-3000:]}")
    lines = out_path.read_text().strip().splitlines()
    return json.loads(lines[-1]), usage.ru_maxrss / 1024


def prompt_tokens(verbalizer: Verbalizer, texts: list[str], max_length: int) -> int:
    fitted, _ = verbalizer.fit(texts, max_length)
    return sum(max(len(p.ids) for p in pairs) for pairs in verbalizer.pairs(verbalizer.fmt.instruction, fitted))


def write_split(path: Path, examples) -> None:
    path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sotu-party")
    parser.add_argument("--train", type=int, default=600, help="training passages (at most the task's 600)")
    parser.add_argument("--test", type=int, default=400, help="test passages (at most the task's 400)")
    parser.add_argument("--unlabeled", type=int, default=1000, help="unlabeled passages in the student's transfer set")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (tunelab tune's default: 2)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-long"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    task = load_task(args.task)
    rng = random.Random(0)
    train, test = rng.sample(task.train, min(args.train, len(task.train))), rng.sample(task.test, args.test)
    model = load_model()
    verbalizer = Verbalizer.for_task(model.tokenizer, task)
    split = {"new": (args.out / "train.jsonl", args.out / "test.jsonl"),
             "old": (args.out / "train-old.jsonl", args.out / "test-old.jsonl")}
    write_split(split["new"][0], train)
    write_split(split["new"][1], test)
    tail_tokens = OLD_RULE_TOKENS - verbalizer.overhead()  # what the old rule left of the text itself

    def tail(text):
        ids = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text if len(ids) <= tail_tokens else text[ids[len(ids) - tail_tokens][0]:]
    write_split(split["old"][0], [type(e)(tail(e.text), e.label) for e in train])
    write_split(split["old"][1], [type(e)(tail(e.text), e.label) for e in test])
    files = lambda which: ["--train", str(split[which][0]), "--test", str(split[which][1])]  # noqa: E731

    results = {}
    results["prompt, zero-shot"] = run_arm("prompt", *files("new"), "--shots", "0")
    results["lora (new policy)"] = run_arm("tune", *files("new"), "--method", "lora", "--epochs", str(args.epochs),
                                                    "--out", str(args.out / "lora"))
    results["lora, old rule (last 64 tokens)"] = run_arm(
        "tune", *files("old"), "--method", "lora", "--epochs", str(args.epochs), "--max-length", str(OLD_RULE_TOKENS),
        "--out", str(args.out / "lora-old"))
    results["full (new policy)"] = run_arm("tune", *files("new"), "--method", "full", "--epochs", str(args.epochs),
                                                    "--out", str(args.out / "full"))
    transfer = args.out / "transfer.txt"
    transfer.write_text("\n".join([e.text for e in train] + list(task.unlabeled[: args.unlabeled])) + "\n")
    student, student_peak = run_arm("distill", "--teacher", str(args.out / "lora"), *files("new"),
                                             "--student", "minilm", "--transfer", str(transfer),
                                             "--out", str(args.out / "minilm"))
    results["minilm student of the lora arm"] = ({**student["student_metrics"],
                                                  "train_seconds": student["train_seconds"]}, student_peak)
    words, words_peak = run_arm("tune", "--task", "vader", "--method", "lora", "--epochs", "1",
                                "--out", str(args.out / "lora-vader"))
    vader = load_task("vader")
    vader_verbalizer = Verbalizer.for_task(model.tokenizer, vader)
    vader_train = [e.text for e in vader.train]
    words_tokens_per_s = (prompt_tokens(vader_verbalizer, vader_train, words["max_length"]) * 0.9  # val_fraction
                          * words["passes_per_epoch"] / words["train_seconds"])
    started = time.perf_counter()
    pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
                             LogisticRegression(max_iter=2000))
    pipeline.fit([e.text for e in train], [e.label for e in train])
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    predicted = pipeline.predict([e.text for e in test])
    tfidf_rate = len(test) / (time.perf_counter() - started)
    tfidf_accuracy = sum(p == e.label for p, e in zip(predicted, test)) / len(test)

    table = Table(title=f"{args.task}: {len(train)} training / {len(test)} test passages (SmolLM2-135M, "
                        f"{args.epochs} epochs)")
    for column in ("arm", "accuracy [95%]", "max tokens", "test cut", "train tokens/s", "predict tokens/s",
                   "predict ex/s", "train s", "peak RSS MiB"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    rows = {}
    for arm, (result, peak) in results.items():
        max_length = result.get("max_length") or 8192
        test_texts = [e.text for e in test] if "old" not in arm else [tail(e.text) for e in test]
        predict_tokens = prompt_tokens(verbalizer, test_texts, max_length) if "minilm" not in arm else None
        train_tokens = (prompt_tokens(verbalizer, [e.text for e in train] if "old" not in arm
                                      else [tail(e.text) for e in train], max_length)
                        if result.get("train_seconds") and "minilm" not in arm else None)
        seconds_per_example = 1 / result["examples_per_s"]
        rows[arm] = {"accuracy": result["accuracy"], "peak": peak, "train_seconds": result.get("train_seconds"),
                     # tokens visited: the training part of the split (val_fraction 0.1 held out), every pass of
                     # every epoch run (--min-steps repeats a small training set within an epoch)
                     "train_tokens_per_s": (train_tokens * 0.9 * result["epochs_run"] * result["passes_per_epoch"]
                                            / result["train_seconds"]
                                            if train_tokens else None)}
        low, high = result["intervals"]["accuracy"]
        table.add_row(arm, f"{result['accuracy']:.3f} [{low:.3f}, {high:.3f}]", str(result.get("max_length") or "-"),
                      str(result.get("n_truncated", "-")),
                      f"{rows[arm]['train_tokens_per_s']:,.0f}" if train_tokens else "-",
                      f"{predict_tokens / len(test) / seconds_per_example:,.0f}" if predict_tokens else "-",
                      f"{result['examples_per_s']:.1f}", f"{result.get('train_seconds') or 0:.0f}", f"{peak:,.0f}")
    table.add_row("tfidf + logistic regression", f"{tfidf_accuracy:.3f}", "-", "0", "-", "-", f"{tfidf_rate:,.0f}",
                  f"{fit_seconds:.1f}", "-")
    table.add_row("lora on vader (word task, 1 epoch)", f"{words['accuracy']:.3f}", str(words["max_length"]), "0",
                  f"{words_tokens_per_s:,.0f}", "-", f"{words['examples_per_s']:.1f}", f"{words['train_seconds']:.0f}",
                  f"{words_peak:,.0f}")
    console = Console(width=160)
    console.print(table)
    lora, old, full = rows["lora (new policy)"], rows["lora, old rule (last 64 tokens)"], rows["full (new policy)"]
    console.print(f"lora vs old rule: {100 * (lora['accuracy'] - old['accuracy']):+.1f} points; vs tfidf: "
                  f"{100 * (lora['accuracy'] - tfidf_accuracy):+.1f} points; lora peak {lora['peak']:,.0f} MiB = "
                  f"{lora['peak'] / full['peak']:.2f}x full fine-tuning's; lora training "
                  f"{lora['train_tokens_per_s']:,.0f} tokens/s = "
                  f"{lora['train_tokens_per_s'] / words_tokens_per_s:.2f}x the word task's {words_tokens_per_s:,.0f}")


if __name__ == "__main__":
    main()
