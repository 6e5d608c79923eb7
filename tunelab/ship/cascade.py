"""A cheap-first cascade: the fast model answers when its top probability (for several labels an example, its least
sure label's sureness) exceeds a threshold; the strong model
answers the rest (escalated). The threshold is chosen on labelled validation examples, to reach a target quality
with as few escalations as possible, or to escalate at most a given share.

The artifact is a small folder: tunelab.json names both members by path and fingerprint (a member that changed is
refused on load), and records the threshold and the validation frontier it was chosen on. A cascade is a predictor
like the others; it counts what it escalated (`escalated`, `seen`), which bulk inference and the service report.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from tunelab.errors import ConfigError, ModelError
from tunelab.measure.evaluate import deciding_metric, gold_and_outputs, quality_metric
from tunelab.measure.multilabel import centred, sureness
from tunelab.predictor import Predictions, Predictor, load_predictor, predict, write_artifact_json
from tunelab.tasks import Task


class CascadePredictor:
    """fast.predict where fast is sure enough, strong.predict elsewhere."""

    rung = "cascade"
    # Texts per call: the strong member's fixed cost per call (its prompt's cache copied, a forward pass) is paid
    # once per batch however few texts it gets, so the few escalations of many texts are batched together.
    min_batch_size = 256

    def __init__(self, fast: Predictor, strong: Predictor, threshold: float, meta: dict, *,
                 paths: tuple[str, str] | None = None):
        if fast.kind == "regression" or strong.kind != fast.kind:
            raise ConfigError("a cascade routes by the fast model's confidence: both members must classify, or both "
                              "give several labels")
        if tuple(fast.label_names) != tuple(strong.label_names):
            raise ConfigError(f"the cascade's members predict different labels: {list(fast.label_names)} and "
                              f"{list(strong.label_names)}")
        self.fast, self.strong, self.threshold, self.meta, self.paths = fast, strong, float(threshold), meta, paths
        self.kind, self.label_names = fast.kind, tuple(fast.label_names)
        self.seen = self.escalated = 0

    @property
    def params_total(self) -> int:
        return self.fast.params_total + self.strong.params_total

    @property
    def params_trainable(self) -> int:
        return self.fast.params_trainable + self.strong.params_trainable

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.fast.fingerprint, self.strong.fingerprint,
                                          round(self.threshold, 8)]).encode()).hexdigest()[:16]

    @property
    def escalated_share(self) -> float | None:
        return self.escalated / self.seen if self.seen else None

    def describe_model(self) -> dict:
        return {"model": f"cascade: {self.fast.rung} ({self.fast.fingerprint}) answers above "
                         f"{'sureness' if self.kind == 'multilabel' else 'top probability'} "
                         f"{self.threshold:.3f}, else {self.strong.rung} ({self.strong.fingerprint})"}

    def predict_batch(self, texts: list[str]) -> Predictions:
        # each member gets its share whole where it is small (one call: short texts), split by predict()'s size
        # bound where it is not (a causal-LM teacher given 100 escalated e-mails at once would pad them all to the
        # longest); batches of 32 instead of one call cost the vader cascade 22% of its speed
        probs, confidence = decision_scores(predict(self.fast, texts, batch_size=len(texts)))
        probs = probs.copy()
        escalate = np.flatnonzero(confidence <= self.threshold)
        if len(escalate):
            probs[escalate] = decision_scores(predict(self.strong, [texts[i] for i in escalate],
                                                      batch_size=len(escalate)))[0]
        self.seen += len(texts)
        self.escalated += len(escalate)
        return _mixed(self.kind, self.label_names, probs)

    def save(self, directory: Path) -> None:
        if self.paths is None:
            raise ConfigError("a cascade is saved naming its members' folders: build it from saved predictors")
        write_artifact_json(directory, {
            "rung": self.rung, "kind": self.kind, "labels": list(self.label_names), "threshold": self.threshold,
            **({"thresholds": [0.5] * len(self.label_names)} if self.kind == "multilabel" else {}),  # centred
            "fast": {"path": self.paths[0], "fingerprint": self.fast.fingerprint, "rung": self.fast.rung},
            "strong": {"path": self.paths[1], "fingerprint": self.strong.fingerprint, "rung": self.strong.rung},
            **self.meta, "params_total": self.params_total, "params_trainable": self.params_trainable,
            "fingerprint": self.fingerprint})

    @classmethod
    def load(cls, directory: Path, payload: dict) -> CascadePredictor:
        members = []
        for role in ("fast", "strong"):
            path = Path(payload[role]["path"])
            path = path if path.is_absolute() else (directory / path).resolve()
            member = load_predictor(path)
            if member.fingerprint != payload[role]["fingerprint"]:
                raise ModelError(f"{directory}: the {role} member {path} has fingerprint {member.fingerprint}, but "
                                 f"the cascade was built with {payload[role]['fingerprint']}")
            members.append(member)
        meta = {key: payload[key] for key in ("selection", "metrics") if key in payload}
        return cls(*members, payload["threshold"], meta, paths=(payload["fast"]["path"], payload["strong"]["path"]))


def decision_scores(predictions: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """(scores, confidence) as a cascade mixes and routes them: a classifier's probabilities and its top one; for
    several labels, each label's score centred on its threshold (so both members decide at 0.5) and the sureness
    of the least sure label."""
    if predictions.kind == "multilabel":
        return (centred(predictions.probs, predictions.thresholds),
                sureness(predictions.probs, predictions.thresholds))
    return predictions.probs, predictions.probs.max(axis=1)


def _mixed(kind: str, label_names: tuple[str, ...], scores: np.ndarray) -> Predictions:
    thresholds = np.full(len(label_names), 0.5) if kind == "multilabel" else None
    return Predictions(kind, label_names, probs=scores, thresholds=thresholds)


def frontier(fast: Predictions, strong: Predictions, task: Task, examples) -> list[dict]:
    """Every useful threshold on these examples: the cascade's quality and the share it escalates. Thresholds are
    0 (the fast model alone), each distinct confidence of the fast model (its top probability; for several labels
    its least sure label's sureness), and 1 (the strong model alone)."""
    metric = deciding_metric(task)
    (fast_probs, confidence), strong_probs = decision_scores(fast), decision_scores(strong)[0]
    rows = []
    for threshold in np.unique(np.concatenate([[0.0, 1.0], confidence])):
        escalate = confidence <= threshold
        mixed = np.where(escalate[:, None], strong_probs, fast_probs)
        gold, outputs = gold_and_outputs(task, _mixed(fast.kind, fast.label_names, mixed), examples)
        rows.append({"threshold": float(threshold), "quality": metric(gold, outputs),
                     "escalated": float(escalate.mean())})
    return rows


def choose_threshold(rows: list[dict], *, target_quality: float | None, max_escalated: float | None) -> dict:
    """The row to use: with `max_escalated`, the best quality among thresholds escalating at most that share;
    else the fewest escalations whose quality reaches `target_quality`."""
    if max_escalated is not None:
        allowed = [r for r in rows if r["escalated"] <= max_escalated] or [rows[0]]
        return max(allowed, key=lambda r: (r["quality"], -r["escalated"]))
    reaching = [r for r in rows if r["quality"] >= target_quality]
    if not reaching:
        return max(rows, key=lambda r: (r["quality"], -r["escalated"]))
    return min(reaching, key=lambda r: (r["escalated"], -r["quality"]))


def build_cascade(fast_dir: str | Path, strong_dir: str | Path, task: Task, validation: list, *, source: str,
                  target_quality: float | None = None, max_escalated: float | None = None,
                  out_dir: str | Path | None = None) -> CascadePredictor:
    """A cascade of two saved predictors, its threshold chosen on `validation` (labelled examples; `source` says
    where they come from): by default to reach the strong model's own validation quality.

    Raises:
        ConfigError: members that are not classifiers of the same labels, or no validation examples.
    """
    if not validation:
        raise ConfigError("the cascade's threshold is chosen on labelled validation examples; none were given")
    fast, strong = load_predictor(fast_dir), load_predictor(strong_dir)
    texts = [e.text for e in validation]
    rows = frontier(predict(fast, texts), predict(strong, texts), task, validation)
    strong_quality = rows[-1]["quality"]
    target = strong_quality if target_quality is None and max_escalated is None else target_quality
    chosen = choose_threshold(rows, target_quality=target, max_escalated=max_escalated)
    paths = (str(fast_dir), str(strong_dir))
    if out_dir is not None:  # members named relative to the cascade's folder, so the three can move together
        paths = tuple(os.path.relpath(Path(p).resolve(), Path(out_dir).resolve()) for p in paths)
    selection = {"fitted_on": source, "n_validation": len(validation), "target_quality": target,
                 "max_escalated": max_escalated, "chosen": chosen, "frontier": rows}
    return CascadePredictor(fast, strong, chosen["threshold"], {"selection": selection}, paths=paths)


def cascade_report(built: CascadePredictor, task: Task, out_dir: str | Path, *, overwrite: bool = False) -> dict:
    """The cascade measured on the test split against its strong member (paired difference), its share escalated
    and its speed, the test frontier over thresholds; then the cascade saved to `out_dir`."""
    from tunelab.measure.evaluate import evaluate_predictions
    from tunelab.measure.intervals import paired_difference
    from tunelab.predictor import save_predictor

    if Path(out_dir).exists() and not overwrite:
        raise ConfigError(f"{out_dir} exists; pass --overwrite to replace it")
    strong_metrics, strong_predictions = evaluate_predictions(built.strong, task)
    fast_metrics, fast_predictions = evaluate_predictions(built.fast, task)
    built.seen = built.escalated = 0
    metrics, predictions = evaluate_predictions(built, task)
    share = built.escalated_share
    gold, outputs = gold_and_outputs(task, predictions)
    _, strong_outputs = gold_and_outputs(task, strong_predictions)
    versus = paired_difference(deciding_metric(task), gold, outputs, strong_outputs)
    rows = frontier(fast_predictions, strong_predictions, task, task.test)
    fast_s, strong_s = 1 / fast_metrics["examples_per_s"], 1 / strong_metrics["examples_per_s"]
    for row in rows:  # what each threshold would serve: every text through fast, the escalated ones through strong
        row["examples_per_s"] = 1 / (fast_s + row["escalated"] * strong_s)
    report = {"metrics": {**metrics, "escalated_share": share}, "strong": strong_metrics, "fast": fast_metrics,
              "versus_strong": versus, "speed_ratio": metrics["examples_per_s"] / strong_metrics["examples_per_s"],
              "test_frontier": rows, "selection": built.meta["selection"]}
    built.meta["metrics"] = report["metrics"]
    built.meta["selection"]["test_frontier"] = rows
    save_predictor(built, out_dir, task.text_fields)
    metric = quality_metric(task.kind)
    low, high = versus["interval"] or (versus["difference"],) * 2
    chosen = built.meta["selection"]["chosen"]
    report["lines"] = [
        f"cascade: {built.fast.rung} answers when its {'least sure label' if built.kind == 'multilabel' else 'top'}"
        f" {'is that sure' if built.kind == 'multilabel' else 'probability exceeds'} {built.threshold:.3f}, else "
        f"{built.strong.rung} (chosen on {built.meta['selection']['fitted_on']}: validation {metric} "
        f"{chosen['quality']:.3f} at {chosen['escalated']:.0%} escalated)",
        f"test: {metric} {metrics[metric]:.3f} against the strong model's {strong_metrics[metric]:.3f}, difference "
        f"{versus['difference']:+.3f} [{low:+.3f}, {high:+.3f}]; {share:.0%} escalated; "
        f"{metrics['examples_per_s']:,.1f} examples/s, {report['speed_ratio']:.1f}x the strong model's",
        f"saved to {out_dir} (it names both members by path and fingerprint)"]
    return report
