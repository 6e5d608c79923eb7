"""Numeric precision: bf16 (torch autocast) where the device runs it fast and the predictions agree with fp32.

Weights stay float32 (parameter counts, fingerprints and saved artifacts do not change); under autocast the matrix
products run in bfloat16 and reductions (softmax, log-softmax, norms) in float32. `auto` picks bf16 only when a
timed probe shows the device's bf16 matrix products are clearly faster AND a parity check on the task's own texts
passes AND (where a predictor is at hand) the predictor itself ran faster in bf16 on those texts (timed again,
alternating, where it seemed not to); the choice and its figures are recorded wherever a rung records its config.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "bf16")
FAST_RATIO = 1.3  # bf16 products must be at least this much faster than fp32 to be worth their rounding
# Parity: bf16 keeps 8 significant bits, about 0.4% relative error per product; through 30 layers a label's
# probability moved by up to a few hundredths on vader and sotu-party (docs/BENCHMARKS.md). A moved probability
# matters where it flips a prediction or moves a calibration bin (10 bins of 0.1), so the check asks for the same
# prediction on at least 99% of the texts and every probability within 0.05 (half a bin).
PARITY_AGREEMENT = 0.99
PARITY_TOLERANCE = 0.05
# Texts scored both ways by the check (training texts: the test split is not looked at). 100, not 64: with 64 texts
# "99% the same" allows no flip at all, and one sotu-party passage at a near tie (fp32 and bf16 0.013 apart) turned
# a 1.9x faster precision down.
PARITY_TEXTS = 100


@lru_cache(maxsize=4)
def bf16_speedup(device_type: str) -> float:
    """How much faster a bf16 matrix product of a transformer's shapes runs than fp32 here (timed, best of 5)."""
    if device_type == "cuda":
        return 2.0 if torch.cuda.is_bf16_supported() else 0.0
    if device_type != "cpu":
        return 0.0
    a, b = torch.randn(256, 576), torch.randn(576, 1536)
    rates = []
    for x, y in ((a, b), (a.bfloat16(), b.bfloat16())):
        x @ y
        best = min(_timed(lambda: x @ y) for _ in range(5))
        rates.append(best)
    return rates[0] / rates[1]


def bf16_is_fast(device_type: str) -> bool:
    """Whether bf16 matrix products are at least FAST_RATIO faster than fp32 on this kind of device."""
    return bf16_speedup(device_type) >= FAST_RATIO


def _timed(fn: Callable) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def autocast(device: torch.device, precision: str):
    """The context every forward pass of a rung runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def parity(fp32_probs: np.ndarray, bf16_probs: np.ndarray) -> dict:
    """How far bf16 predictions are from fp32 ones: the share of equal top labels and the largest probability
    difference. Regression outputs come as one column scaled to 0..1; "equal" then means within the tolerance."""
    if fp32_probs.shape[1] == 1:
        agreement = float(np.mean(np.abs(fp32_probs - bf16_probs) <= PARITY_TOLERANCE))
    else:
        agreement = float(np.mean(fp32_probs.argmax(axis=1) == bf16_probs.argmax(axis=1)))
    largest = float(np.max(np.abs(fp32_probs - bf16_probs)))
    return {"n": len(fp32_probs), "agreement": agreement, "max_prob_difference": largest,
            "passes": agreement >= PARITY_AGREEMENT and largest <= PARITY_TOLERANCE}


def resolve_precision(requested: str, device: torch.device, probabilities: Callable[[str], np.ndarray]) -> dict:
    """The precision to run in: `requested` unless it is `auto`, which becomes bf16 when the device runs it at
    least FAST_RATIO faster and `probabilities(precision)` (label probabilities of a few texts) agree in parity;
    fp32 otherwise. Returns {"precision", "requested", "bf16_speedup", "parity"} for the record."""
    record = {"requested": requested, "precision": requested, "bf16_speedup": None, "parity": None}
    if requested != "auto":
        return record
    record["bf16_speedup"] = round(bf16_speedup(device.type), 2)
    if not bf16_is_fast(device.type):
        record["precision"] = "fp32"
        return record
    record["parity"] = parity(probabilities("fp32"), probabilities("bf16"))
    record["precision"] = "bf16" if record["parity"]["passes"] else "fp32"
    return record


def comparable(predictions, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Predictions as the parity check compares them: label probabilities, or values scaled to 0..1."""
    if predictions.kind != "regression":
        return predictions.probs
    low, high = value_range or (float(np.min(predictions.values)), float(np.max(predictions.values)) + 1e-9)
    return ((np.asarray(predictions.values, dtype=float) - low) / (high - low))[:, None]


