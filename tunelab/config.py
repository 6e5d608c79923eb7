"""The rungs' configuration: one frozen dataclass per command, each field `Annotated[type, "help"]`.

The `tunelab` command builds one flag per field from these annotations (cli/flags.py), so a setting, its default,
its help and its check are written once. They live in light modules (standard library only) so that the command
line is built without importing torch, transformers and peft (8.6 s on 2 cores): each rung module imports its
config from here, the way litgpt keeps its argument dataclasses in `args.py`. Offline inference and generation keep
theirs beside them: offline/config.py and generation/config.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from tunelab.errors import ConfigError
from tunelab.tasks.fields import template_fields

RUNGS = ("tfidf", "embed", "probe", "zero", "one", "few", "lora", "full", "distill", "cascade")
POOLINGS = ("auto", "mean", "last", "mean+last")  # rungs/probe.py
BASELINE_METHODS = ("tfidf", "embed")
PRECISIONS = ("auto", "fp32", "bf16")  # scoring/precision.py
TUNE_LR = {"lora": 1e-3, "full": 3e-5}  # LoRA's few weights need a larger step (Hu et al. 2021 used 2e-4..1e-3)
DISTILL_LR = {"pruned": 5e-5, "encoder": 1e-4}  # an encoder head starts from scratch and needs the larger step



@dataclass(frozen=True)
class PromptConfig:
    """The flags of `tunelab prompt`."""
    shots: Annotated[int, "K: 0 zero-shot, 1 one-shot, more few-shot."] = 0
    # Balanced by default: on vader with SmolLM2, 4 random shots fell to ~47% from label bias (issue #2).
    select: Annotated[Literal["random", "balanced", "similar"], "Shot selection (random, balanced, similar)."] = (
        "balanced")
    calibrate: Annotated[bool, "Divide out the prompt's label bias (see --calibration)."] = False
    # contextual: measured on content-free inputs ("N/A", "", "[MASK]"); batch: on real training texts, labels unused
    calibration: Annotated[Literal["contextual", "batch"],
                           "contextual (content-free inputs) or batch (training texts)."] = "contextual"
    # None: the task's own
    template: Annotated[str | None, r"Example format with {text} and a final {label}, "
                                    r"e.g. 'Word: {text}\nSentiment: {label}'."] = None
    instruction: Annotated[str | None, "Text placed before the shots (default: the task's own)."] = None
    length_normalize: Annotated[bool, "Divide label log-likelihoods by token count."] = False
    # on 2 CPU cores larger batches gain little
    batch_size: Annotated[int, "Queries per forward pass."] = 32
    seed: Annotated[int, "Seed for shot selection."] = 0
    max_length: Annotated[int | None, "Tokens per prompt, shots included (default: the context window)."] = None
    label_words: Annotated[str | None, "Words the prompt uses for the labels, comma list in label order."] = None
    # auto: bf16 where the device runs it at least 1.3x faster and predictions agree with fp32 (scoring/precision.py)
    precision: Annotated[Literal["auto", "fp32", "bf16"],
                         "auto, fp32 or bf16 (auto: bf16 where fast and in parity)."] = "auto"

    def __post_init__(self):
        problems = []
        if self.max_length is not None and self.max_length < 4:
            problems.append(f"--max-length must be >= 4, got {self.max_length}")
        if self.shots < 0:
            problems.append(f"--shots must be >= 0, got {self.shots}")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.calibration not in ("contextual", "batch"):
            problems.append(f"--calibration must be contextual or batch, got {self.calibration!r}")
        if self.select not in ("random", "balanced", "similar"):
            problems.append(f"--select must be random, balanced or similar, got {self.select!r}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.template is not None:
            problems += template_problems(self.template)
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class SearchConfig:
    """The flags of `tunelab prompt --search` (and --sensitivity)."""
    # the configuration running when the budget ends finishes
    budget_s: Annotated[float, "--search: seconds to spend trying configurations."] = 300.0
    max_configs: Annotated[int, "--search: most configurations to try."] = 40
    # held out stratified; the rest of the training set is the shot pool
    validation_size: Annotated[int, "--search: training examples held out to judge configurations."] = 100
    seed: Annotated[int, "Seed for the validation split and shot selection."] = 0

    def __post_init__(self):
        problems = []
        if self.budget_s <= 0:
            problems.append(f"--budget-s must be > 0, got {self.budget_s}")
        if self.max_configs < 1:
            problems.append(f"--max-configs must be >= 1, got {self.max_configs}")
        if self.validation_size < 2:
            problems.append(f"--validation-size must be >= 2, got {self.validation_size}")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class TuneConfig:
    """The flags of `tunelab tune`."""
    method: Annotated[Literal["lora", "full"], "full (every parameter) or lora (PEFT adapters)."] = "lora"
    # measured while planning: LoRA r=8 reached ~94% on vader after 2 epochs
    epochs: Annotated[int, "Maximum epochs (early stopping may end sooner)."] = 2
    lr: Annotated[float | None, "Learning rate (default: 1e-3 LoRA, 3e-5 full)."] = None  # None: DEFAULT_LR[method]
    batch_size: Annotated[int, "Examples per optimizer step."] = 16
    max_length: Annotated[int | None, "Tokens per prompt (default: derived from the training texts)."] = None
    lora_r: Annotated[int, "LoRA rank."] = 8
    lora_alpha: Annotated[int, "LoRA alpha (scaling alpha / r)."] = 16  # alpha = 2r, the usual scaling
    # PEFT's shorthand for every linear projection except the output head
    lora_targets: Annotated[str, "'all-linear' or module names (q_proj,v_proj,...)."] = "all-linear"
    # a few hundred examples for 2 epochs do not overfit enough to need it
    lora_dropout: Annotated[float, "Dropout on the LoRA path."] = 0.0
    val_fraction: Annotated[float, "Share of training held out for early stopping."] = 0.1
    patience: Annotated[int, "Epochs without a better validation loss before stopping."] = 2
    seed: Annotated[int, "Seed for initialisation and data order."] = 0
    merge: Annotated[bool, "LoRA: also write the merged model."] = False
    # bf16: the frozen base stored in bf16 (half its fp32 memory), the adapters and their optimizer state in fp32;
    # products in bf16 where the device is fast at it, else each layer's weight widened to fp32 for its own product
    # (rungs/low_precision.py). The artifact then serves the adapter unmerged on the same bf16 base.
    base_precision: Annotated[Literal["fp32", "bf16"], "LoRA: store the frozen base in fp32 or bf16."] = "fp32"
    # A training set too small for this many steps in `epochs` passes is repeated within each epoch: 32 examples in
    # batches of 16 for 2 epochs would otherwise be 4 optimizer steps. Chosen on vader-valence with 32 labels (LoRA,
    # Spearman on the 400 test words): 4 steps 0.695, 30 steps 0.775, 60 0.775, 120 0.782; checked on vader and
    # subjectivity (docs/BENCHMARKS.md, label-scarce).
    min_steps: Annotated[int, "Fewest optimizer steps in all; a small training set is repeated to reach them."] = 60
    # Each pass shuffles, then sorts groups of a few batches by length (transformers' length-grouped indices): a batch
    # holds texts of similar length, so little of its forward pass is padding (measured in docs/BENCHMARKS.md)
    length_groups: Annotated[bool, "Batch texts of similar length together (less padding)."] = True
    # None: train every epoch; else training stops once this many seconds have passed (the ladder's --budget-s
    # sets it); the best epoch so far is kept and the result says the run was cut short
    budget_s: Annotated[float | None, "Stop training after this many seconds (the best weights so far are kept)."] = (
        None)
    # auto: bf16 where the device runs it at least 1.3x faster and predictions agree with fp32 (scoring/precision.py)
    precision: Annotated[Literal["auto", "fp32", "bf16"],
                         "auto, fp32 or bf16 (auto: bf16 where fast and in parity)."] = "auto"

    def __post_init__(self):
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.method not in ("lora", "full"):
            problems.append(f"--method must be lora or full, got {self.method!r}")
        problems += at_least_one(("--epochs", self.epochs), ("--batch-size", self.batch_size),
                                 ("--lora-r", self.lora_r), ("--lora-alpha", self.lora_alpha),
                                 ("--patience", self.patience))
        if self.min_steps < 0:
            problems.append(f"--min-steps must be >= 0, got {self.min_steps}")
        if self.budget_s is not None and self.budget_s <= 0:
            problems.append(f"--budget-s must be > 0, got {self.budget_s}")
        if self.max_length is not None and self.max_length < 4:
            problems.append(f"--max-length must be >= 4, got {self.max_length}")
        if self.lr is not None and not (0 < self.lr < 1):
            problems.append(f"--lr must be in (0, 1), got {self.lr}")
        if not 0 < self.val_fraction < 1:
            problems.append(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.merge and self.method != "lora":
            problems.append("--merge applies to --method lora only")
        if self.base_precision not in ("fp32", "bf16"):
            problems.append(f"--base-precision must be fp32 or bf16, got {self.base_precision!r}")
        elif self.base_precision == "bf16" and (self.method != "lora" or self.merge):
            problems.append("--base-precision bf16 applies to --method lora without --merge (a merge into bf16 "
                            "weights would round the adapter away)")
        if problems:
            raise ConfigError(problems)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else TUNE_LR[self.method]


@dataclass(frozen=True)
class DistillConfig:
    """The flags of `tunelab distill`."""
    student: Annotated[str, "pruned:N (the teacher with N layers), encoder:PATH, or minilm."] = "minilm"
    # softens the teacher's distribution so the student sees its second choices
    temperature: Annotated[float, "KD temperature."] = 2.0
    alpha: Annotated[float, "Weight of the gold-label loss, where gold labels exist."] = 0.5
    epochs: Annotated[int, "Passes over the transfer set."] = 3
    lr: Annotated[float | None, "Learning rate (default: 5e-5 pruned, 1e-4 encoder)."] = None
    batch_size: Annotated[int, "Examples per optimizer step."] = 32
    max_length: Annotated[int | None, "Tokens per student input (default: derived from the texts)."] = None
    # an encoder student only: longer texts read in overlapping windows whose outputs are averaged, or cut
    long_texts: Annotated[Literal["windows", "cut"],
                          "Encoder student: texts past --max-length in windows, or cut (head + tail)."] = "windows"
    seed: Annotated[int, "Seed for initialisation and data order."] = 0
    length_groups: Annotated[bool, "Batch texts of similar length together (less padding)."] = True
    # None: every epoch; else the student stops training once this many seconds have passed (the ladder's --budget-s)
    budget_s: Annotated[float | None, "Stop training after this many seconds."] = None
    # auto: bf16 where the device runs it at least 1.3x faster and predictions agree with fp32 (scoring/precision.py)
    precision: Annotated[Literal["auto", "fp32", "bf16"],
                         "auto, fp32 or bf16 (auto: bf16 where fast and in parity)."] = "auto"

    def __post_init__(self):
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.budget_s is not None and self.budget_s <= 0:
            problems.append(f"--budget-s must be > 0, got {self.budget_s}")
        kind, _, argument = self.student.partition(":")
        if self.student != "minilm" and (kind not in ("pruned", "encoder") or not argument):
            problems.append(f"--student must be pruned:N, encoder:PATH or minilm, got {self.student!r}")
        if kind == "pruned" and not (argument.isdigit() and int(argument) >= 1):
            problems.append(f"--student pruned:N needs a whole number of layers N >= 1, got {self.student!r}")
        if self.long_texts not in ("windows", "cut"):
            problems.append(f"--long-texts must be windows or cut, got {self.long_texts!r}")
        if self.temperature <= 0:
            problems.append(f"--temperature must be > 0, got {self.temperature}")
        if self.alpha < 0:
            problems.append(f"--alpha must be >= 0, got {self.alpha}")
        problems += at_least_one(("--epochs", self.epochs), ("--batch-size", self.batch_size))
        if self.lr is not None and not 0 < self.lr < 1:
            problems.append(f"--lr must be in (0, 1), got {self.lr}")
        if problems:
            raise ConfigError(problems)

    @property
    def student_type(self) -> str:
        return "pruned" if self.student.startswith("pruned:") else "encoder"

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DISTILL_LR[self.student_type]


@dataclass(frozen=True)
class BaselineConfig:
    """The flags of `tunelab baseline`."""
    method: Annotated[Literal["tfidf", "embed"], "tfidf (word and character n-grams) or embed (frozen MiniLM)."] = (
        "tfidf")
    seed: Annotated[int, "Seed for the cross-validation folds."] = 0
    long_texts: Annotated[Literal["windows", "cut"],
                          "embed: texts past 256 tokens read in overlapping windows, or cut (head + tail)."] = "windows"

    def __post_init__(self):
        if self.method not in BASELINE_METHODS:
            raise ConfigError(f"--method must be one of {', '.join(BASELINE_METHODS)}, got {self.method!r}")
        if self.long_texts not in ("windows", "cut"):
            raise ConfigError(f"--long-texts must be windows or cut, got {self.long_texts!r}")


@dataclass(frozen=True)
class ProbeConfig:
    """The flags of `tunelab probe`: a linear head on the frozen base model's pooled hidden states."""
    # None: a quarter, half, three quarters of the way up and the top (scoring/hidden.candidate_layers)
    layers: Annotated[str | None, "Comma list of layers to try (default: 1/4, 1/2, 3/4 of the way up and the top)."] = (
        None)
    pooling: Annotated[Literal["auto", "mean", "last", "mean+last"],
                       "Pooling of the tokens' states (auto: chosen on validation)."] = "auto"
    # 512: SmolLM2 reads a 300-token passage in one window; longer texts are read whole, in windows, never cut
    frame: Annotated[Literal["prompt", "plain"],
                     "prompt: each text inside the task's zero-shot prompt; plain: the text alone."] = "prompt"
    window: Annotated[int, "Tokens per window; longer texts are read in overlapping windows, averaged."] = 512
    overlap: Annotated[int, "Tokens two neighbouring windows share."] = 64
    # held out stratified from training; layer, pooling and strength are chosen on it, then the head is refit on all
    validation_size: Annotated[int, "Training examples held out to choose layer, pooling and strength."] = 100
    seed: Annotated[int, "Seed for the validation split."] = 0
    precision: Annotated[Literal["auto", "fp32", "bf16"],
                         "auto, fp32 or bf16 (auto: bf16 where fast and in parity)."] = "auto"

    def __post_init__(self):
        problems = at_least_one(("--validation-size", self.validation_size))
        if self.pooling not in POOLINGS:
            problems.append(f"--pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.frame not in ("prompt", "plain"):
            problems.append(f"--frame must be prompt or plain, got {self.frame!r}")
        if self.window < 8:
            problems.append(f"--window must be >= 8, got {self.window}")
        if not 0 <= self.overlap < self.window // 2:
            problems.append(f"--overlap must lie in 0..{self.window // 2 - 1} (under half the window), "
                            f"got {self.overlap}")
        if self.layers is not None:
            try:
                layers = [int(part) for part in self.layers.split(",") if part.strip()]
            except ValueError:
                layers = []
            if not layers or min(layers) < 0:
                problems.append(f"--layers must be a comma list of layer numbers >= 0, got {self.layers!r}")
        if problems:
            raise ConfigError(problems)

    @property
    def layer_list(self) -> tuple[int, ...] | None:
        return tuple(sorted({int(p) for p in self.layers.split(",") if p.strip()})) if self.layers else None


@dataclass(frozen=True)
class BiasConfig:
    """The flags of `tunelab bias`."""
    # None: the task's own slices (built-in tasks slice by word length)
    slice_field: Annotated[str | None, "Test-file field to slice by (default: the task's own slices)."] = None
    probe: Annotated[str, "'names' (EEC names, shipped) or a JSON file of groups."] = "names"
    # in mean P(positive label) (or value)
    threshold: Annotated[float, "Largest allowed gap between groups per template."] = 0.1
    # None: "positive" when the task has it, else its last label
    positive_label: Annotated[str | None, "Label whose probability and rate are compared."] = None

    def __post_init__(self):
        if self.threshold < 0:
            raise ConfigError(f"--threshold must be >= 0, got {self.threshold}")


@dataclass(frozen=True)
class LadderConfig:
    """The flags of `tunelab ladder`."""
    rungs: Annotated[tuple[str, ...], "Comma list of tfidf,embed,probe,zero,one,few,lora,full,distill,cascade."] = RUNGS
    target_quality: Annotated[float | None, "Accuracy (or Spearman) the chosen rung must reach."] = None
    # a subsample of the task, fewer epochs and probes, a shorter search: sized for a few minutes on 2 cores
    quick: Annotated[bool, "The short built-in run (the quick-* settings below)."] = False
    few_shots: Annotated[int, "K of the few-shot rung when not searched."] = 4
    # The `few` rung's prompt is searched on held-out training examples (search.py) for this long; 0: plain K-shot.
    # The quick run spends at most quick_search_s.
    search_budget_s: Annotated[float, "Seconds the few rung's prompt search may take (0: none)."] = 120.0
    curve: Annotated[tuple[int, ...], "K values of the few-shot curve, comma list."] = (0, 1, 2, 4, 8)
    epochs: Annotated[int, "Fine-tuning epochs of the lora and full rungs."] = 2
    student: Annotated[str, "The distill rung's student spec."] = "minilm"
    distill_epochs: Annotated[int, "Epochs of the distill rung's student."] = 3
    quick_train: Annotated[int, "--quick: training examples sampled."] = 300
    quick_test: Annotated[int, "--quick: test examples sampled."] = 200
    quick_transfer: Annotated[int, "--quick: unlabeled texts sampled for the student's transfer set."] = 700
    quick_epochs: Annotated[int, "--quick: fine-tuning epochs."] = 1
    # 45 s tried 19 configurations on vader and 21 on subjectivity (left alone while choosing): on both, none beat the
    # task's own zero-shot prompt clearly, and 15 s keeps the same prompt (the search tries them in a fixed order)
    quick_search_s: Annotated[float, "--quick: most seconds for the few rung's prompt search."] = 15.0
    quick_names_per_group: Annotated[int, "--quick: names per group in the counterfactual probe."] = 3
    # Chosen on vader's quick run (lora / full accuracy, training s): 0 steps 0.940 / 0.940 (13 / 20 s), 30 0.955 /
    # 0.950 (26 / 42 s), 60 0.945 / 0.950 (50 / 70 s). Checked on subjectivity, left alone while choosing: 0 0.650 /
    # 0.625, 30 0.740 / 0.740, 60 0.770 / 0.785: 0 loses 12-16 points there, 30 stays inside 60's intervals at half
    # its cost (docs/BENCHMARKS.md).
    quick_min_steps: Annotated[int, "--quick: fine-tuning's --min-steps."] = 30
    # None: no overall cap; the few-shot curve and the sensitivity section still get 1.5x their estimate at most
    budget_s: Annotated[float | None, "Seconds for the whole ladder; optional sections get what the rungs leave."] = (
        None)
    # Label-scarce setting: only this many training examples keep their labels (balanced over labels); the other
    # training texts join the unlabeled texts, which the distill rung's teacher labels.
    train_labels: Annotated[int | None, "Keep only N gold labels; the other training texts go unlabeled."] = None
    seed: Annotated[int, "Seed for every rung."] = 0
    # auto: bf16 where the device runs it at least 1.3x faster and predictions agree with fp32 (scoring/precision.py)
    precision: Annotated[Literal["auto", "fp32", "bf16"],
                         "auto, fp32 or bf16 (auto: bf16 where fast and in parity)."] = "auto"

    def __post_init__(self):
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        unknown = [r for r in self.rungs if r not in RUNGS]
        if unknown or not self.rungs:
            problems.append(f"--rungs must name some of {','.join(RUNGS)}, got {','.join(self.rungs) or 'nothing'}")
        if self.target_quality is not None and not -1.0 <= self.target_quality <= 1.0:
            problems.append(f"--target-quality must lie in the metric's range (accuracy 0..1, Spearman -1..1), "
                            f"got {self.target_quality}")
        if self.few_shots < 2:
            problems.append(f"--few-shots must be >= 2, got {self.few_shots}")
        if self.train_labels is not None and self.train_labels < 2:
            problems.append(f"--train-labels must be >= 2, got {self.train_labels}")
        if self.search_budget_s < 0:
            problems.append(f"--search-budget-s must be >= 0, got {self.search_budget_s}")
        problems += at_least_one(("--epochs", self.epochs), ("--distill-epochs", self.distill_epochs),
                                 ("--quick-train", self.quick_train), ("--quick-test", self.quick_test),
                                 ("--quick-transfer", self.quick_transfer), ("--quick-epochs", self.quick_epochs),
                                 ("--quick-names-per-group", self.quick_names_per_group))
        if self.quick_min_steps < 0:
            problems.append(f"--quick-min-steps must be >= 0, got {self.quick_min_steps}")
        if self.budget_s is not None and self.budget_s <= 0:
            problems.append(f"--budget-s must be > 0, got {self.budget_s}")
        if self.quick_search_s < 0:
            problems.append(f"--quick-search-s must be >= 0, got {self.quick_search_s}")
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_flags(cls, *, rungs: str | None = None, curve: str | None = None, **fields) -> LadderConfig:
        """A config from command-line text: `rungs` and `curve` as comma lists."""
        if rungs is not None:
            fields["rungs"] = tuple(r.strip() for r in rungs.split(","))
        if curve is not None:
            fields["curve"] = tuple(parse_shot_counts(curve, "--curve"))
        return cls(**fields)


# ----------------------------------------------------------------------------------------------------------------
# Checks of command-line values


def at_least_one(*flags: tuple[str, int]) -> list[str]:
    """The problem of each (flag, value) whose value is below 1."""
    return [f"{flag} must be >= 1, got {value}" for flag, value in flags if value < 1]


def template_problems(template: str, fields: tuple[str, ...] | None = None) -> list[str]:
    """What keeps a template from being scored: no input in it, or a label that does not end it. With the task's
    `fields` known, a template must name only those (and a one-text task only {text})."""
    problems = []
    named = template_fields(template)
    if not named and template.count("{text}") != 1:
        problems.append(f"--template must contain {{text}} exactly once (or name the task's fields), got {template!r}")
    if fields is not None and set(named) - set(fields):
        have = ", ".join(f"{{{name}}}" for name in fields) or "{text} only"
        problems.append(f"--template names {', '.join(sorted(set(named) - set(fields)))}, which the task does not "
                        f"have (its input: {have})")
    if not template.rstrip().endswith("{label}") or template.count("{label}") != 1:
        problems.append(f"--template must end with {{label}} (the label is scored after it), got {template!r}")
    return problems


def parse_shot_counts(text: str, flag: str) -> list[int]:
    """K values from "4" or "0,1,4"."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be an integer or a comma list of integers, got {text!r}") from None
    if not counts:
        raise ConfigError(f"{flag} must name at least one K, got {text!r}")
    return counts


