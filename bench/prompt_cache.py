"""Prefix-cached, batched label scoring vs the naive path, on `vader` with SmolLM2, in one run.

Naive: for every test word and every label, the whole prompt (instruction, K shots, query, label) is encoded from
scratch, batch 1, full logits. tunelab: the shared prefix is encoded once and its key/value cache reused by
left-padded batches of queries, with logits computed only where a label token is predicted.

    python bench/prompt_cache.py [--n 100] [--shots 0,4,16]
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from tunelab.models import load_model
from tunelab.predictor import predict
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.scoring.tokens import score_reference
from tunelab.tasks import load_task


def naive_log_likelihoods(predictor, texts):
    """Every (word, label) prompt tokenized whole and run from scratch, batch 1, full logits (the reference)."""
    verbalizer, prefix, model = predictor.verbalizer, predictor.prefix_text(), predictor.model
    return torch.tensor([[score_reference(model.lm, model.tokenizer, prefix, verbalizer.fmt.query(text), label)
                          for label in verbalizer.label_texts] for text in texts])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="test words scored by both paths")
    parser.add_argument("--shots", default="0,4,16")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model, task = load_model("smollm2"), load_task("vader")
    texts = [e.text for e in task.test[: args.n]]
    table = Table(title=f"prompt scoring on vader, SmolLM2-135M, {len(texts)} test words, "
                        f"{torch.get_num_threads()} threads, {model.device}")
    for column in ("K", "prompt tokens", "naive ex/s", "tunelab ex/s", "speed-up", "same predictions",
                   "max |Δ log p|"):
        table.add_column(column, justify="right")
    for k in (int(s) for s in args.shots.split(",")):
        predictor = few_shot(model, task, PromptConfig(shots=k, batch_size=args.batch_size))
        start = time.perf_counter()
        naive = naive_log_likelihoods(predictor, texts)
        naive_rate = len(texts) / (time.perf_counter() - start)
        predictor._prefix = None  # the cache build counts in tunelab's time
        start = time.perf_counter()
        predictions = predict(predictor, texts, batch_size=args.batch_size)
        fast_rate = len(texts) / (time.perf_counter() - start)
        cached = predictor.log_likelihoods(texts)
        same = predictions.labels == [task.labels[i] for i in naive.argmax(1)]
        table.add_row(str(k), str(len(predictor._prefix.ids)), f"{naive_rate:.1f}", f"{fast_rate:.1f}",
                      f"{fast_rate / naive_rate:.1f}x", "yes" if same else "NO",
                      f"{(cached - naive).abs().max().item():.1e}")
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
