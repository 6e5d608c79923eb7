"""The frozen base a LoRA adapter trains on, without a second full copy of the weights: in fp32 it shares the
caller's weights (`shared_copy`, merged afterwards into fresh tensors layer by layer: `merge_adapter`, or left
unmerged where those fresh tensors would not fit: `merged_if_it_fits`); in bf16
(`bf16_copy`) it takes half the memory of the fp32 weights, the adapters and their optimizer state in fp32.

Where the forward pass runs in bf16 (a device fast at it: autocast), the bf16 weights are used as they are. Where
it runs in fp32 (a CPU without bf16 units, where bf16 products measured 0.01x fp32), each frozen linear layer
widens its weight to fp32 for its own product only: autograd keeps the bf16 weight, not the widened one, so no
fp32 copy of the whole model ever exists. PyTorch has no module that stores weights in one dtype and multiplies in
another without autocast, hence the small autograd function here.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F


class _WidenedLinear(torch.autograd.Function):
    """y = x W^T + b with a frozen low-precision W widened to x's dtype for this product alone."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        return grad_output @ weight.to(grad_output.dtype), None, None


def _widened_forward(module: torch.nn.Linear):
    def forward(x):
        if x.dtype == module.weight.dtype:  # under autocast (bf16 compute): the ordinary product
            return F.linear(x, module.weight, module.bias)
        return _WidenedLinear.apply(x, module.weight, module.bias)

    return forward


def _widened_embedding(module, args, output):
    """Embeddings looked up from a bf16 table continue in fp32 unless autocast runs the layers in bf16."""
    return output if torch.is_autocast_enabled(output.device.type) else output.float()


def bf16_copy(lm: torch.nn.Module) -> torch.nn.Module:
    """A copy of `lm` whose floating-point parameters are stored in bf16, made parameter by parameter (never a
    second full fp32 copy); buffers (rotary frequencies) stay as they are, tied weights stay tied."""
    memo = {id(p): torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=p.requires_grad)
            for p in lm.parameters() if p.is_floating_point()}
    copied = copy.deepcopy(lm, memo)
    for module in copied.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.bfloat16:
            module.forward = _widened_forward(module)
        elif isinstance(module, torch.nn.Embedding) and module.weight.dtype == torch.bfloat16:
            module.register_forward_hook(_widened_embedding)
    return copied


def shared_copy(lm: torch.nn.Module) -> torch.nn.Module:
    """A copy of `lm`'s modules whose parameters share the caller's tensors: for LoRA, whose base never changes,
    a deep copy would hold a second full set of weights through training. `merge_adapter` keeps the caller's
    weights as they were."""
    memo = {id(p): torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in lm.parameters()}
    return copy.deepcopy(lm, memo)


# The share of the memory left that a merge's fresh weights may take; the rest is for scoring with the merged model.
MERGE_SHARE = 0.5


def merged_bytes(peft_model) -> int:
    """What `merge_adapter` allocates: a fresh copy of every adapted layer's weight (with LoRA on every linear
    layer, nearly the whole model once more)."""
    from peft.tuners.lora import LoraLayer

    weights = [module.get_base_layer().weight for module in peft_model.modules() if isinstance(module, LoraLayer)]
    return sum(weight.numel() * weight.element_size() for weight in weights)


def merged_if_it_fits(peft_model, device: torch.device | None = None) -> tuple[torch.nn.Module, bool]:
    """(the model, whether the adapter was merged): merged into fresh weights (`merge_adapter`, the faster to score)
    where they take at most MERGE_SHARE of the memory this process has left (tunelab/memory.py: the cgroup limit,
    available RAM, or a GPU's free memory), else the adapter served unmerged on the shared fp32 base: each adapted
    layer adds its low-rank product, and no second copy of the weights is made."""
    from tunelab.memory import memory_room

    if merged_bytes(peft_model) > MERGE_SHARE * memory_room(device)[0]:
        return peft_model, False
    return merge_adapter(peft_model), True


def merge_adapter(peft_model) -> torch.nn.Module:
    """The adapter merged into fresh weights, one adapted layer at a time, and the plain model returned: peft's
    `merge_and_unload` adds in place, into weights a `shared_copy` shares with the caller's model."""
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            base.weight = torch.nn.Parameter(base.weight.detach().clone(), requires_grad=False)
            module.merge()
    return peft_model.unload()
