"""The ladder's plan: what each section will cost, estimated from short timed probes on this machine and this task
(never from constants), printed with an ETA before any work starts; and each section's time budget.

The probes: the zero-shot prompt scores a sample of training texts (seconds per token the model reads, after a
warm-up), each fine-tuning method runs one optimizer step on one batch (seconds per training example), and an encoder
student one forward and backward pass. Everything else is counted in those units: how many tokens each section
scores (texts of different lengths, the test split and the short bias-probe sentences alike), how many examples it
trains on.

Each section's estimate has a part that must run whole (scoring the test split and the bias probes, labelling the
transfer set) and a part that a budget can shorten (training, the prompt search, the few-shot curve, the prompt
sensitivity). With --budget-s the rungs' shortenable parts (training, the search) share what the whole parts
leave, in proportion to their estimates, and the optional sections (the curve, the sensitivity) share what the rungs
leave after that: a rung's training is never cut for an optional section. Without --budget-s only the optional
sections are bounded (SLACK times their estimate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tunelab.config import RUNGS, DistillConfig, LadderConfig, PromptConfig, TuneConfig
from tunelab.models import Model
from tunelab.predictor import predict
from tunelab.rungs.prompting import few_shot
from tunelab.rungs.students import time_encoder_training
from tunelab.rungs.tuning import passes_per_epoch, time_training_step
from tunelab.tasks import Task, split_examples

PROBE_TEXTS = 24  # training texts the scoring probe times (after scoring 4 of them to warm up)
SLACK = 1.5  # without --budget-s, an optional section may take this many times its estimate,
FLOOR_S = 5.0  # plus this: building each prompt (shots, calibration) costs a little that the tokens/s do not count
PRUNED_COST = 3  # a pruned student's training example: forward + backward (2 forwards), of kept / all layers
OPTIONAL = ("few-shot curve", "prompt sensitivity")


@dataclass
class Plan:
    sections: list[dict] = field(default_factory=list)  # name, estimate_s, budget_s (None: not cut)
    probes: dict = field(default_factory=dict)
    budget_s: float | None = None
    spent_s: float = 0.0  # seconds before the plan (precision check, probes)

    @property
    def estimate_s(self) -> float:
        return sum(section["estimate_s"] for section in self.sections)

    def budget(self, name: str) -> float | None:
        """Seconds the shortenable part of section `name` may take (None: not bounded)."""
        return next((s["budget_s"] for s in self.sections if s["name"] == name), None)

    def lines(self) -> list[str]:
        rate = 1 / self.probes["score_s_per_token"]
        lines = [f"plan (probed here: scoring {rate:,.0f} tokens/s"
                 + "".join(f", {m} training {1 / s:,.1f} examples/s" for m, s in self.probes.get("train", {}).items())
                 + f"; precision {self.probes.get('precision', 'fp32')}):"]
        for section in self.sections:
            budget = (f" (budget {section['budget_s']:.0f} s for {section['shortenable']})"
                      if section["budget_s"] is not None else "")
            lines.append(f"  {section['name']:<20} ~{section['estimate_s']:6.0f} s{budget}")
        total = f"~{self.estimate_s / 60:.1f} min"
        lines.append(f"  {'total':<20} {total} after {self.spent_s:.0f} s of checks and probes"
                     + (f", of a --budget-s of {self.budget_s / 60:.1f} min" if self.budget_s else ""))
        return lines


def probe(model: Model, task: Task, config: LadderConfig) -> dict:
    """Seconds per token scored (zero-shot prompt, in the ladder's precision) and per training example (each
    fine-tuning method in the run), timed here."""
    predictor = few_shot(model, task, PromptConfig(seed=config.seed, precision=config.precision))
    texts = [e.text for e in task.train[:PROBE_TEXTS]]
    predictor.predict_batch(texts[:4])  # warm-up: first calls pay for allocation and kernel selection
    started = time.perf_counter()
    predict(predictor, texts)  # batched as the rungs' scoring is (one padded batch of long texts ran ~2x slower)
    seconds = time.perf_counter() - started
    probes = {"score_s_per_token": seconds / count_tokens(model, task, texts), "precision": config.precision,
              "train": {}, "teacher_layers": getattr(model.lm.config, "num_hidden_layers", None) or 1}
    for method in (m for m in ("lora", "full") if m in config.rungs):
        probes["train"][method] = time_training_step(model, task, _tune_config(config, method))
    if "distill" in config.rungs and not config.student.startswith("pruned:"):
        student = DistillConfig(student=config.student, precision=config.precision)
        probes["student_s_per_text"] = time_encoder_training(task, student)
    return probes


def count_tokens(model: Model, task: Task, texts: list[str]) -> int:
    """Tokens the model reads to score `texts` after the task's cached prompt start: each text's own tokens and the
    prompt's per-text part (the query template, the longest label)."""
    from tunelab.scoring.verbalizer import Verbalizer

    per_text = Verbalizer.for_task(model.tokenizer, task).overhead("")
    return sum(map(len, model.tokenizer(texts, add_special_tokens=False)["input_ids"])) + per_text * len(texts) \
        if texts else 0


