"""The fine-tuning loss: batches of whole-string prompts, their micro-batches, and the verbalizer loss.

The model learns to put probability on the right label word after the task's zero-shot prompt (PET's loss over the
labels' log-likelihoods); several labels an example spread that probability evenly over the example's labels;
regression trains the numeric verbalizer's expected rating. A batch of long texts is
accumulated over micro-batches of a token budget, so its memory is one micro-batch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunelab.config import TuneConfig
from tunelab.distributed import Dist
from tunelab.scoring.precision import autocast
from tunelab.scoring.tokens import PrefixCache, label_log_likelihoods
from tunelab.scoring.verbalizer import SCALE_POINTS, Verbalizer, expected_rating, rating_value

MICRO_BATCH_TOKENS = 512  # row tokens per forward/backward pass; a batch of long texts is accumulated over several.
# Measured on 24 sotu passages (~280 tokens), LoRA peak: 4,096 (counting both labels) -> 5.3 GB, 47 s; 1,024 -> 3.2 GB
# (full fine-tuning 3.9 GB); fewer tokens leave the optimizer state (full) as the floor and shrink LoRA further


# ----------------------------------------------------------------------------------------------------------------
# Losses


def verbalizer_loss(label_scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the label set of the labels' log-likelihoods (PET, Schick & Schuetze 2021, eq. 2).

    label_scores: (batch, n_labels) summed label-token log-likelihoods; targets: (batch,) gold label indices.
    """
    return F.cross_entropy(label_scores, targets)


