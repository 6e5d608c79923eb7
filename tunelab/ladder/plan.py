"""The ladder's plan: what each section will cost, estimated from short timed probes on this machine and this task
(never from constants), printed with an ETA before any work starts; and each section's time budget, so that the
optional sections (the few-shot curve, the prompt sensitivity) can never run unbounded.

The probes: the zero-shot prompt scores a sample of training texts (seconds per text, after a warm-up), each
fine-tuning method runs one optimizer step on one batch (seconds per training example), and an encoder student
one forward and backward pass. Everything else is counted in those units: how many texts each section scores,
how many examples it trains on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tunelab.config import RUNGS, DistillConfig, LadderConfig, PromptConfig, TuneConfig
from tunelab.models import Model
from tunelab.rungs.prompting import few_shot
from tunelab.rungs.students import time_encoder_training
from tunelab.rungs.tuning import passes_per_epoch, time_training_step
from tunelab.tasks import Task, split_examples

PROBE_TEXTS = 24  # training texts the scoring probe times (after scoring 4 of them to warm up)
SLACK = 1.5  # without --budget-s, a flexible section may take this many times its estimate,
FLOOR_S = 5.0  # plus this: building each prompt (shots, calibration) costs a little that the texts/s do not count
PRUNED_COST = 3  # a pruned student's training example: forward + backward (2 forwards), of kept / all layers


@dataclass
class Plan:
    sections: list[dict] = field(default_factory=list)  # name, estimate_s, budget_s (None: not cut)
    probes: dict = field(default_factory=dict)
    budget_s: float | None = None

    @property
    def estimate_s(self) -> float:
        return sum(section["estimate_s"] for section in self.sections)

    def budget(self, name: str) -> float | None:
        return next((s["budget_s"] for s in self.sections if s["name"] == name), None)

    def lines(self) -> list[str]:
        rate = 1 / self.probes["score_s_per_text"]
        lines = [f"plan (probed here: scoring {rate:,.1f} texts/s"
                 + "".join(f", {m} training {1 / s:,.1f} examples/s" for m, s in self.probes.get("train", {}).items())
                 + f"; precision {self.probes.get('precision', 'fp32')}):"]
        for section in self.sections:
            budget = f" (budget {section['budget_s']:.0f} s)" if section["budget_s"] is not None else ""
            lines.append(f"  {section['name']:<20} ~{section['estimate_s']:6.0f} s{budget}")
        total = f"~{self.estimate_s / 60:.1f} min"
        lines.append(f"  {'total':<20} {total}" + (f" of a --budget-s of {self.budget_s / 60:.1f} min"
                                                  if self.budget_s else ""))
        return lines


def probe(model: Model, task: Task, config: LadderConfig) -> dict:
    """Seconds per scored text (zero-shot prompt, in the ladder's precision) and per training example (each
    fine-tuning method in the run), timed here."""
    predictor = few_shot(model, task, PromptConfig(seed=config.seed, precision=config.precision))
    texts = [e.text for e in task.train[:PROBE_TEXTS]]
    predictor.predict_batch(texts[:4])  # warm-up: first calls pay for allocation and kernel selection
    started = time.perf_counter()
    predictor.predict_batch(texts)
    probes = {"score_s_per_text": (time.perf_counter() - started) / len(texts),
              "precision": config.precision, "train": {},
              "teacher_layers": getattr(model.lm.config, "num_hidden_layers", None) or 1}
    for method in (m for m in ("lora", "full") if m in config.rungs):
        probes["train"][method] = time_training_step(model, task, _tune_config(config, method))
    if "distill" in config.rungs and not config.student.startswith("pruned:"):
        student = DistillConfig(student=config.student, precision=config.precision)
        probes["student_s_per_text"] = time_encoder_training(task, student)
    return probes


def _tune_config(config: LadderConfig, method: str) -> TuneConfig:
    return TuneConfig(method=method, epochs=config.quick_epochs if config.quick else config.epochs,
                      min_steps=config.quick_min_steps if config.quick else TuneConfig.min_steps,
                      seed=config.seed, precision=config.precision)


def make_plan(task: Task, config: LadderConfig, probes: dict, n_probe_texts: int, curve_ks: list[int],
              sensitivity_evaluations: int, n_validation: int) -> Plan:
    """Each section's estimate in the probed units, and its budget: a flexible section gets SLACK times its
    estimate, or with --budget-s its share of what the rungs leave (none when nothing is left)."""
    score = probes["score_s_per_text"]
    measured = len(task.test) + n_probe_texts  # every rung scores the test split and the bias probes
    sections = []
    for rung in (r for r in RUNGS if r in config.rungs):
        if rung in ("tfidf", "embed"):
            estimate = (len(task.train) + measured) * score * (0.02 if rung == "tfidf" else 0.2)
        elif rung == "probe":  # one forward pass per text in the zero-shot prompt, as the scoring probe timed
            estimate = (len(task.train) + measured) * score
        elif rung == "cascade":  # the teacher on its validation split and the test split, the student on both
            estimate = (len(task.test) + 0.1 * len(task.train)) * score * 2
        elif rung in ("zero", "one"):
            estimate = measured * score
        elif rung == "few":
            search_s = min(config.search_budget_s, config.quick_search_s) if config.quick else config.search_budget_s
            estimate = search_s + measured * score
        elif rung in ("lora", "full"):
            tune = _tune_config(config, rung)
            train, validation = split_examples(list(task.train), task.kind, tune.val_fraction, tune.seed)
            visits = len(train) * passes_per_epoch(len(train), tune) * tune.epochs
            estimate = visits * probes["train"][rung] + tune.epochs * len(validation) * score + measured * score
        else:
            transfer = len(task.train) + len(task.unlabeled)
            layers = model_layers(config, probes)
            student = probes.get("student_s_per_text", score * PRUNED_COST * layers)
            estimate = transfer * (score + config.distill_epochs * student) + measured * student / 3
        sections.append({"name": rung, "estimate_s": estimate, "budget_s": None})
    flexible = [{"name": "few-shot curve", "estimate_s": len(curve_ks) * len(task.test) * score},
                {"name": "prompt sensitivity", "estimate_s": sensitivity_evaluations * n_validation * score}]
    fixed = sum(s["estimate_s"] for s in sections)
    wanted = sum(s["estimate_s"] for s in flexible)
    for section in flexible:
        if config.budget_s is None:
            section["budget_s"] = SLACK * section["estimate_s"] + FLOOR_S
        else:
            left = max(0.0, config.budget_s - fixed)
            section["budget_s"] = left * section["estimate_s"] / wanted if wanted else 0.0
        sections.append(section)
    return Plan(sections, probes, config.budget_s)


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
