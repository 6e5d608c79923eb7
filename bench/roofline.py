"""How close to the machine each rung's hot loop runs: this CPU's (or GPU's) measured matmul peak, fp32 and bf16,
at the model's own shapes, and each loop's achieved FLOP/s as a share of the peak of the precision it runs in.

Loops: label scoring on State of the Union passages (~300-token prompts) and on VADER words, the probe's feature
reading (the decoder without its head) on passages, one LoRA and one full fine-tuning step on passages, the MiniLM
student's prediction, greedy generation. `--models smollm2,gemma3-270m` runs every model loop on each model in the
same run and ends with a table of each model's speed against the first's on the same texts and precision (what a
262k-token vocabulary costs Gemma 3 against SmolLM2's 49k: the head runs only at the scored positions).
FLOPs are counted from the model's config and the tokens actually processed (padding excluded): a forward pass is
2 x (non-embedding parameters) per token, plus attention (4 x layers x hidden x context per token) and the output
head at the scored positions; a LoRA step is 2 forwards' worth (activation gradients, no frozen weight gradients),
a full step 3. Each loop runs in fp32 and in bf16 in the same run (the naive baseline is fp32), and torch.profiler
says where the time goes (matrix products, attention, the rest).

    python bench/roofline.py [--passages 32] [--words 200] [--skip profile] [--models smollm2,gemma3-270m]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from rich.console import Console
from rich.table import Table

from tunelab.config import PromptConfig, TuneConfig
from tunelab.models import MiniLMEmbedder, choose_device, load_model
from tunelab.predictor import predict
from tunelab.rungs.prompting import few_shot
from tunelab.rungs.tuning import _with_adapter
from tunelab.rungs.tuning_loss import _batches, _loss_step, micro_batch_tokens
from tunelab.scoring.precision import autocast
from tunelab.scoring.verbalizer import Verbalizer, resolve_max_length
from tunelab.tasks import load_task
from tunelab.training import adamw, training_step


def best_seconds(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def matmul_peak(dtype: torch.dtype, device: torch.device, hidden: int, intermediate: int) -> float:
    """The best FLOP/s of (tokens x hidden) @ (hidden x intermediate) over a few token counts."""
    best = 0.0
    for tokens in (256, 1024, 4096):
        a = torch.randn(tokens, hidden, device=device, dtype=dtype)
        b = torch.randn(hidden, intermediate, device=device, dtype=dtype)
        seconds = best_seconds(lambda: torch.mm(a, b), 5)
        best = max(best, 2 * tokens * hidden * intermediate / seconds)
    return best


def forward_flops(config, tokens: int, context: float, scored: int) -> float:
    """One forward pass: 2 x non-embedding parameters per token, attention, and the head at `scored` positions."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads  # Gemma 3: 256, not 160
    queries, keys = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    layer = 2 * hidden * (queries + keys) + 3 * hidden * config.intermediate_size  # q, o; k, v; the MLP
    attention = 4 * config.num_hidden_layers * hidden * context
    head = 2 * scored * hidden * config.vocab_size
    return tokens * (2 * config.num_hidden_layers * layer + attention) + head


def autocast_only(model):
    """The model as the rungs ran it before the bf16 copy: bf16 is autocast over the fp32 weights."""
    plain = dataclasses.replace(model)
    plain.inference_lm = lambda precision: model.lm
    return plain


def scoring_loop(model, task, texts: list[str], precision: str) -> dict:
    predictor = few_shot(model, task, PromptConfig(precision=precision))
    fitted = predictor.verbalizer.fit(texts, predictor.max_length, prefix=predictor.prefix_text())[0]
    pairs = predictor.verbalizer.pairs(predictor.prefix_text(), fitted)
    prefix = len(predictor.verbalizer.prefix_ids(predictor.prefix_text()))
    rows = {pair.ids[prefix:-1] for row in pairs for pair in row}
    tokens = sum(map(len, rows))
    context = prefix + tokens / len(rows) / 2
    seconds = best_seconds(lambda: predict(predictor, texts), 2)  # the rungs' batching (length_batches)
    scored = sum(len(pair.ids) - pair.label_start for row in pairs for pair in row)
    return {"seconds": seconds, "tokens": tokens, "flops": forward_flops(model.lm.config, tokens, context, scored)}