def _tune_config(config: LadderConfig, method: str) -> TuneConfig:
    return TuneConfig(method=method, epochs=config.quick_epochs if config.quick else config.epochs,
                      min_steps=config.quick_min_steps if config.quick else TuneConfig.min_steps,
                      seed=config.seed, precision=config.precision)


def make_plan(task: Task, config: LadderConfig, probes: dict, tokens: dict[str, int], curve_ks: list[int],
              sensitivity_evaluations: int, n_validation: int, spent_s: float = 0.0) -> Plan:
    """Each section's estimate in the probed units, and its budget. `tokens`: the tokens (count_tokens) of the
    "train", "test", "probe" (bias-probe sentences) and "unlabeled" texts; "probe_texts": how many probe sentences.
    `spent_s`: what the run took before the plan (the precision check, the probes), which --budget-s also covers."""
    score = probes["score_s_per_token"]
    per_train = tokens["train"] / max(1, len(task.train))  # a mean training text, for the sets drawn from it
    measured = (tokens["test"] + tokens["probe"]) * score  # every rung scores the test split and the bias probes
    sections = []  # whole: must run; shortenable: a budget may cut it
    for rung in (r for r in RUNGS if r in config.rungs):
        whole, shortenable, what = measured, 0.0, None
        if rung in ("tfidf", "embed"):
            whole = (tokens["train"] * score + measured) * (0.02 if rung == "tfidf" else 0.2)
        elif rung == "probe":  # one forward pass per text in the zero-shot prompt, as the scoring probe timed
            whole = tokens["train"] * score + measured
        elif rung == "cascade":  # the teacher on its validation split and the test split, the student on both
            whole = (tokens["test"] + 0.1 * tokens["train"]) * score * 2
        elif rung == "few":
            search_s = min(config.search_budget_s, config.quick_search_s) if config.quick else config.search_budget_s
            shortenable, what = search_s, "the prompt search"
        elif rung in ("lora", "full"):
            tune = _tune_config(config, rung)
            train, validation = split_examples(list(task.train), task.kind, tune.val_fraction, tune.seed)
            visits = len(train) * passes_per_epoch(len(train), tune) * tune.epochs
            shortenable = visits * probes["train"][rung] + tune.epochs * len(validation) * per_train * score
            what = "training"
        elif rung == "distill":
            transfer = len(task.train) + len(task.unlabeled)
            student = probes.get("student_s_per_text", per_train * score * PRUNED_COST * model_layers(config, probes))
            whole = ((tokens["train"] + tokens["unlabeled"]) * score  # the teacher labels the transfer set
                     + (len(task.test) + tokens["probe_texts"]) * student / 3)  # a forward pass, no backward
            shortenable, what = transfer * config.distill_epochs * student, "training"
        sections.append({"name": rung, "whole_s": whole, "shortenable_s": shortenable, "shortenable": what})
    sections.append({"name": "few-shot curve", "whole_s": 0.0, "shortenable": "the curve",
                     "shortenable_s": len(curve_ks) * tokens["test"] * score})
    sections.append({"name": "prompt sensitivity", "whole_s": 0.0, "shortenable": "the sensitivity",
                     "shortenable_s": sensitivity_evaluations * n_validation * per_train * score})
    shares = {}  # the share of its shortenable part each tier gets
    if config.budget_s is not None:
        left = max(0.0, config.budget_s - spent_s - sum(s["whole_s"] for s in sections))
        for tier in (False, True):  # the rungs' training and search first; the optional sections get what is left
            wanted = sum(s["shortenable_s"] for s in sections if (s["name"] in OPTIONAL) == tier)
            shares[tier] = min(SLACK, left / wanted) if wanted else 0.0
            left = max(0.0, left - wanted)
    for section in sections:
        flexible, optional = section["shortenable_s"], section["name"] in OPTIONAL
        if shares and section["shortenable"]:
            section["budget_s"] = shares[optional] * flexible
        elif optional:
            section["budget_s"] = SLACK * flexible + FLOOR_S
        else:
            section["budget_s"] = None
        expected = flexible if section["budget_s"] is None else min(flexible, section["budget_s"])
        section["estimate_s"] = section["whole_s"] + expected
    return Plan(sections, probes, config.budget_s, spent_s)


def model_layers(config: LadderConfig, probes: dict) -> float:
    """A pruned student's share of the teacher's layers (1 when the student is an encoder)."""
    if not config.student.startswith("pruned:"):
        return 1.0
    return int(config.student.split(":")[1]) / probes.get("teacher_layers", 30)


def deadline(budget_s: float | None) -> float | None:
    """The time.monotonic() after which a section starts no new work."""
    return None if budget_s is None else time.monotonic() + budget_s


def sensitivity_count(k_values: tuple[int, ...], variants: int) -> int:
    """Evaluations of the validation split that the sensitivity section makes: per K, `variants` shot sets and
    orders and 2 templates."""
    return len(k_values) * (2 * variants + 2)
