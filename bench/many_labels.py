"""Scoring a prompt against many labels of several tokens: today's rows (every distinct label row holds the whole
query) against reading each query once and then only each label's own tokens on its key/value cache
(scoring/tokens.py), in one run, on the same queries, with the largest score difference between the two.

Labels: English names of CLDR territories (babel), one to four SmolLM2 tokens each; queries: the first sentence of
State of the Union passages (about 20-30 tokens); zero-shot prompt, fp32, SmolLM2-135M-Instruct.

    python bench/many_labels.py [--labels 2,10,50,150] [--queries 32]
"""

from __future__ import annotations

import argparse
import time

import torch
from babel import Locale
from rich.console import Console
from rich.table import Table

from tunelab.models import load_model
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.scoring import tokens
from tunelab.tasks import Example, load_task, make_task


def label_names(tokenizer, n: int) -> list[str]:
    """n territory names of one to four tokens (with the leading space a label gets in the prompt)."""
    names = sorted({name for code, name in Locale("en").territories.items() if code.isalpha() and "(" not in name})
    fitting = [name for name in names if 1 <= len(tokenizer(" " + name, add_special_tokens=False).input_ids) <= 4]
    return fitting[:n]


def timed(predictor, texts: list[str], saving: float) -> tuple[float, torch.Tensor]:
    tokens.SHARED_QUERY_SAVING = saving
    predictor.log_likelihoods(texts[:4])  # warm-up
    started = time.perf_counter()
    scores = torch.cat([predictor.log_likelihoods(texts[i : i + 8]) for i in range(0, len(texts), 8)])
    return len(texts) / (time.perf_counter() - started), scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default="2,10,50,150")
    parser.add_argument("--queries", type=int, default=32)
    args = parser.parse_args()
    model = load_model("smollm2")
    queries = [e.text.split(". ")[0] + "." for e in load_task("sotu-party").test[: args.queries]]
    table = Table(title=f"{len(queries)} queries (one sentence each), fp32, {torch.get_num_threads()} threads")
    for column in ("labels", "label tokens (mean)", "today: queries/s", "query once: queries/s", "speed-up",
                   "largest score difference"):
        table.add_column(column, justify="right")
    default = tokens.SHARED_QUERY_SAVING
    for n in (int(v) for v in args.labels.split(",")):
        names = label_names(model.tokenizer, n)
        task = make_task("territories", "classification", [Example(f"about {name}", name) for name in names],
                         [Example(q, names[0]) for q in queries], template="Text: {text}\nCountry: {label}",
                         instruction="Name the country each text is about.\n\n")
        predictor = few_shot(model, task, PromptConfig(shots=0, precision="fp32"))
        today, reference = timed(predictor, queries, float("inf"))
        shared, scores = timed(predictor, queries, 0.0)
        lengths = [len(model.tokenizer(" " + name, add_special_tokens=False).input_ids) for name in names]
        table.add_row(str(len(names)), f"{sum(lengths) / len(lengths):.2f}", f"{today:.1f}", f"{shared:.1f}",
                      f"{shared / today:.1f}x", f"{(scores - reference).abs().max().item():.1e}")
    tokens.SHARED_QUERY_SAVING = default
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