def probe_loop(model, task, texts: list[str], precision: str) -> dict:
    """The probe's reading of texts (no feature cache): the decoder's pooled states of four layers, no LM head."""
    from tunelab.scoring.hidden import HiddenStates, Reading, candidate_layers

    layers = candidate_layers(model.lm.config.num_hidden_layers)
    states = HiddenStates(model, Reading(layers, 512, 448, precision), None)
    tokens = sum(map(len, states.token_ids(texts)))
    seconds = best_seconds(lambda: states.features(texts), 1)
    return {"seconds": seconds, "tokens": tokens, "flops": forward_flops(model.lm.config, tokens, tokens / len(texts)
                                                                         / 2, 0)}


def training_step_of(model, task, method: str, precision: str, n: int):
    """One optimizer step of `method` on n training examples, ready to time: (step function, tokens, FLOPs)."""
    import copy

    config = TuneConfig(method=method, precision=precision, batch_size=n, min_steps=0)
    verbalizer = Verbalizer.for_task(model.tokenizer, task)
    examples = list(task.train)[:n]
    max_length = resolve_max_length(verbalizer, [e.text for e in task.train], None, model.lm)
    batch = _batches(verbalizer, examples, config, range(len(examples)), max_length)[0]
    lm = copy.deepcopy(model.lm)
    if method == "lora":
        lm, _ = _with_adapter(lm, config)
    trainable = [p for p in lm.parameters() if p.requires_grad]
    optimizer = adamw(trainable, lr=1e-5)
    lm.train()

    def step():
        pad_id = model.tokenizer.pad_token_id
        training_step(trainable, optimizer, (_loss_step(lm, verbalizer, micro, pad_id, True, precision)
                                             for micro in batch.micro_batches(micro_batch_tokens(precision))))

    prefix = len(verbalizer.prefix_ids(verbalizer.fmt.instruction))
    rows = {pair.ids[prefix:-1] for row in batch.pairs for pair in row}
    tokens = sum(map(len, rows))
    forward = forward_flops(model.lm.config, tokens, prefix + tokens / len(rows) / 2, len(rows) * 2)
    return step, tokens, forward * (2 if method == "lora" else 3)


def training_loop(model, task, method: str, precision: str, n: int) -> dict:
    step, tokens, flops = training_step_of(model, task, method, precision, n)
    return {"seconds": best_seconds(step, 1), "tokens": tokens, "flops": flops}


def student_loop(texts: list[str], precision: str) -> dict:
    embedder = MiniLMEmbedder(max_length=256)
    batch = embedder.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    tokens = int(batch["attention_mask"].sum())
    config = embedder.encoder.config
    hidden = config.hidden_size
    params = config.num_hidden_layers * (4 * hidden**2 + 2 * hidden * config.intermediate_size)

    def run():
        with torch.no_grad(), autocast(embedder.device, precision):
            embedder.encoder(**batch.to(embedder.device))

    return {"seconds": best_seconds(run, 2), "tokens": tokens, "flops": 2 * params * tokens}


def generation_loop(model, prompts: list[str], precision: str) -> dict:
    tokenizer = model.tokenizer
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    new_tokens = 16

    def run():
        with torch.no_grad(), autocast(model.device, precision):
            model.lm.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id)

    seconds = best_seconds(run, 1)
    prompt_tokens = int(batch["attention_mask"].sum())
    tokens = prompt_tokens + new_tokens * len(prompts)
    context = batch["input_ids"].shape[1] + new_tokens / 2
    return {"seconds": seconds, "tokens": tokens, "flops": forward_flops(model.lm.config, tokens, context, tokens)}


TOP_OPS = 8


