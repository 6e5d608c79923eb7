"""The ladder's conclusions: the parameter facts checked on the run's own artifacts, and the recommendation (the
cheapest rung that is good enough, by interval against the target or tied with the best by paired difference)."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np

from tunelab.config import RUNGS
from tunelab.measure.evaluate import (
    deciding_metric,
    headline_quality,
    quality_metric,
)
from tunelab.measure.intervals import paired_difference
from tunelab.measure.multilabel import label_set_matrix
from tunelab.models import Model, weights_fingerprint
from tunelab.predictor import read_artifact_json
from tunelab.tasks import Task


def parameter_facts(model: Model, base_weights: str, out_dir: Path, results: dict) -> list[dict]:
    """The parameter contract, checked on this run's own artifacts."""
    facts = []
    prompt_rungs = [r for r in ("zero", "one", "few") if r in results]
    if prompt_rungs:
        after = weights_fingerprint(model.lm)
        unchanged = after == base_weights and all(
            read_artifact_json(out_dir / r / "predictor")["params_trainable"] == 0 for r in prompt_rungs)
        facts.append({"fact": "prompting changed no parameter", "holds": unchanged,
                      "evidence": f"hash of the base weights {base_weights} before, {after} after; "
                                  f"0 trainable parameters in {', '.join(prompt_rungs)}"})
    if "probe" in results:
        probe = read_artifact_json(out_dir / "probe" / "predictor")
        frozen = probe["params_total"] - probe["params_trainable"]
        facts.append({"fact": "the probe trains only its head (the base model is frozen)",
                      "holds": frozen == model.params_total and weights_fingerprint(model.lm) == base_weights,
                      "evidence": f"{probe['params_total']:,} total = base {frozen:,} + head "
                                  f"{probe['params_trainable']:,} trainable"})
    for rung in ("lora", "full"):
        if rung in results:
            total = read_artifact_json(out_dir / rung / "predictor")["params_total"]
            facts.append({"fact": f"the {rung} model has as many parameters as its base",
                          "holds": total == model.params_total,
                          "evidence": f"{total:,} vs base {model.params_total:,}"})
    if "distill" in results:
        student = read_artifact_json(out_dir / "distill" / "predictor")
        facts.append({"fact": "the distilled model has fewer parameters than its teacher",
                      "holds": student["params_total"] < student["params_teacher"],
                      "evidence": f"{student['params_total']:,} vs teacher {student['params_teacher']:,}"})
    return facts


def _status(interval: list[float] | None, quality: float, target: float) -> str:
    """Where a rung stands against the target: its whole interval above (`reaches`), its whole interval below
    (`below`), or the target inside its interval (`compatible`: this test set cannot tell)."""
    low, high = interval or (quality, quality)
    return "reaches" if low >= target else "below" if high < target else "compatible"


def paired_quality(results: dict, task: Task, first: str, second: str) -> dict:
    """first's quality minus second's, with its interval on paired resamples of the test split."""
    encode = (lambda outputs: np.array([task.labels.index(o) if o in task.labels else len(task.labels)
                                        for o in outputs])) if task.is_classification else np.array
    if task.is_multilabel:  # outputs are label sets
        encode = partial(label_set_matrix, task.labels)
    gold = encode([e.label for e in task.test])
    return paired_difference(deciding_metric(task), gold, encode(results[first]["test_outputs"]),
                             encode(results[second]["test_outputs"]))


def recommend(results: dict, task: Task, target: float | None, order: list[str] | None = None) -> dict:
    """The rung to build: the lowest on the ladder (least effort) whose interval reaches the target (else one whose
    interval holds it, said so); without a target, the lowest one that cannot be told apart from the best rung.
    Also the fastest rung to serve among those, each rung's standing against the target, and the rungs that
    cannot be told apart from the recommended one (paired bootstrap of the quality difference). `order` is the
    ladder's order of the results' keys, least effort first (default: RUNGS')."""
    metric = quality_metric(task.kind)
    ordered = order or [r for r in RUNGS if r in results]
    quality = {r: headline_quality(results[r]["metrics"]) for r in ordered}
    intervals = {r: results[r]["metrics"].get("intervals", {}).get(metric) for r in ordered}
    comparable = [r for r in ordered if "test_outputs" in results[r]]
    best = max(ordered, key=quality.get)
    if target is None:
        status = {r: "tied with the best" if r == best or (r in comparable and best in comparable and not
                                                           paired_quality(results, task, best, r)["distinguishable"])
                  else "below the best" for r in ordered}
        candidates, basis = [r for r in ordered if status[r] == "tied with the best"], "tied"
    else:
        status = {r: _status(intervals[r], quality[r], target) for r in ordered}
        candidates = [r for r in ordered if status[r] == "reaches"]
        basis = "reaches"
        if not candidates:
            candidates, basis = [r for r in ordered if status[r] == "compatible"], "compatible"
    chosen = candidates[0] if candidates else None
    speed = {r: results[r]["metrics"]["examples_per_s"] for r in ordered}
    fastest = max(candidates, key=speed.get) if candidates else None
    against_chosen = {r: paired_quality(results, task, r, chosen) for r in comparable
                      if chosen in comparable and r != chosen}
    faster = {r: trade_off(r, chosen, speed, against_chosen.get(r), quality, intervals, target, len(task.test))
              for r in ordered if chosen is not None and r != chosen and speed[r] > speed[chosen]
              and status[r] in ("reaches", "compatible", "tied with the best")}
    return {"metric": metric, "target": target, "best": best, "cheapest_to_build": chosen,
            "fastest_to_serve": fastest, "basis": basis, "status": status, "candidates": candidates,
            "versus_recommended": against_chosen,
            "indistinguishable": [r for r, d in against_chosen.items() if not d["distinguishable"]],
            "faster_compatible": dict(sorted(faster.items(), key=lambda item: -item[1]["speed_ratio"]))}


def examples_to_decide(n: int, interval: list[float] | None, gap: float) -> int | None:
    """About how many test examples would shrink `interval` (measured on n) until it excludes a point `gap` away
    from its centre: intervals narrow as 1/sqrt(n). None when the gap is 0 (no number of examples decides)."""
    if not interval or gap == 0:
        return None
    half_width = (interval[1] - interval[0]) / 2
    return max(n, math.ceil(n * (half_width / abs(gap)) ** 2))


def trade_off(rung: str, chosen: str, speed: dict, paired: dict | None, quality: dict, intervals: dict,
              target: float | None, n: int) -> dict:
    """A rung faster than the recommended one and compatible with the target (or tied with the best): how much
    faster, how much worse (paired), and what would decide between them."""
    found = {"speed_ratio": speed[rung] / speed[chosen], "examples_per_s": speed[rung], "quality": quality[rung],
             "interval": intervals[rung]}
    if paired is not None:
        found.update(difference=paired["difference"], difference_interval=paired["interval"],
                     examples_to_tell_apart=examples_to_decide(n, paired["interval"], paired["difference"]))
    if target is not None:
        found["examples_to_settle_target"] = examples_to_decide(n, intervals[rung], quality[rung] - target)
    return found
