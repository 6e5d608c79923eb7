"""int8 weights for the base LLM's scoring, against the precision check's parity gate: would they make the ladder
faster on a CPU without bf16 units? SmolLM2's linear layers (all but the output head, which stays fp32 as the label
log-probabilities need) through torch's dynamic quantization: weights int8 (per tensor, or per output channel),
activations quantized per batch. Zero-shot prompt on vader's test words, the same predictor code, fp32 against
int8: seconds and the parity figures the ladder's `auto` precision asks of bf16 (scoring/precision.py: the same
prediction on 99% of the texts, every probability within 0.05).

    python bench/int8_llm.py [--words 200]

The quantized kernels are fbgemm's, which choose their instructions from the CPU itself (the AVX2 emulation
variables do not reach them); run it on the CPU the figure is for.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import numpy as np
import torch
from harness import describe_cpu

from tunelab.models import load_model
from tunelab.predictor import predict
from tunelab.rungs.prompting import PromptConfig, few_shot
from tunelab.scoring.precision import parity
from tunelab.tasks import load_task

SCHEMES = {"int8, weights per tensor": torch.ao.quantization.default_dynamic_qconfig,
           "int8, weights per channel": torch.ao.quantization.per_channel_dynamic_qconfig}


def timed_probs(model, task, texts: list[str]) -> tuple[np.ndarray, float]:
    predictor = few_shot(model, task, PromptConfig(shots=0, precision="fp32"))
    predict(predictor, texts[:16])  # warm-up: allocation and kernel selection
    started = time.perf_counter()
    probs = predict(predictor, texts).probs
    return probs, time.perf_counter() - started


def quantized(lm: torch.nn.Module, qconfig) -> torch.nn.Module:
    """A copy of `lm` with int8 linear layers; the output head stays the fp32 module (tied to the embeddings)."""
    with warnings.catch_warnings():  # torch marks its quantized tensor types deprecated; they still run
        warnings.simplefilter("ignore")
        copied = torch.ao.quantization.quantize_dynamic(copy.deepcopy(lm), {torch.nn.Linear: qconfig})
    copied.lm_head = lm.lm_head
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=200, help="test words scored each way")
    args = parser.parse_args()
    model, task = load_model("smollm2"), load_task("vader")
    texts = [e.text for e in task.test[: args.words]]
    fp32, fp32_s = timed_probs(model, task, texts)
    print(f"CPU: {describe_cpu()}, {torch.get_num_threads()} torch threads, "
          f"quantized engine {torch.backends.quantized.engine}; {len(texts)} vader test words, zero-shot")
    print("| weights | seconds | x fp32 | same prediction | largest probability difference | passes parity |")
    print("|---|---|---|---|---|---|")
    print(f"| fp32 | {fp32_s:.2f} | 1.00x | - | - | - |")
    original = model.lm
    for name, qconfig in SCHEMES.items():
        model.lm = quantized(original, qconfig)
        try:
            probs, seconds = timed_probs(model, task, texts)
        finally:
            model.lm = original
        check = parity(fp32, probs)
        print(f"| {name} | {seconds:.2f} | {fp32_s / seconds:.2f}x | {check['agreement']:.1%} "
              f"| {check['max_prob_difference']:.3f} | {'yes' if check['passes'] else 'no'} |")


if __name__ == "__main__":
    main()
