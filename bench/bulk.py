"""Bulk prediction: a naive per-text loop vs `tunelab predict` (predict_all) on 5,000 texts with repeats.

Both use the same predictor and write the same kind of store. Naive: one model call per input text (batch 1,
repeats included) and one committed row per call. tunelab: normalise, de-duplicate, skip stored keys, batches
sorted by length, one transaction per batch. The inputs are a Zipf-distributed sample of VADER words (like a
query log: a few texts very often, most rarely), fixed seed.

    python bench/bulk.py [--n 5000] [--model DIR]   (default model: the zero-shot SmolLM2 prompt predictor)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from tunelab.models import load_model
from tunelab.offline.bulk import BulkConfig, normalise, predict_all, text_key
from tunelab.offline.store import Store
from tunelab.predictor import load_predictor
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.tasks import load_task
from tunelab.tasks.builtin import vader_lexicon


def query_log(n: int, seed: int = 0) -> list[str]:
    words = sorted(vader_lexicon())
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.3, size=n * 3)
    ranks = ranks[ranks <= len(words)][:n]
    order = rng.permutation(len(words))
    return [words[order[r - 1]] for r in ranks]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.model:
        predictor, name = load_predictor(args.model), str(args.model)
    else:
        predictor, name = few_shot(load_model(), load_task("vader"), PromptConfig(shots=0)), "zero-shot SmolLM2"
    texts = query_log(args.n)
    fingerprint = predictor.fingerprint
    with tempfile.TemporaryDirectory() as folder:
        naive_store = Store(Path(folder) / "naive.sqlite")
        start = time.perf_counter()
        for text in texts:
            normalised = normalise(text)
            naive_store.put_batch(fingerprint, [(text_key(normalised), normalised,
                                                 predictor.predict_batch([normalised]).row(0))])
        naive_seconds = time.perf_counter() - start

        store = Store(Path(folder) / "tunelab.sqlite")
        start = time.perf_counter()
        counts = predict_all(predictor, texts, store, BulkConfig(batch_size=args.batch_size))
        fast_seconds = time.perf_counter() - start
        start = time.perf_counter()
        rerun = predict_all(predictor, texts, store, BulkConfig(batch_size=args.batch_size))
        rerun_seconds = time.perf_counter() - start
        labels = [sorted((r.input, r.label) for r in s.rows()) for s in (naive_store, store)]
        same = labels[0] == labels[1]

    table = Table(title=f"bulk prediction of {len(texts):,} texts ({counts['distinct']:,} distinct), {name}")
    for column in ("path", "model calls", "seconds", "texts/s", "speed-up"):
        table.add_column(column, justify="left" if column == "path" else "right")
    naive_rate = len(texts) / naive_seconds
    table.add_row("naive: per-text loop, batch 1", f"{len(texts):,}", f"{naive_seconds:.1f}", f"{naive_rate:.1f}",
                  "1.0x")
    table.add_row(f"tunelab predict, batch {args.batch_size}", f"{counts['predicted']:,}", f"{fast_seconds:.1f}",
                  f"{len(texts) / fast_seconds:.1f}", f"{naive_seconds / fast_seconds:.1f}x")
    table.add_row("tunelab predict, rerun (all stored)", f"{rerun['predicted']:,}", f"{rerun_seconds:.2f}",
                  f"{len(texts) / rerun_seconds:,.0f}", f"{naive_seconds / rerun_seconds:,.0f}x")
    console = Console(width=150)
    console.print(table)
    console.print(f"same labels in both stores: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
