"""Several input fields as one text: a record.

A task with `--text-fields subject,body` keeps each example's fields in one string, a line per field in the task's
order, `name: value`, each value on one line (its whitespace collapsed). Everything that handles texts (batching,
de-duplication, the store's keys, files) keeps handling one string per example; each rung family reads the fields
back in its own way: a prompt fills the template's `{subject}` and `{body}`, TF-IDF fits a vectoriser per field, an
encoder reads the values joined with its separator token. The string is also the normalised form the store keys a
row by: same fields, same order, same text.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

from tunelab.errors import InputError

FIELD_NAME_CHARS = set(string.ascii_letters + string.digits + "_-")


def parse_field_names(spec: str) -> tuple[str, ...]:
    """`subject,body` -> ("subject", "body").

    Raises:
        InputError: fewer than two names, a repeated name, or a name a template cannot hold.
    """
    names = tuple(name.strip() for name in spec.split(","))
    problems = [f"{name!r} (letters, digits, _ and - only)" for name in names
                if not name or not set(name) <= FIELD_NAME_CHARS]
    if problems:
        raise InputError(f"--text-fields: unusable field name {', '.join(problems)}")
    if len(names) < 2:
        raise InputError(f"--text-fields names {len(names)} field; use --text-field for one")
    if len(set(names)) != len(names):
        raise InputError(f"--text-fields names a field twice: {spec}")
    if {"text", "label"} & set(names):
        raise InputError("--text-fields: 'text' and 'label' are the template's own names; rename the field")
    return names


def join_fields(values: dict[str, str], names: tuple[str, ...]) -> str:
    """The record of one example: `name: value` per line in `names` order, whitespace inside a value collapsed."""
    return "\n".join(f"{name}: {' '.join(values[name].split())}" for name in names)


def split_fields(record: str, names: tuple[str, ...]) -> dict[str, str]:
    """The values of a record made by join_fields with the same `names`.

    Raises:
        InputError: the text is not such a record (a model of several fields given one plain text).
    """
    lines = record.split("\n")
    if len(lines) != len(names) or any(not line.startswith(f"{name}:") for line, name in zip(lines, names)):
        raise InputError(f"expected the fields {', '.join(names)}, one 'name: value' line each, got {record[:80]!r}")
    return {name: line[len(name) + 1:].lstrip(" ") for line, name in zip(lines, names)}


def empty_record(names: tuple[str, ...]) -> str:
    """A record whose fields are all empty: what a prompt holds besides the values."""
    return join_fields(dict.fromkeys(names, ""), names)


def probe_record(sentence: str, names: tuple[str, ...]) -> str:
    """A counterfactual probe's sentence as a record: the same sentence in every field, so that the model meets
    the name wherever it reads (what the probe compares is only which name it is)."""
    return join_fields(dict.fromkeys(names, sentence), names)


def encoder_text(record: str, names: tuple[str, ...], separator: str) -> str:
    """The values of a record joined by an encoder's separator token (e.g. " [SEP] "), for BERT-like encoders."""
    return f" {separator} ".join(split_fields(record, names).values())


def encoder_texts(texts: list[str], names: tuple[str, ...], separator: str) -> list[str]:
    """What an encoder reads of each input: the text itself, or a record's values joined by `separator`."""
    return [encoder_text(text, names, separator) for text in texts] if names else list(texts)


@lru_cache(maxsize=256)  # asked for every query a prompt builds; a task has a handful of templates
def template_fields(template: str) -> tuple[str, ...]:
    """The field names a template holds besides {text} and {label}, in order of first appearance."""
    seen: list[str] = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name and name not in ("text", "label") and name not in seen:
            seen.append(name)
    return tuple(seen)


def fill(pattern: str, text: str) -> str:
    """A template (or a piece of one) with its placeholders filled from one input: {text} is the whole input (the
    record, for several fields), {subject} a field of it. A template may name some of the record's fields only.
    One pass over the pattern, so a value that holds "{body}" stays as it is."""
    names = template_fields(pattern)
    if not names:  # one text: the common case, and the hot one
        return pattern.replace("{text}", text)
    values = _record_values(text, names)
    values["text"] = text
    return re.sub(r"\{([A-Za-z0-9_-]+)\}", lambda m: values.get(m.group(1), m.group(0)), pattern)


def _record_values(record: str, wanted: tuple[str, ...]) -> dict[str, str]:
    values = {}
    for line in record.split("\n"):
        name, colon, value = line.partition(":")
        if colon and set(name) <= FIELD_NAME_CHARS:
            values[name] = value.lstrip(" ")
    missing = [name for name in wanted if name not in values]
    if missing:
        raise InputError(f"the input lacks the field(s) {', '.join(missing)} the template names, got {record[:80]!r}")
    return values


def default_template(names: tuple[str, ...]) -> str:
    """`Subject: {subject}\\nBody: {body}\\nLabel: {label}`: every field on its line, then the label."""
    return "".join(f"{name.replace('_', ' ').capitalize()}: {{{name}}}\n" for name in names) + "Label: {label}"
