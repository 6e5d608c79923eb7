"""The verbalizer: how a task's examples become prompt text, and label scores become Predictions.

A prompt is `instruction + shots + query`; a label is scored as the text that follows the query (scoring/tokens.py).
Regression uses a numeric verbalizer: ratings "1".."9", read as an expected value, so no head is ever added.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from tunelab.predictor import Predictions
from tunelab.scoring.length import TRAIN_MAX_TOKENS, check_max_length, fit_texts, length_quantile
from tunelab.scoring.tokens import Pair, special_lead, tokenize_pairs
from tunelab.tasks.fields import empty_record, fill, template_fields

NO_LABEL = "none"  # what a multi-label shot without any label shows in the label slot
SCALE_POINTS = 9  # regression verbalizer: ratings "1".."9"


@dataclass(frozen=True)
class PromptFormat:
    """How examples become text: `query(text) + label_text(label)` is one shot."""

    instruction: str
    query_format: str  # the template up to {label}, trailing whitespace removed
    label_lead: str  # the whitespace before {label}: it belongs to the label's text, as in lm-eval-harness
    separator: str

    @classmethod
    def from_template(cls, template: str, instruction: str) -> PromptFormat:
        head = template.rstrip()[: -len("{label}")]
        query_format = head.rstrip()
        separator = "\n\n" if "\n" in template else "\n"
        return cls(instruction, query_format, head[len(query_format):], separator)

    @property
    def fields(self) -> tuple[str, ...]:
        """The input fields the template names ({subject}, {body}); empty for a one-text task."""
        return template_fields(self.query_format)

    @property
    def blank(self) -> str:
        """An input with nothing in it: "" or the record of empty fields (what a prompt holds besides the input)."""
        return empty_record(self.fields) if self.fields else ""

    def query(self, text: str) -> str:
        return fill(self.query_format, text)

    def frame(self) -> tuple[str, str]:
        """The query's template before its first placeholder and after its last: what surrounds `inner(text)`."""
        start, end = self._placeholder_span()
        return self.query_format[:start], self.query_format[end:]

    def inner(self, text: str) -> str:
        """The query from its first placeholder to its last, filled: the text itself for a one-text template."""
        return fill(self.inner_format, text)

    @property
    def inner_format(self) -> str:
        start, end = self._placeholder_span()
        return self.query_format[start:end]

    def _placeholder_span(self) -> tuple[int, int]:
        marks = [f"{{{name}}}" for name in ("text", *self.fields) if f"{{{name}}}" in self.query_format]
        start = min(self.query_format.index(mark) for mark in marks)
        end = max(self.query_format.rindex(mark) + len(mark) for mark in marks)
        return start, end

    def label_text(self, label: str) -> str:
        return self.label_lead + label

    def shots_block(self, shots: list[tuple[str, str]]) -> str:
        return "".join(self.query(text) + self.label_text(label) + self.separator for text, label in shots)




def resolve_max_length(verbalizer: Verbalizer, texts: list[str], wanted: int | None, lm) -> int:
    """`wanted` (--max-length) checked against the model's context window, or a length derived from `texts`.

    Raises:
        ConfigError: --max-length larger than the context window.
    """
    context = check_max_length(wanted, lm)
    return wanted or verbalizer.derive_max_length(texts, context=context, cap=TRAIN_MAX_TOKENS)


# --------------------------------------------------------------------------------------------------------------
# Ratings (regression)


def rating_label(value: float, value_range: tuple[float, float]) -> str:
    """The rating "1".."9" nearest to `value` on the task's scale."""
    return str(int(min(SCALE_POINTS, max(1, round(rating_value(value, value_range))))))


def rating_value(value: float, value_range: tuple[float, float]) -> float:
    """`value` mapped linearly from the task's scale onto the rating scale 1..9."""
    low, high = value_range
    return 1.0 + (float(value) - low) / (high - low) * (SCALE_POINTS - 1)


def expected_rating(rating_scores: torch.Tensor) -> torch.Tensor:
    """The expected rating (1..9) under the softmax of the ratings' scores: (n, 9) -> (n,). Differentiable."""
    ratings = torch.arange(1, SCALE_POINTS + 1, dtype=rating_scores.dtype, device=rating_scores.device)
    return torch.softmax(rating_scores, dim=-1) @ ratings


def rating_to_value(rating, value_range: tuple[float, float]):
    """A rating on 1..9 mapped back onto the task's scale (the inverse of rating_value)."""
    low, high = value_range
    return low + (rating - 1) / (SCALE_POINTS - 1) * (high - low)


# --------------------------------------------------------------------------------------------------------------
# One task's verbalizer