def choose_precision(predictor, requested: str, texts: list[str], device: torch.device,
                     value_range: tuple[float, float] | None = None) -> dict:
    """Resolve `requested` for `predictor` (which has `set_precision(p)` and `predict_batch`) on up to PARITY_TEXTS
    of `texts`, leave the predictor in the chosen precision, and return the record (resolve_precision)."""
    from tunelab.predictor import predict

    sample = texts[:PARITY_TEXTS]
    seconds = {}

    def probabilities(precision: str) -> np.ndarray:
        predictor.set_precision(precision)
        predictor.predict_batch(sample[:8])  # warm-up: the first call in a precision pays for kernel selection
        started = time.perf_counter()
        # in length-sorted batches, as every rung predicts: 100 e-mails in one padded batch took 8x as long
        found = comparable(predict(predictor, sample), value_range)
        seconds[precision] = time.perf_counter() - started
        return found

    record = resolve_precision(requested, device, probabilities) if sample else {
        "requested": requested, "precision": "fp32" if requested == "auto" else requested, "bf16_speedup": None,
        "parity": None}
    if len(seconds) == 2:
        # Fast matrix products do not make every model faster: autocast casts weights and activations on every
        # call, which a small encoder on short texts pays more than it gains (MiniLM on words: 2x slower in bf16).
        speedup = seconds["fp32"] / seconds["bf16"]
        record["predictor_speedup"] = round(speedup, 2)
        if record["precision"] == "bf16" and speedup <= 1:
            # One timing each way is at the mercy of whatever else runs: SmolLM2, 2-3x faster in bf16 here, timed
            # 0.87x while tests shared the 2 cores, and that `make run` ran its whole ladder in fp32. A result
            # that contradicts the products' probe is timed again, alternating, before it decides.
            speedup = retimed_speedup(predictor, sample[:RETIME_TEXTS])
            record["predictor_speedup_retimed"] = round(speedup, 2)
        if record["precision"] == "bf16" and speedup <= 1:
            record["precision"] = "fp32"
    predictor.set_precision(record["precision"])
    return record


RETIME_TEXTS = 32  # texts of the parity sample timed again when the predictor seemed no faster in bf16


def retimed_speedup(predictor, texts: list[str]) -> float:
    """fp32 seconds over bf16 seconds for `texts`, timed fp32, bf16, bf16, fp32 (a load that rises or falls
    during the four passes weighs on both precisions alike)."""
    from tunelab.predictor import predict

    seconds = {"fp32": 0.0, "bf16": 0.0}
    for precision in ("fp32", "bf16", "bf16", "fp32"):
        predictor.set_precision(precision)
        started = time.perf_counter()
        predict(predictor, texts)
        seconds[precision] += time.perf_counter() - started
    return seconds["fp32"] / seconds["bf16"]


def may_train_in_bf16(record: dict) -> bool:
    """`auto`, and bf16 either chosen for inference or in parity there and turned down only for the predictor's
    speed: a GPU predicting small batches is launch-bound and autocast's casts add launches (H200, SmolLM2 LoRA on
    sotu passages: the bf16 predictor 0.48x fp32), while a training step with whole batches is not."""
    return record.get("requested") == "auto" and (
        record.get("precision") == "bf16" or bool((record.get("parity") or {}).get("passes")))


def choose_training_precision(record: dict, seconds_per_token: Callable[[str], float]) -> dict:
    """Train in bf16, where `may_train_in_bf16(record)`, only if a timed training micro-batch runs at least FAST_RATIO
    faster in it (`seconds_per_token(precision)`: forward and backward of one micro-batch). The inference check does
    not see what autograd costs per operation: on word-sized rows a LoRA step ran 0.96-1.00x fp32 in bf16 (on
    passages 1.95x), so bf16 there would round for nothing. Returns the record with `training_step_speedup`."""
    if not may_train_in_bf16(record):
        return record
    fp32, bf16 = seconds_per_token("fp32"), seconds_per_token("bf16")
    return {**record, "training_step_speedup": round(fp32 / bf16, 2),
            "precision": "bf16" if fp32 / bf16 >= FAST_RATIO else "fp32"}