def profile_shares(fn) -> dict:
    """Shares of self CPU time (torch.profiler) in matrix products, attention, dtype conversions and the rest."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    kinds = {"matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
             "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_softmax"),
             "dtype conversions": ("aten::copy_", "aten::_to_copy")}
    totals = dict.fromkeys([*kinds, "other"], 0.0)
    events = prof.key_averages()
    for event in events:
        kind = next((k for k, names in kinds.items() if event.key in names), "other")
        totals[kind] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    # the ops behind those shares, largest first: what "other" is made of
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP_OPS]
    return {**{kind: value / whole for kind, value in totals.items()},
            "top": [(e.key, e.self_cpu_time_total / whole, e.count) for e in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=32)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--skip", default="", help="comma list: profile")
    parser.add_argument("--only", default="", help="comma list of loop names' first words (label, LoRA, ...)")
    parser.add_argument("--models", default="smollm2", help="comma list of base models, each run on every model loop")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list")
    args = parser.parse_args()
    device = choose_device()
    console = Console(width=160)
    sotu, vader = load_task("sotu-party"), load_task("vader")
    passages = [e.text for e in sotu.test[: args.passages]]
    words = [e.text for e in vader.test[: args.words]]
    precisions = args.precisions.split(",")
    only = tuple(word for word in args.only.split(",") if word)
    measured = {}  # (model, loop, precision) -> result
    specs = args.models.split(",")
    for spec in specs:
        model = load_model(spec)
        config = model.lm.config
        peaks = {p: matmul_peak(dtype, device, config.hidden_size, config.intermediate_size)
                 for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        console.print(f"{spec}: device {device}, {torch.get_num_threads()} threads; matmul peak at the model's shapes:"
                      f" fp32 {peaks['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s "
                      f"({peaks['bf16'] / peaks['fp32']:.1f}x)")
        loops = {
            "label scoring, passages": lambda p: scoring_loop(model, sotu, passages, p),
            # the earlier bf16 path, the naive baseline of the bf16 copy: autocast casting fp32 weights on every call
            "label scoring, passages, autocast": lambda p: scoring_loop(autocast_only(model), sotu, passages, p),
            "label scoring, words": lambda p: scoring_loop(model, vader, words, p),
            "label scoring, words, autocast": lambda p: scoring_loop(autocast_only(model), vader, words, p),
            "probe reading, passages": lambda p: probe_loop(model, sotu, passages, p),
            "LoRA step, 8 passages": lambda p: training_loop(model, sotu, "lora", p, 8),
            "full step, 8 passages": lambda p: training_loop(model, sotu, "full", p, 8),
            "MiniLM student, passages": lambda p: student_loop(passages, p),
            "greedy generation, 16 tokens": lambda p: generation_loop(model, words[:32], p),
        }
        table = Table(title=f"{spec}: achieved FLOP/s against the measured peak (tokens: real ones, padding excluded)")
        for column in ("loop", "precision", "tokens", "seconds", "tokens/s", "GFLOP/s", "share of peak",
                       "bf16 / fp32"):
            table.add_column(column, justify="left" if column in ("loop", "precision") else "right")
        for name, loop in ((n, f) for n, f in loops.items() if not only or n.startswith(only)):
            if name.startswith("MiniLM") and spec != specs[0]:
                continue  # the student reads no base model
            results = {p: loop(p) for p in precisions}
            for precision, result in results.items():
                measured[spec, name, precision] = result
                rate = result["flops"] / result["seconds"]
                table.add_row(name, precision, f"{result['tokens']:,}", f"{result['seconds']:.2f}",
                              f"{result['tokens'] / result['seconds']:,.0f}", f"{rate / 1e9:,.0f}",
                              f"{rate / peaks[precision]:.0%}",
                              f"{results['fp32']['seconds'] / result['seconds']:.2f}x"
                              if precision == "bf16" and "fp32" in results else "")
        console.print(table)
    if len(specs) > 1:  # the same texts, loop and precision: the ratio of seconds is the ratio of examples/s
        ratios = Table(title=f"examples/s of each model against {specs[0]}'s, same texts, same precision, same run")
        for column in ("loop", "precision", *(f"{spec} s" for spec in specs), *(f"{spec} / {specs[0]}"
                                                                            for spec in specs[1:])):
            ratios.add_column(column)
        for (spec, name, precision), first in ((k, v) for k, v in measured.items() if k[0] == specs[0]):
            others = [measured.get((other, name, precision)) for other in specs[1:]]
            if all(others):
                ratios.add_row(name, precision, *(f"{r['seconds']:.2f}" for r in (first, *others)),
                               *(f"{first['seconds'] / r['seconds']:.2f}x" for r in others))
        console.print(ratios)
    model = load_model(specs[0])
    if "profile" not in args.skip:
        shares = Table(title="where the time goes (torch.profiler, self CPU time)")
        kinds = ("matrix products", "attention", "dtype conversions", "other")
        for column in ("loop", "precision", *kinds):
            shares.add_column(column)
        top = Table(title=f"the {TOP_OPS} largest ops of each profiled loop (share of its self CPU time, calls)")
        for column in ("loop", "precision", "ops"):
            top.add_column(column)
        for precision in ("fp32", "bf16"):
            scorer = few_shot(model, sotu, PromptConfig(precision=precision))
            step = training_step_of(model, sotu, "lora", precision, 8)[0]
            for name, fn in (("label scoring, 8 passages", lambda: predict(scorer, passages[:8])),
                             ("LoRA step, 8 passages", step)):
                found = profile_shares(fn)
                shares.add_row(name, precision, *(f"{found[k]:.0%}" for k in kinds))
                top.add_row(name, precision, ", ".join(f"{op.removeprefix('aten::')} {share:.0%} ({calls:,})"
                                                       for op, share, calls in found["top"]))
        console.print(shares)
        console.print(top)


if __name__ == "__main__":
    main()
