"""The frozen-LLM probe against the baselines, on documents and on words, in one run (issue #24).

Sections, each printed as a table:
- documents: sotu-party (its 600/400 split, or --train/--test): TF-IDF, embed (windows and head + tail cut), the
  probe (first run with an empty feature cache, then a second run that reads it back), optionally LoRA (--lora);
  every rung's accuracy with its interval, and the paired difference against TF-IDF and against the probe;
- whole texts against a cut: at a window of --window tokens, the probe reading passages whole in windows against
  the probe reading them cut (head + tail) to the same length; the MiniLM student (distilled from the probe, on the
  training texts) the same way;
- words (--words vader,subjectivity): the probe against embed (and LoRA with --lora), build time and examples/s.

Each section uses a fresh feature cache under --out, so "first run" means nothing was cached.

    python bench/probe.py [--train N] [--test N] [--window 128] [--words vader,subjectivity] [--lora]
                          [--out runs/bench-probe]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from tunelab.config import BaselineConfig, DistillConfig, ProbeConfig, TuneConfig
from tunelab.measure.evaluate import deciding_metric, evaluate_predictions, gold_and_outputs, headline_quality
from tunelab.measure.intervals import paired_difference
from tunelab.models import load_model
from tunelab.rungs.baseline import fit_baseline
from tunelab.rungs.distill import distill
from tunelab.rungs.probe import fit_probe
from tunelab.rungs.tuning import finetune
from tunelab.scoring.length import fit_texts
from tunelab.tasks import Example, load_task

console = Console(width=160)


def subsample(task, n_train: int | None, n_test: int | None, seed: int = 0):
    rng = random.Random(seed)
    train = tuple(rng.sample(task.train, n_train)) if n_train and n_train < len(task.train) else task.train
    test = tuple(rng.sample(task.test, n_test)) if n_test and n_test < len(task.test) else task.test
    return dataclasses.replace(task, train=train, test=test)


def cut_task(task, tokenizer, max_tokens: int):
    """The task with every text cut to `max_tokens` tokens of `tokenizer` (head and tail kept), and how many were."""
    def cut(examples):
        fitted = fit_texts(tokenizer, [e.text for e in examples], max_tokens)
        return tuple(Example(text, e.label, e.extra) for (text, _), e in zip(fitted, examples))
    n_cut = sum(c for _, c in fit_texts(tokenizer, [e.text for e in task.train + task.test], max_tokens))
    return dataclasses.replace(task, train=cut(task.train), test=cut(task.test)), n_cut


class Arms:
    """Measured rungs of one task: metrics, test outputs (for paired differences) and build seconds."""

    def __init__(self, task):
        self.task, self.rows = task, {}

    def add(self, name: str, predictor, build_s: float, note: str = ""):
        metrics, predictions = evaluate_predictions(predictor, self.task)
        _, outputs = gold_and_outputs(self.task, predictions)
        self.rows[name] = {"metrics": metrics, "outputs": outputs, "build_s": build_s, "note": note}
        console.print(f"  {name}: {headline_quality(metrics):.3f} built in {build_s:.1f} s", highlight=False)

    def table(self, title: str, against: tuple[str, ...]) -> tuple[Table, dict]:
        gold, _ = gold_and_outputs(self.task, _dummy(self.task))
        metric = deciding_metric(self.task)
        table = Table(title=title)
        for column in ("arm", "quality [95%]", *(f"- {a} [95%]" for a in against), "build s", "examples/s",
                       "params total", "trainable", "windows/text", "note"):
            table.add_column(column)
        record = {}
        for name, row in self.rows.items():
            m = row["metrics"]
            low, high = m["intervals"][next(k for k in ("accuracy", "spearman") if k in m)]
            differences = {}
            for other in against:
                if other in self.rows and other != name:
                    differences[other] = paired_difference(metric, gold, row["outputs"], self.rows[other]["outputs"])
            cells = [f"{d['difference']:+.3f} [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}]"
                     if (d := differences.get(a)) else "-" for a in against]
            table.add_row(name, f"{headline_quality(m):.3f} [{low:.3f}, {high:.3f}]", *cells, f"{row['build_s']:.1f}",
                          f"{m['examples_per_s']:.1f}", f"{m['params_total']:,}", f"{m['params_trainable']:,}",
                          f"{m.get('windows_per_text', 1.0):.2f}", row["note"])
            record[name] = {"quality": headline_quality(m), "interval": [low, high], "build_s": row["build_s"],
                            "examples_per_s": m["examples_per_s"], "params_total": m["params_total"],
                            "params_trainable": m["params_trainable"], "versus": differences, "note": row["note"]}
        return table, record


def _dummy(task):
    from tunelab.predictor import Predictions

    if task.is_classification:
        probs = np.zeros((len(task.test), len(task.labels)))
        probs[:, 0] = 1
        return Predictions("classification", task.labels, probs=probs)
    return Predictions("regression", values=np.zeros(len(task.test)))


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def fresh_home(out: Path, name: str) -> None:
    """An empty feature cache (and teacher-label store) for the section; the model was loaded before."""
    os.environ["TUNELAB_HOME"] = str(out / name)


def documents(model, args, out: Path) -> dict:
    fresh_home(out, "documents")
    task = subsample(load_task("sotu-party"), args.train, args.test)
    console.print(f"documents: {task.name}, {len(task.train)} train / {len(task.test)} test passages")
    arms = Arms(task)
    for name, config in (("tfidf", BaselineConfig("tfidf")), ("embed (windows)", BaselineConfig("embed")),
                         ("embed (cut)", BaselineConfig("embed", long_texts="cut"))):
        predictor, seconds = timed(lambda config=config: fit_baseline(task, config))
        arms.add(name, predictor, seconds)
    probe, seconds = timed(lambda: fit_probe(model, task, ProbeConfig(), measure=False))
    arms.add("probe", probe.uncached(), seconds, f"layer {probe.layer} {probe.pooling}; empty cache")
    again, seconds_again = timed(lambda: fit_probe(model, task, ProbeConfig(), measure=False))
    arms.add("probe, second run", again.uncached(), seconds_again,
             f"{again.meta['training']['texts_from_cache']} texts from the cache")
    if args.lora:
        config = TuneConfig(method="lora", epochs=args.lora_epochs)
        lora, seconds = timed(lambda: finetune(model, task, config, out_dir=out / "lora-documents", overwrite=True))
        arms.add("lora", lora, seconds, f"{args.lora_epochs} epoch(s), {lora.meta['training']['precision']}")
    table, record = arms.table(f"{task.name}: {len(task.train)}/{len(task.test)}", ("tfidf", "probe"))
    console.print(table)
    return {"task": task.name, "n_train": len(task.train), "n_test": len(task.test), "arms": record,
            "cache_build_ratio": seconds_again / seconds}


def windows_against_cut(model, args, out: Path) -> dict:
    fresh_home(out, "windows")
    task = subsample(load_task("sotu-party"), args.train, args.test)
    window = args.window
    console.print(f"whole against cut: {task.name}, window {window} tokens")
    arms = Arms(task)
    cut_for_probe, n_cut = cut_task(task, model.tokenizer, window - 40)  # the frame takes ~40 of the window
    whole, seconds = timed(lambda: fit_probe(model, task, ProbeConfig(window=window, overlap=window // 4),
                                             measure=False))
    arms.add("probe, whole (windows)", whole.uncached(), seconds, f"window {window}")
    cut, seconds = timed(lambda: fit_probe(model, cut_for_probe, ProbeConfig(), measure=False))
    metrics, predictions = evaluate_predictions(cut.uncached(), cut_for_probe)
    _, outputs = gold_and_outputs(task, predictions)
    arms.rows["probe, cut (head + tail)"] = {"metrics": metrics, "outputs": outputs, "build_s": seconds,
                                            "note": f"{n_cut} of {len(task.train) + len(task.test)} texts cut"}
    transfer = [e.text for e in task.train]
    for mode in ("windows", "cut"):
        config = DistillConfig(max_length=window, long_texts=mode, epochs=args.student_epochs)
        (student, _), seconds = timed(lambda config=config: distill(whole, task, config, transfer_texts=transfer))
        arms.add(f"student, {'whole (windows)' if mode == 'windows' else 'cut (head + tail)'}", student, seconds,
                 f"MiniLM, max_length {window}, teacher: the whole-text probe")
    table, record = arms.table(f"{task.name}: read whole or cut at {window} tokens",
                               ("probe, cut (head + tail)", "student, cut (head + tail)"))
    console.print(table)
    return {"window": window, "arms": record}


def words(model, args, out: Path) -> dict:
    found = {}
    for name in args.words.split(","):
        fresh_home(out, f"words-{name}")
        task = subsample(load_task(name), args.word_train, args.word_test)
        console.print(f"words: {name}, {len(task.train)} train / {len(task.test)} test")
        arms = Arms(task)
        embed, seconds = timed(lambda task=task: fit_baseline(task, BaselineConfig("embed")))
        arms.add("embed", embed, seconds)
        probe, seconds = timed(lambda task=task: fit_probe(model, task, ProbeConfig(), measure=False))
        arms.add("probe", probe.uncached(), seconds, f"layer {probe.layer} {probe.pooling}")
        plain, seconds = timed(lambda task=task: fit_probe(model, task, ProbeConfig(frame="plain"), measure=False))
        arms.add("probe, plain frame", plain.uncached(), seconds, f"layer {plain.layer} {plain.pooling}")
        if args.lora:
            lora, seconds = timed(lambda task=task: finetune(model, task, TuneConfig(method="lora", epochs=1),
                                                             out_dir=out / f"lora-{task.name}", overwrite=True))
            arms.add("lora", lora, seconds, "1 epoch")
        table, record = arms.table(f"{name}: {len(task.train)}/{len(task.test)}", ("embed",))
        console.print(table)
        found[name] = record
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=None, help="sotu-party training passages (default: all 600)")
    parser.add_argument("--test", type=int, default=None, help="sotu-party test passages (default: all 400)")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--student-epochs", type=int, default=3)
    parser.add_argument("--words", default="vader,subjectivity")
    parser.add_argument("--word-train", type=int, default=None)
    parser.add_argument("--word-test", type=int, default=None)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--lora-epochs", type=int, default=1)
    parser.add_argument("--sections", default="documents,windows,words")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-probe"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model()
    results = {}
    for section, run in (("documents", documents), ("windows", windows_against_cut), ("words", words)):
        if section in args.sections.split(","):
            results[section] = run(model, args, args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    console.print(f"written {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