class Verbalizer:
    """Texts to label scores, and label scores to Predictions, for one tokenizer, task and prompt format."""

    def __init__(self, tokenizer, *, kind: str, label_names: tuple[str, ...], fmt: PromptFormat,
                 value_range: tuple[float, float] | None = None, label_words: tuple[str, ...] | None = None,
                 thresholds: list[float] | None = None):
        self.tokenizer, self.kind, self.fmt = tokenizer, kind, fmt
        self.label_names, self.value_range = tuple(label_names), value_range
        self.label_words = tuple(label_words) if label_words else None  # words the prompt uses for the labels
        # several labels an example: a label is given where its share of the label set reaches its threshold
        # (chosen on held-out examples by the rung; until then, a share above the uniform one)
        self.thresholds = thresholds if thresholds is not None or kind != "multilabel" else \
            [1.0 / len(label_names)] * len(label_names)
        if kind != "regression":
            self.words = list(self.label_words or label_names)
        else:
            self.words = [str(i) for i in range(1, SCALE_POINTS + 1)]
        self.label_texts = [fmt.label_text(word) for word in self.words]
        self._overheads: dict[str, int] = {}  # per prefix: computed once, asked for on every batch

    @classmethod
    def for_task(cls, tokenizer, task, *, template: str | None = None, instruction: str | None = None,
                 label_words: tuple[str, ...] | None = None):
        """The verbalizer of `task` (its template, instruction and label names unless others are given)."""
        fmt = PromptFormat.from_template(template or task.template,
                                         task.instruction if instruction is None else instruction)
        return cls(tokenizer, kind=task.kind, label_names=task.labels, fmt=fmt, value_range=task.value_range,
                   label_words=label_words)

    def encode(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special).input_ids

    def prefix_ids(self, prefix: str) -> list[int]:
        """The token ids of a prompt's shared start, as they begin the whole prompt (special tokens first)."""
        return list(special_lead(self.tokenizer)) + self.encode(prefix)

    def pairs(self, prefix: str, texts: list[str], query_prefixes: list[str] | None = None) -> list[list[Pair]]:
        """Every (text, label) prompt tokenized whole; `query_prefixes` (per-text shots) go between prefix and query."""
        queries = [self.fmt.query(text) for text in texts]
        if query_prefixes is not None:
            queries = [shots + query for shots, query in zip(query_prefixes, queries)]
        return tokenize_pairs(self.tokenizer, prefix, queries, self.label_texts)

    def overhead(self, prefix: str | None = None) -> int:
        """Tokens a prompt holds besides its text: the prefix (default: the instruction), the query's template and
        the longest label (special tokens included)."""
        prefix = self.fmt.instruction if prefix is None else prefix
        if prefix not in self._overheads:
            if len(self._overheads) >= 64:  # per-query shot prefixes (similar selection) would grow it without end
                self._overheads.clear()
            self._overheads[prefix] = max(len(pair.ids) for pair in self.pairs(prefix, [self.fmt.blank])[0])
        return self._overheads[prefix]

    def fit(self, texts: list[str], max_length: int, prefix: str | None = None) -> tuple[list[str], int]:
        """Texts cut (head and tail, fit_text) so that prefix + query + the longest label fits in `max_length`
        tokens: the template and the cue before the label always survive. Returns the texts and how many were cut."""
        fitted = fit_texts(self.tokenizer, texts, max(1, max_length - self.overhead(prefix)), self.fmt.fields)
        return [text for text, _ in fitted], sum(cut for _, cut in fitted)

    def derive_max_length(self, texts: list[str], *, context: int, cap: int | None = None) -> int:
        """Enough tokens for LENGTH_QUANTILE of the prompts of `texts` (a fixed sample of at most 1,000), capped by
        the model's context window and by `cap` (a memory budget); never less than the template itself needs."""
        sample = texts[:: max(1, len(texts) // 1000)][:1000]
        overhead = self.overhead()
        lengths = [overhead + len(ids) for ids in self.tokenizer(sample, add_special_tokens=False).input_ids]
        wanted = length_quantile(lengths, overhead + 1)
        return max(overhead + 1, min(wanted, context, cap or context))

    def shot_pairs(self, examples) -> list[tuple[str, str]]:
        if self.kind == "classification":
            return [(e.text, self.words[self.label_names.index(e.label)]) for e in examples]
        if self.kind == "multilabel":  # a shot shows all its labels; the query is scored on one label at a time
            return [(e.text, ", ".join(self.words[self.label_names.index(label)] for label in e.label) or NO_LABEL)
                    for e in examples]
        return [(e.text, rating_label(e.label, self.value_range)) for e in examples]

    def predictions(self, scores: torch.Tensor, calibration: list[float] | None = None) -> Predictions:
        """Label probabilities (softmax over labels), optionally with the content-free bias divided out. Several
        labels an example: each label's share of the label set, decided by its threshold (one pass over the label
        set rather than a yes/no question per label: L times fewer prompts, and better on sounds in
        bench/multilabel_prompts.py)."""
        if calibration is not None:
            scores = torch.log_softmax(scores, dim=-1) - torch.tensor(calibration)
        if self.kind == "classification":
            return Predictions("classification", self.label_names, probs=torch.softmax(scores, dim=-1).numpy())
        if self.kind == "multilabel":
            return Predictions("multilabel", self.label_names, probs=torch.softmax(scores, dim=-1).numpy(),
                               thresholds=np.asarray(self.thresholds))
        values = rating_to_value(expected_rating(scores.double()), self.value_range)
        return Predictions("regression", values=values.numpy())

    def describe(self) -> dict:
        words = {"label_words": list(self.label_words)} if self.label_words else {}
        thresholds = {"thresholds": [float(t) for t in self.thresholds]} if self.kind == "multilabel" else {}
        return {"kind": self.kind, "labels": list(self.label_names), "value_range": self.value_range,
                "format": asdict(self.fmt), **words, **thresholds}

    @classmethod
    def from_description(cls, tokenizer, description: dict) -> Verbalizer:
        value_range = tuple(description["value_range"]) if description["value_range"] else None
        return cls(tokenizer, kind=description["kind"], label_names=tuple(description["labels"]),
                   fmt=PromptFormat(**description["format"]), value_range=value_range,
                   label_words=description.get("label_words"), thresholds=description.get("thresholds"))


def choose_label_thresholds(predictor, examples, task) -> None:
    """Several labels an example: set each label's threshold (on its share of the label set) in the predictor's
    verbalizer to the one with the best F1 on `examples`, which must be examples it was not fitted on."""
    from tunelab.measure.multilabel import choose_thresholds, label_matrix
    from tunelab.predictor import predict

    predictions = predict(predictor, [e.text for e in examples])
    predictor.verbalizer.thresholds = [float(t) for t in choose_thresholds(predictions.probs,
                                                                            label_matrix(task, examples))]
