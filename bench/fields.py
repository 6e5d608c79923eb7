"""Several input fields: how each rung family should read a subject and a body, measured on the built-in spam task.

Arms, on the same split (600 training, 400 test e-mails), the same classifier per family:
- TF-IDF: a vectoriser per field (what `tunelab baseline` does) against one vectoriser over both values joined;
- frozen MiniLM + logistic regression: the values joined by the encoder's separator (`subject [SEP] body`, what the
  embed baseline and the MiniLM student read) against the encoder's text pair (`[CLS] subject [SEP] body [SEP]`
  with segment ids 0 and 1, what BERT was pre-trained on) and against the body alone; every arm cut to 256 tokens.
Accuracy with its 95% bootstrap interval, and each alternative's paired difference from the chosen arm.

    python bench/fields.py
"""

from __future__ import annotations

import numpy as np
import torch
from harness import describe_cpu
from rich.console import Console
from rich.table import Table
from sklearn.metrics import accuracy_score

from tunelab.config import BaselineConfig
from tunelab.measure.intervals import metric_intervals, paired_difference
from tunelab.models import MiniLMEmbedder
from tunelab.rungs.baseline import EMBED_MAX_TOKENS, _linear_model, fit_baseline
from tunelab.tasks import Example, load_task, make_task
from tunelab.tasks.fields import split_fields


def values(task, split):
    rows = [split_fields(e.text, task.text_fields) for e in getattr(task, split)]
    return [row["subject"] for row in rows], [row["body"] for row in rows]


@torch.no_grad()
def embed_pairs(embedder: MiniLMEmbedder, first: list[str], second: list[str] | None) -> np.ndarray:
    """Pooled MiniLM vectors of text pairs (segment ids 0 and 1) or of single texts, cut to 256 tokens."""
    vectors = []
    for start in range(0, len(first), 64):
        batch = embedder.tokenizer(first[start:start + 64], None if second is None else second[start:start + 64],
                                   padding=True, truncation=True, max_length=EMBED_MAX_TOKENS, return_tensors="pt")
        vectors.append(embedder._pooled(batch.to(embedder.device)))
    return np.concatenate(vectors)


def fitted_predictions(task, train_vectors, test_vectors) -> np.ndarray:
    model = _linear_model(task, seed=0).fit(train_vectors, [e.label for e in task.train])
    return np.asarray(model.predict(test_vectors))


def main() -> None:
    task = load_task("spam")
    gold = np.asarray([e.label for e in task.test])
    arms: dict[str, np.ndarray] = {}

    arms["tfidf: a vectoriser per field"] = np.asarray(
        fit_baseline(task, BaselineConfig(method="tfidf")).predict_batch([e.text for e in task.test]).labels)
    joined = make_task("spam-joined", "classification",
                       [Example(" \n".join(split_fields(e.text, task.text_fields).values()), e.label)
                        for e in task.train],
                       [Example(" \n".join(split_fields(e.text, task.text_fields).values()), e.label)
                        for e in task.test], template="{text} {label}")
    arms["tfidf: one vectoriser over subject + body"] = np.asarray(
        fit_baseline(joined, BaselineConfig(method="tfidf")).predict_batch([e.text for e in joined.test]).labels)

    embedder = MiniLMEmbedder(max_length=EMBED_MAX_TOKENS)
    sep = embedder.tokenizer.sep_token
    (train_subject, train_body), (test_subject, test_body) = values(task, "train"), values(task, "test")
    for name, train_args, test_args in [
        (f"embed: subject {sep} body (joined)",
         ([f"{a} {sep} {b}" for a, b in zip(train_subject, train_body)], None),
         ([f"{a} {sep} {b}" for a, b in zip(test_subject, test_body)], None)),
        ("embed: text pair (segments 0 and 1)", (train_subject, train_body), (test_subject, test_body)),
        ("embed: body only", (train_body, None), (test_body, None)),
    ]:
        arms[name] = fitted_predictions(task, embed_pairs(embedder, *train_args), embed_pairs(embedder, *test_args))

    chosen = {"tfidf": "tfidf: a vectoriser per field", "embed": f"embed: subject {sep} body (joined)"}
    table = Table(title=f"spam (subject + body), {len(task.train)} train / {len(task.test)} test; {describe_cpu()}")
    for column in ("arm", "accuracy [95% interval]", "difference from the chosen arm [95% paired interval]"):
        table.add_column(column)
    for name, predicted in arms.items():
        accuracy = accuracy_score(gold, predicted)
        low, high = metric_intervals({"accuracy": accuracy_score}, gold, predicted)["accuracy"]
        reference = chosen[name.split(":")[0]]
        if name == reference:
            difference = "(chosen)"
        else:
            paired = paired_difference(accuracy_score, gold, predicted, arms[reference])
            difference = "{:+.3f} [{:+.3f}, {:+.3f}]".format(paired["difference"], *paired["interval"])
        table.add_row(name, f"{accuracy:.3f} [{low:.3f}, {high:.3f}]", difference)
    Console().print(table)


if __name__ == "__main__":
    main()
