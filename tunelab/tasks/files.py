"""Reading example files (JSONL, CSV, text lines): the one reader, whose errors name the file, line and field."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from tunelab.errors import InputError
from tunelab.tasks.core import Example, Kind
from tunelab.tasks.fields import join_fields

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def read_examples(
    path: str | Path, *, text_field: str = "text", label_field: str = "label", kind: Kind = "classification",
    text_fields: tuple[str, ...] = (), label_separator: str | None = None,
) -> list[Example]:
    """Read labelled examples from a .jsonl/.json (one object per line) or .csv file; with `text_fields`, each
    example's text is the record of those fields (tasks/fields.py).

    Raises:
        InputError: naming the file, the line and the field of the first problem found.
    """
    path = Path(path)
    if path.suffix.lower() not in (".csv", *JSONL_SUFFIXES):
        raise InputError("examples must be a JSONL (.jsonl, .json, .ndjson) or .csv file", path=path)
    inputs = [(name, "--text-fields") for name in text_fields] or [(text_field, "--text-field")]
    examples = [_example(path, line, row, text_fields or (text_field,), label_field, kind, label_separator)
                for line, row in read_rows(path, *inputs, (label_field, "--label-field"))]
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


def input_text(path: Path, line: int, row: dict, text_fields: tuple[str, ...], hint: str | None = None) -> str:
    """The row's text: its one text field stripped, or the record of its several fields. `hint`: what to say of
    a missing field (default: the flag that names it).

    Raises:
        InputError: a field missing, not a string, or (a single text field) empty.
    """
    flag = "--text-fields" if len(text_fields) > 1 else "--text-field"
    for name in text_fields:
        value = row.get(name)
        if value is None:
            raise InputError("is missing", path=path, line=line, field=name, hint=hint or f"use {flag} to name it")
        if not isinstance(value, str):
            raise InputError(f"must be a string, got {type(value).__name__}", path=path, line=line, field=name)
    if len(text_fields) > 1:
        if not any(row[name].strip() for name in text_fields):
            raise InputError(f"every field of {', '.join(text_fields)} is empty", path=path, line=line)
        return join_fields(row, text_fields)
    text = row[text_fields[0]].strip()
    if not text:
        raise InputError("must be a non-empty string", path=path, line=line, field=text_fields[0])
    return text


def _example(path: Path, line: int, row: dict, text_fields: tuple[str, ...], label_field: str, kind: Kind,
             label_separator: str | None = None) -> Example:
    if row.get(label_field) is None:
        raise InputError("is missing", path=path, line=line, field=label_field, hint="use --label-field to name it")
    text = input_text(path, line, row, text_fields)
    label = row[label_field]
    if kind == "regression":
        try:
            value = float(label)
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(label, bool) or not math.isfinite(value):
            raise InputError(f"must be a finite number for a regression task, got {label!r}",
                             path=path, line=line, field=label_field)
        return Example(text, value, line, _other_fields(row, text_fields, label_field))
    if kind == "multilabel":
        return Example(text, _label_set(path, line, label, label_field, label_separator), line,
                       _other_fields(row, text_fields, label_field))
    if isinstance(label, (dict, list)) or str(label).strip() == "":
        raise InputError(f"must be a non-empty string or number, got {label!r}", path=path, line=line,
                         field=label_field)
    return Example(text, str(label).strip(), line, _other_fields(row, text_fields, label_field))


def _label_set(path: Path, line: int, label, label_field: str, separator: str | None) -> tuple[str, ...]:
    """A multi-label row's labels, sorted and distinct: a JSON list, or a string cut at `separator` (a CSV cell is
    always a string). An empty list is an example with none of the labels."""
    if isinstance(label, str) and separator is not None:
        label = [part for part in label.split(separator) if part.strip()]
    if not isinstance(label, list):
        how = f"a string of labels separated by {separator!r}" if separator else "a JSON list of labels"
        raise InputError(f"must be {how} for a multilabel task, got {label!r}", path=path, line=line,
                         field=label_field, hint=None if separator else "or name --label-sep")
    for item in label:
        if isinstance(item, (dict, list, bool)) or item is None or str(item).strip() == "":
            raise InputError(f"must hold non-empty strings or numbers, got {item!r} in {label!r}", path=path,
                             line=line, field=label_field)
    return tuple(sorted({str(item).strip() for item in label}))


def _other_fields(row: dict, text_fields: tuple[str, ...], label_field: str) -> dict:
    return {key: value for key, value in row.items() if key not in text_fields and key != label_field}


