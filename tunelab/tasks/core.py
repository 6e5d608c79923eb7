"""Task and Example: labelled examples with their label space (or value range), checked and split."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tunelab.errors import InputError

Kind = Literal["classification", "regression", "multilabel"]
KINDS = ("classification", "regression", "multilabel")

DEFAULT_TEST_FRACTION = 0.25  # used only when a task comes with a training file and no test file
SPLIT_SEED = 0


@dataclass(frozen=True)
class Example:
    text: str
    label: str | float | tuple[str, ...]  # multilabel: the example's labels, sorted (possibly none)
    line: int | None = field(default=None, compare=False)  # where it came from, for error messages
    extra: dict = field(default_factory=dict, compare=False, repr=False)  # the row's other fields (slices)


@dataclass(frozen=True)
class Task:
    """A classification, multi-label or regression task: train/test examples and how to prompt for them."""

    name: str
    kind: Kind
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    labels: tuple[str, ...] = ()  # classification and multilabel: the label space, in a fixed order
    value_range: tuple[float, float] | None = None  # regression: the scale of the target
    unlabeled: tuple[str, ...] = ()  # extra texts for later rungs (distillation transfer, bulk)
    instruction: str = ""
    template: str = "Text: {text}\nLabel: {label}"
    split_note: str = ""  # how the test split was made, reported to the user
    slice_field: str | None = None  # the examples' field that bias reports slice by (None: text length bands)
    text_fields: tuple[str, ...] = ()  # several input fields: each example's text is their record (fields.py)

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    @property
    def is_multilabel(self) -> bool:
        return self.kind == "multilabel"


def make_task(
    name: str,
    kind: Kind,
    train: list[Example],
    test: list[Example] | None = None,
    *,
    train_path: str | Path | None = None,
    test_path: str | Path | None = None,
    label_field: str = "label",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = SPLIT_SEED,
    **extra,
) -> Task:
    """Check the examples and build a Task, splitting off a stratified test set when none is given.

    Raises:
        InputError: a single-label task, or a test label the training set lacks.
    """
    if kind == "multilabel":
        return _multilabel_task(name, train, test, train_path, test_path, label_field, test_fraction, seed, **extra)
    if kind == "classification":
        counts = Counter(e.label for e in train)
        if len(counts) < 2:
            only = next(iter(counts), None)
            raise InputError(f"training set has only one label ({only!r}); a classification task needs two or "
                             "more", path=train_path)
    elif len({float(e.label) for e in train}) < 2:
        raise InputError("training set has a single target value; nothing to learn", path=train_path)
    split_note = ""
    if test is None:
        train, test = split_examples(train, kind, test_fraction, seed, train_path)
        split_note = (f"no test file: a fixed-seed (seed {seed}) {'stratified ' if kind == 'classification' else ''}"
                      f"split kept {len(test)} of {len(train) + len(test)} examples for testing")
    if kind == "regression":
        values = [float(e.label) for e in train]
        value_range = extra.pop("value_range", None) or (min(values), max(values))
        return Task(name, kind, tuple(train), tuple(test), value_range=value_range, split_note=split_note, **extra)
    counts = Counter(e.label for e in train)
    for example in test:
        if example.label not in counts:
            raise InputError(f"label {example.label!r} does not occur in the training set "
                             f"(labels: {sorted(counts)})", path=test_path, line=example.line, field=label_field)
    labels = tuple(sorted(counts))
    return Task(name, kind, tuple(train), tuple(test), labels=labels, split_note=split_note, **extra)


def _multilabel_task(name, train, test, train_path, test_path, label_field, test_fraction, seed, **extra) -> Task:
    """A multi-label task: its label space is every label the training set holds (two or more); a test example may
    hold no label, never one the training set lacks."""
    labels = sorted({label for e in train for label in e.label})
    if len(labels) < 2:
        raise InputError(f"training set holds {len(labels)} distinct label(s) ({labels}); a multi-label task needs "
                         "two or more", path=train_path)
    split_note = ""
    if test is None:
        train, test = split_examples(train, "multilabel", test_fraction, seed, train_path)
        trained = {label for e in train for label in e.label}
        rare = [e for e in test if not set(e.label) <= trained]  # a label only the held-out part holds: train on it
        train, test = train + rare, [e for e in test if set(e.label) <= trained]
        split_note = (f"no test file: a fixed-seed (seed {seed}) random split kept {len(test)} of "
                      f"{len(train) + len(test)} examples for testing")
    known = set(labels)
    for example in test:
        unknown = [label for label in example.label if label not in known]
        if unknown:
            raise InputError(f"holds {unknown[0]!r}, a label the training set lacks (labels: {labels})",
                             path=test_path or train_path, line=example.line, field=label_field)
    return Task(name, "multilabel", tuple(train), tuple(test), labels=tuple(labels), split_note=split_note, **extra)


def split_examples(examples: list[Example], kind: Kind, test_fraction: float, seed: int, path=None):
    """(kept, held out): `test_fraction` of the examples held out, per label for classification, reproducibly."""
    rng = random.Random(seed)
    if kind != "classification":  # regression, multilabel: a random split (an example has no one label to stratify)
        shuffled = examples[:]
        rng.shuffle(shuffled)
        n_test = max(1, round(len(shuffled) * test_fraction))
        return shuffled[n_test:], shuffled[:n_test]
    by_label: dict[str, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    train, test = [], []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n_test = max(1, round(len(group) * test_fraction)) if len(group) > 1 else 0
        test += group[:n_test]
        train += group[n_test:]
    if not test:
        raise InputError(f"too few examples ({len(examples)}) to hold out a test or validation split", path=path)
    return train, test


