"""Tasks: where a command's task comes from (a built-in name or --train/--test files), and everything a task is.

core.py holds Task and Example, files.py the one file reader, builtin.py the built-in tasks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from tunelab.errors import InputError
from tunelab.tasks import builtin
from tunelab.tasks.core import KINDS, SPLIT_SEED, Example, Kind, Task, make_task, split_examples
from tunelab.tasks.fields import default_template, parse_field_names
from tunelab.tasks.files import read_examples, read_rows, read_text_file

BUILTIN_TASKS = ("vader", "vader-valence", "subjectivity", "fruit", "sotu-party", "sotu-year", "spam", "language",
                 "sounds")
__all__ = ["BUILTIN_TASKS", "SPLIT_SEED", "Example", "Kind", "Task", "TaskSource", "load_task", "make_task",
           "read_examples", "read_rows", "read_text_file", "split_examples"]


@dataclass(frozen=True)
class TaskSource:
    """Where a command's task comes from: the flags every task-reading command shares (help beside each type)."""
    task: Annotated[str | None, "Built-in task: vader, vader-valence, subjectivity, fruit, sotu-party, sotu-year, "
                                "spam (two fields), language (50 labels), sounds (several labels a word)."] = None
    train: Annotated[Path | None, "Training examples, JSONL or CSV."] = None
    test: Annotated[Path | None, "Test examples; without it a fixed-seed stratified split of --train is made."] = None
    text_field: Annotated[str, "Field holding the input text."] = "text"
    text_fields: Annotated[str | None, "Several input fields, comma-separated (e.g. subject,body); a template "
                                       "names each ({subject})."] = None
    label_field: Annotated[str, "Field holding the label or value."] = "label"
    kind: Annotated[Kind, "classification, multilabel (several labels an example) or regression (for --train "
                          "files)."] = "classification"
    label_sep: Annotated[str | None, "multilabel: the separator between an example's labels when the label field "
                                     "is a string (default: a JSON list)."] = None

    def load(self) -> Task:
        return load_task(self.task, train_path=self.train, test_path=self.test, text_field=self.text_field,
                         text_fields=self.text_fields, label_field=self.label_field, kind=self.kind,
                         label_separator=self.label_sep)


def load_task(
    name: str | None = None,
    *,
    train_path: str | Path | None = None,
    test_path: str | Path | None = None,
    text_field: str = "text",
    text_fields: str | None = None,
    label_field: str = "label",
    kind: Kind = "classification",
    label_separator: str | None = None,
) -> Task:
    """A built-in task by name, or a task read from --train/--test files.

    Raises:
        InputError: an unknown task name, unreadable files, or unusable labels.
    """
    if kind not in KINDS:
        raise InputError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if label_separator is not None and (kind != "multilabel" or not label_separator.strip()):
        raise InputError("--label-sep is for --kind multilabel and must be a visible character or string")
    if name is not None and text_fields:
        raise InputError("--text-fields is for --train files; a built-in task has its own fields")
    if name is not None and train_path is not None:
        raise InputError("give either --task or --train, not both")
    if name is not None:
        builders = builtin.BUILDERS
        if name not in builders:
            raise InputError(f"unknown task {name!r}; built-in tasks: {', '.join(BUILTIN_TASKS)} "
                             "(or give --train FILE [--test FILE])")
        return builders[name]()
    if train_path is None:
        raise InputError("no task given: use --task NAME or --train FILE [--test FILE]")
    if test_path is not None and Path(test_path).resolve() == Path(train_path).resolve():
        raise InputError("--test names the same file as --train", path=test_path)
    names = parse_field_names(text_fields) if text_fields else ()
    fields = dict(text_field=text_field, text_fields=names, label_field=label_field, kind=kind,
                  label_separator=label_separator)
    train = read_examples(train_path, **fields)
    test = read_examples(test_path, **fields) if test_path is not None else None
    shape = {"text_fields": names, "template": default_template(names)} if names else {}
    return make_task(Path(train_path).stem, kind, train, test, train_path=train_path, test_path=test_path,
                     label_field=label_field, **shape)