def label_set_loss(label_scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Several labels an example: cross-entropy of the labels' log-likelihoods against the example's labels, each
    an equal share (Mahajan et al. 2018's softmax over a hashtag set). One sigmoid per label would not fit here:
    the labels' log-likelihoods come from one next-token softmax, so labels compete for probability anyway; each
    label's share is then decided by its own threshold, chosen on the validation split. An example without labels
    has a zero target row and adds no loss.

    targets: (batch, n_labels), each row the example's labels as equal shares summing to 1 (or all zero).
    """
    return -(targets * torch.log_softmax(label_scores, dim=-1)).sum(-1).mean()


def rating_loss(rating_scores: torch.Tensor, gold_ratings: torch.Tensor) -> torch.Tensor:
    """Squared error of the expected rating, on the 1..9 scale divided by its width so that it lies in [0, 1]."""
    return (((expected_rating(rating_scores) - gold_ratings) / (SCALE_POINTS - 1)) ** 2).mean()



# ----------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class _Batch:
    pairs: list  # every (text, label) prompt tokenized whole (verbalizer.Pair)
    targets: torch.Tensor  # (batch,) label indices, or gold ratings for regression
    n_truncated: int = 0  # texts cut to fit max_length

    def shard(self, dist: Dist) -> _Batch:
        """This process's part of the batch in a data-parallel job (the whole batch when alone)."""
        if not dist.active:
            return self
        rows = list(range(len(self.pairs)))[dist.rank :: dist.world]
        return _Batch([self.pairs[i] for i in rows], self.targets[rows], 0)

    @property
    def tokens(self) -> int:
        """Prompt tokens the batch's examples hold (each example's longest label prompt), padding not counted."""
        return sum(max(len(pair.ids) for pair in pairs) for pairs in self.pairs)

    def micro_batches(self, max_tokens: int) -> list[_Batch]:
        """Consecutive slices of at most `max_tokens` prompt tokens each (at least one example): gradients
        accumulate over them, so a batch of long documents takes the memory of one slice."""
        slices, start, used = [], 0, 0
        for i, pairs in enumerate(self.pairs):
            tokens = len({pair.ids[:-1] for pair in pairs}) * max(len(pair.ids) for pair in pairs)  # rows it runs
            if i > start and used + tokens > max_tokens:
                slices.append(_Batch(self.pairs[start:i], self.targets[start:i]))
                start, used = i, 0
            used += tokens
        if self.pairs:  # an empty shard (a short last batch split over many processes) has nothing to run
            slices.append(_Batch(self.pairs[start:], self.targets[start:]))
        return slices


def _batches(verbalizer: Verbalizer, examples, config: TuneConfig, order, max_length: int) -> list[_Batch]:
    batches = []
    for start in range(0, len(order), config.batch_size):
        chosen = [examples[i] for i in order[start : start + config.batch_size]]
        texts, n_cut = verbalizer.fit([e.text for e in chosen], max_length)  # the rule the predictor applies too
        if verbalizer.kind == "classification":
            targets = torch.tensor([verbalizer.label_names.index(e.label) for e in chosen])
        elif verbalizer.kind == "multilabel":
            targets = torch.zeros(len(chosen), len(verbalizer.label_names))
            for row, example in enumerate(chosen):
                for label in example.label:
                    targets[row, verbalizer.label_names.index(label)] = 1.0 / len(example.label)
        else:
            targets = torch.tensor([rating_value(e.label, verbalizer.value_range) for e in chosen])
        batches.append(_Batch(verbalizer.pairs(verbalizer.fmt.instruction, texts), targets, n_cut))
    return batches


def micro_batch_tokens(precision: str, lm: torch.nn.Module | None = None) -> int:
    """Row tokens per forward/backward pass: twice as many in bf16, whose activations take half the memory. LoRA on
    16 sotu passages, seconds a step (process peak): fp32 at 512 tokens 17.9 (3.1 GB), 1,024 19.2, 2,048 19.5;
    bf16 at 512 14.0, 1,024 9.2 (4.7 GB), 2,048 11.0 (8.5 GB). In bf16 every micro-batch casts the weights again
    (34% of a 512-token step): larger micro-batches pay that less often. (Storing the frozen base in bf16 instead
    measured no faster on passages, 9.5 s, and twice as slow on words.)

    On a GPU (`lm` on CUDA) the CPU's size means one or two passages a pass, thousands of small kernels each: an
    H200 took over 65 s an epoch on 540 sotu passages. There the micro-batch takes a quarter of the free memory by
    `activation_bytes_per_token`, never fewer tokens than on a CPU: the same H200 then ran ~20 s an epoch (LoRA,
    fp32, with the per-epoch scoring of bench/lora_docs.py --curve)."""
    cpu_size = MICRO_BATCH_TOKENS * (2 if precision == "bf16" else 1)
    device = next(lm.parameters()).device if lm is not None else None
    if device is None or device.type != "cuda":
        return cpu_size
    free, _ = torch.cuda.mem_get_info(device)
    return max(cpu_size, int(free * GPU_MEMORY_SHARE / activation_bytes_per_token(lm.config, precision)))


# The share of a GPU's free memory a training micro-batch's activations may take (the rest: the optimizer state,
# the autocast copies, the allocator's slack, and the estimate's own error).
GPU_MEMORY_SHARE = 0.25


def activation_bytes_per_token(config, precision: str) -> int:
    """An upper estimate of the activations autograd keeps per row token of a decoder: per layer, ~10 vectors of the
    hidden size (norms, attention in and out, residuals), 4 of the feed-forward size, and one attention row per
    head at the longest length read (eager attention keeps it; fused kernels keep less)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    feed_forward = getattr(config, "intermediate_size", None) or 4 * hidden
    heads = getattr(config, "num_attention_heads", 1)
    positions = min(getattr(config, "max_position_embeddings", 2048), 2048)
    width = 2 if precision == "bf16" else 4
    return layers * ((10 * hidden + 4 * feed_forward) * width + heads * positions * 4)


def _loss_step(lm, verbalizer: Verbalizer, batch: _Batch, pad_id: int, cache_prefix: bool = True,
               precision: str = "fp32") -> torch.Tensor:
    device = next(lm.parameters()).device
    # The instruction is encoded once per step, with gradients; not under gradient checkpointing, which turns the
    # key/value cache off (long prompts, where the instruction is a small share anyway).
    prefix = PrefixCache(verbalizer.prefix_ids(verbalizer.fmt.instruction) if cache_prefix else [])
    with autocast(device, precision):  # the forward pass only: backward runs in the dtypes autocast chose
        scores = label_log_likelihoods(lm, prefix, batch.pairs, pad_id)[0].float()
    targets = batch.targets.to(device)
    if verbalizer.kind == "classification":
        return verbalizer_loss(scores, targets)
    if verbalizer.kind == "multilabel":
        return label_set_loss(scores, targets)
    return rating_loss(scores, targets.float())


@torch.no_grad()
def _validation_loss(lm, verbalizer: Verbalizer, batches: list[_Batch], pad_id: int, precision: str,
                     dist: Dist = Dist()) -> float:
    """The mean loss over the validation batches; in a data-parallel job each process scores its shard."""
    lm.eval()
    shards = [batch.shard(dist) for batch in batches]
    tokens = micro_batch_tokens(precision, lm)  # once: on a GPU it reads the free memory
    total = sum(_loss_step(lm, verbalizer, b, pad_id, precision=precision).item() * len(b.pairs) for batch in shards
                for b in batch.micro_batches(tokens))
    total, count = dist.sum(total, sum(len(b.pairs) for b in shards))
    return total / count


