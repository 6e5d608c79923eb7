"""Prompt search vs zero-shot vs the old fixed default (balanced, K=4), and `similar` vs `balanced` cost, in one run.

For each task: the zero-shot prompt, the old default few-shot prompt and the searched prompt (`tunelab prompt
--search`: configurations tried on held-out training examples, the best kept) are all evaluated on the test split
that the search never saw; the table gives validation and test quality and the search's time (a configuration
replaces zero-shot only when its paired interval against it on validation lies above 0). Then, on vader,
balanced and similar shot selection at K=8 are timed on the same test words (similar embeds the pool once).

    python bench/prompt_search.py [--tasks vader,vader-valence,subjectivity,fruit] [--budget-s 120]
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from tunelab.measure.evaluate import evaluate, headline_quality
from tunelab.models import load_model
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.rungs.search import SearchConfig, describe, search
from tunelab.tasks import load_task


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="vader,vader-valence,subjectivity,fruit")
    parser.add_argument("--budget-s", type=float, default=120.0)
    args = parser.parse_args()
    model = load_model()
    table = Table(title=f"prompt search, SmolLM2-135M, budget {args.budget_s:.0f} s per task "
                        "(quality: accuracy, or Spearman for regression: measure.evaluate.quality_metric)")
    for column in ("task", "prompt", "validation", "test", "search s", "configs"):
        table.add_column(column, justify="left" if column in ("task", "prompt") else "right")
    for name in args.tasks.split(","):
        task = load_task(name)
        started = time.perf_counter()
        found = search(model, task, PromptConfig(), SearchConfig(budget_s=args.budget_s))
        seconds = time.perf_counter() - started
        validation = {row["config"]: row["validation"] for row in found.rows}
        arms = {"zero-shot": (few_shot(model, task, PromptConfig()), validation.get("K=0")),
                "old default: balanced K=4": (few_shot(model, task, PromptConfig(shots=4)), None),
                f"searched: {describe(found.config, PromptConfig())}": (found.predictor, found.validation)}
        for arm, (predictor, on_validation) in arms.items():
            test = headline_quality(evaluate(predictor, task))
            table.add_row(name, arm, "-" if on_validation is None else f"{on_validation:.3f}", f"{test:.3f}",
                          f"{seconds:.0f}" if arm.startswith("searched") else "-",
                          str(len(found.rows)) if arm.startswith("searched") else "-")
    console = Console(width=170)
    console.print(table)
    task = load_task("vader")
    times = {}
    for select in ("balanced", "similar"):
        predictor = few_shot(model, task, PromptConfig(shots=8, select=select))
        started = time.perf_counter()
        evaluate(predictor, task)
        times[select] = time.perf_counter() - started
    console.print(f"vader, K=8, {len(task.test)} test words: balanced {times['balanced']:.1f} s, similar "
                  f"{times['similar']:.1f} s = {times['similar'] / times['balanced']:.2f}x (goal: at most 3x)")


if __name__ == "__main__":
    main()
