"""Prompting for several labels an example: one pass over the label set (each label's share of the label set, what
tunelab ships) against a yes/no question per label (L prompts an example), on the same words, in one run.

Both are zero-shot on the `sounds` task, fp32; each label's threshold is chosen on the same held-out training words
(best F1), and both are scored on the same test words: micro F1 with its interval, the paired difference, and the
words per second each way.

    python bench/multilabel_prompts.py [--model smollm2] [--test 100] [--validation 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time

import numpy as np
import torch

from tunelab.measure.intervals import interval, paired_difference
from tunelab.measure.multilabel import choose_thresholds, label_matrix, micro_f1
from tunelab.models import load_model
from tunelab.predictor import predict
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.tasks import Example, load_task, make_task

# the key words' vowels, as the question names them
QUESTION = "Word: {text}\nDoes it have the vowel sound of \"{key}\"? Answer: {label}"


def one_pass(model, task, words: list[str]) -> tuple[np.ndarray, float]:
    predictor = few_shot(model, task, PromptConfig(calibrate=False, precision="fp32"))
    started = time.perf_counter()
    scores = predict(predictor, words).probs
    return scores, len(words) / (time.perf_counter() - started)


def yes_no(model, task, words: list[str]) -> tuple[np.ndarray, float]:
    """P(yes) for each label, from a two-label prompt per label."""
    columns, seconds = [], 0.0
    for key in task.labels:
        template = QUESTION.replace("{key}", key)
        train = [Example(e.text, "yes" if key in e.label else "no") for e in task.train[:40]]
        if len({e.label for e in train}) < 2:  # the prompt needs both answers in its label space
            train.append(Example("placeholder", "no" if train[0].label == "yes" else "yes"))
        question = make_task(f"has-{key}", "classification", train, train[:2], template=template,
                             instruction="")
        predictor = few_shot(model, question, PromptConfig(calibrate=False, precision="fp32"))
        started = time.perf_counter()
        columns.append(predict(predictor, words).probs[:, list(predictor.label_names).index("yes")])
        seconds += time.perf_counter() - started
    return np.stack(columns, axis=1), len(words) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--validation", type=int, default=100)
    args = parser.parse_args()
    task = load_task("sounds")
    rng = random.Random(0)
    validation = rng.sample(list(task.train), args.validation)
    test = list(task.test[: args.test])
    task = dataclasses.replace(task, test=tuple(test))
    model = load_model(args.model)
    print(f"{args.model}, {len(task.labels)} labels, {len(validation)} validation and {len(test)} test words, "
          f"{torch.get_num_threads()} threads")
    gold_validation, gold_test = label_matrix(task, validation), label_matrix(task, test)
    words = [e.text for e in validation] + [e.text for e in test]
    decided = {}
    for name, method in (("one pass over the label set", one_pass), ("yes/no per label", yes_no)):
        scores, rate = method(model, task, words)
        thresholds = choose_thresholds(scores[: len(validation)], gold_validation)
        decided[name] = scores[len(validation):] >= thresholds
        value = micro_f1(gold_test, decided[name])
        bounds = interval(lambda idx, chosen=decided[name]: micro_f1(gold_test[idx], chosen[idx]), len(test))
        print(f"{name}: micro F1 {value:.3f} [{bounds[0]:.3f}, {bounds[1]:.3f}], {rate:.1f} words/s")
    first, second = decided.values()
    difference = paired_difference(micro_f1, gold_test, first, second)
    low, high = difference["interval"]
    print(f"one pass - yes/no: {difference['difference']:+.3f} [{low:+.3f}, {high:+.3f}] (paired)")


if __name__ == "__main__":
    main()
