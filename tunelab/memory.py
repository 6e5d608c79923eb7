"""The memory plan: what a run will hold (weights, gradients, optimizer states, activations, processes) against what
this process may use, decided before the model is loaded for the run, so that a run that cannot fit is refused in
one line instead of being killed by the kernel (exit 137, nothing said) or by CUDA half-way through.

Weights, gradients and optimizer states are counted from the model's own configuration, built on the `meta` device
(shapes only, no memory). Activations are measured, not taken from a formula: a copy of the model with two decoder
layers of the real shapes (random weights, a small vocabulary) runs forward passes at two token counts under the
method's own autograd setup, and the bytes autograd saves for backward give the bytes per token per layer; the
output head's share (logits at the scored positions) is added from the real vocabulary. The limit is the cgroup's
memory.max where a container sets one, else the memory the kernel says is available; on a GPU its free memory.
accelerate's `estimate-memory` and the tables of torchtune and LLaMA-Factory count weights the same way; none of
them measures activations on the model at hand or refuses a run, hence this module.
"""

from __future__ import annotations

import os
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tunelab.errors import MemoryPlanError

METHODS = ("score", "probe", "lora", "full")
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
HEADROOM = 0.9  # plan to at most 90% of the limit: the allocator's slack and the estimate's own error
MEASURE_LAYERS = 2


def process_rss() -> int:
    """This process's resident memory now, in bytes (Linux /proc; the peak where /proc is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cgroup_room() -> tuple[int, str, int] | None:
    """(bytes the process's cgroup still allows, where that comes from, the limit): memory.max - memory.current
    (cgroup v2) or limit_in_bytes - usage_in_bytes (v1), on the nearest folder up the tree that sets one."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        candidates = []
        if controllers == "":  # v2
            candidates.append((Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):  # v1
            candidates.append((Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes",
                               "memory.usage_in_bytes"))
        for folder, limit_file, usage_file in candidates:
            while True:  # a limit can be set on any ancestor
                try:
                    limit = (folder / limit_file).read_text().strip()
                    usage = int((folder / usage_file).read_text().strip())
                    if limit != "max" and int(limit) < 1 << 60:
                        return int(limit) - usage, f"cgroup {limit_file} {int(limit) / 2**30:.1f} GiB", int(limit)
                except (OSError, ValueError):
                    pass
                if folder == folder.parent or folder.name in ("cgroup", "memory"):
                    break
                folder = folder.parent
    return None


def _available_ram() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def memory_room(device: torch.device | None = None) -> tuple[int, str, int | None]:
    """(bytes this process may still take beyond what it holds, where that figure comes from, the limit on all it
    may hold where one is set). TUNELAB_MEMORY_LIMIT_MB overrides it."""
    if os.environ.get("TUNELAB_MEMORY_LIMIT_MB"):
        limit = int(float(os.environ["TUNELAB_MEMORY_LIMIT_MB"]) * 2**20)
        return max(0, limit - process_rss()), f"TUNELAB_MEMORY_LIMIT_MB {limit / 2**30:.1f} GiB", limit
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, "free GPU memory", None
    available = _available_ram()
    room = _cgroup_room()
    if room is not None and room[0] < available:
        return room
    return available, "available RAM", None


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know of a model: its config and parameter counts (no weights)."""

    config: object
    params: int
    file_bytes: int = 0  # the weight files on disk: mapped while the model loads, beside the weights being filled

    @classmethod
    def of(cls, config, file_bytes: int = 0) -> ModelShape:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(config)
        return cls(config, sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values()), file_bytes)


@dataclass
class MemoryPlan:
    """One decision, made before a run: its memory parts in bytes, the limit, and how the trainers should run."""

    method: str
    precision: str  # of the forward pass
    base_precision: str  # how the frozen weights are stored
    processes: int
    micro_batch_tokens: int
    checkpointing: bool
    parts: dict[str, int]
    room: int
    room_source: str
    reason: str = ""
    alternatives: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return peak(self.parts)

    @property
    def fits(self) -> bool:
        return self.total <= HEADROOM * self.room

    def describe(self) -> dict:
        return {**asdict(self), "total": self.total, "fits": self.fits}

    def line(self) -> str:
        parts = ", ".join(f"{name} {gb(value)}" for name, value in self.parts.items() if value)
        return (f"{self.method} ({self.base_precision} base, {self.precision} compute, {self.processes} process"
                f"{'es' if self.processes > 1 else ''}): needs {gb(self.total)} ({parts}); "
                f"this process may hold {gb(self.room)} ({self.room_source})")

    def refusal(self) -> str:
        fixes = "; ".join(self.alternatives) if self.alternatives else "a smaller model or a machine with more memory"
        return f"will not fit: {self.line()}. Would fit: {fixes}"


def peak(parts: dict[str, int]) -> int:
    """The most held at once: loading (the weights and their mapped files), running (everything else) or merging
    (the merged copy, once the training's activations are gone)."""
    parts = dict(parts)
    loading = parts.pop("mapped files (loading)", 0)
    merging = parts.pop("merged copy (after training)", 0)
    running = sum(value for name, value in parts.items() if name not in ("process", "weights"))
    return parts.get("process", 0) + parts.get("weights", 0) + max(loading, running, merging)


def _training_copy_bytes(shape: "ModelShape", method: str, base_precision: str, weights_precision: str) -> int:
    """Full fine-tuning trains an fp32 copy (the caller's model stays as it was); LoRA shares the frozen weights,
    or makes a bf16 copy of fp32 ones for --base-precision bf16 (rungs/low_precision)."""
    if method == "full":
        return shape.params * 4
    if method == "lora" and base_precision == "bf16" and weights_precision == "fp32":
        return shape.params * 2
    return 0


def linear_params(shape: "ModelShape") -> int:
    """Parameters outside the embedding tables and the head: the linear layers an adapter on all-linear adapts."""
    config = shape.config
    tables = 1 if getattr(config, "tie_word_embeddings", False) else 2
    return max(0, shape.params - tables * config.vocab_size * config.hidden_size)


def gb(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


_MEASURED: dict = {}


def layer_activation_bytes(config, method: str, precision: str) -> float:
    """Bytes autograd keeps for backward per token per decoder layer when training with `method` (lora or full),
    measured on a copy of the model's shapes with MEASURE_LAYERS layers, random weights and a small vocabulary:
    the saved tensors that are not weights, at two token counts, per token and per layer. The measuring model
    runs on the CPU; what autograd saves is the same on a GPU."""
    key = (config.to_json_string(), method, precision)
    if key in _MEASURED:
        return _MEASURED[key]
    from transformers import AutoModelForCausalLM

    small = config.__class__.from_dict({**config.to_dict(), "num_hidden_layers": MEASURE_LAYERS, "vocab_size": 512,
                                        **({"layer_types": config.layer_types[:MEASURE_LAYERS]}
                                           if getattr(config, "layer_types", None) else {})})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_config(small)
    if method == "lora":
        import warnings

        from peft import LoraConfig, get_peft_model

        with warnings.catch_warnings():  # peft reads a property that transformers 5 deprecates; not ours to fix
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
            lm = get_peft_model(lm, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    lm.train()
    weights = {p.untyped_storage().data_ptr() for p in lm.parameters()}

    def saved_bytes(tokens: int) -> int:
        seen: dict[int, int] = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                seen[storage.data_ptr()] = storage.nbytes()
            return tensor

        ids = torch.randint(0, small.vocab_size, (1, tokens))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            lm(input_ids=ids, logits_to_keep=1)
        return sum(seen.values())

    low, high = 64, 192
    _MEASURED[key] = (saved_bytes(high) - saved_bytes(low)) / (high - low) / MEASURE_LAYERS
    return _MEASURED[key]


def activations(config, method: str, precision: str, tokens: int, checkpointing: bool) -> int:
    """Activation bytes of a forward (and backward) pass over `tokens` row tokens. Training keeps each layer's
    saved tensors (with checkpointing only each layer's input, and one layer's tensors while it is recomputed);
    inference keeps nothing, and what one layer makes while it runs is taken as a quarter of what training keeps
    of it (within the 25% of the measured peaks, bench/model_scale.py). A few hidden-size vectors per token are
    added for the embeddings, the final norm and the residual stream."""
    hidden = config.hidden_size * BYTES[precision]
    layers = config.num_hidden_layers
    per_layer = layer_activation_bytes(config, "full" if method in ("score", "probe") else method, precision)
    if method in ("score", "probe"):
        per_token = per_layer / 4
    elif checkpointing:
        per_token = hidden * layers + per_layer
    else:
        per_token = per_layer * layers
    return int(tokens * (per_token + 16 * hidden))


def plan(shape: ModelShape, method: str, *, precision: str = "fp32", base_precision: str = "fp32",
         tokens: int = 512, rows: int = 8, scored: int = 2, processes: int = 1, lora_r: int = 8,
         device: torch.device | None = None, checkpointing: bool | None = None,
         room: tuple | None = None, baseline: int | None = None, loaded: bool = False,
         weights_precision: str = "fp32", merge: bool = False) -> MemoryPlan:
    """The memory plan of one run: `tokens` row tokens a forward pass (a micro-batch), `rows` rows and `scored`
    positions each whose logits the head computes; `processes` data-parallel processes on this machine, each
    holding its own copy. `checkpointing` None lets the plan choose (on only where the run would not fit without
    it). `loaded`: the base model is already in this process's memory (counted in `baseline`, the process now).
    An fp32-base LoRA merges its adapter after training where the merged copy fits, else it is served unmerged
    (rungs/low_precision.merged_if_it_fits); `merge` (the merged model is written) makes the merge part of the
    run."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    config = shape.config
    free, source, cap = (*(room or memory_room(device)), None)[:3]
    on_gpu = device is not None and device.type == "cuda"
    baseline = 0 if on_gpu else process_rss() if baseline is None else baseline  # host memory is not the GPU's
    weight_bytes = shape.params * BYTES[weights_precision]  # as loaded: fp32, or bf16 for a bf16 LoRA base
    # what this process may hold in all: the free memory and what it holds already (the plan counts both)
    room_bytes = free + (weight_bytes if on_gpu and loaded else baseline)
    room_bytes = min(room_bytes, cap) if cap else room_bytes  # shared pages count in RSS, not against a limit
    layers = config.num_hidden_layers
    hidden = config.hidden_size
    adapter = 0
    if method == "lora":  # rank r on every linear of every layer: about r x (in + out) per projection
        feed_forward = getattr(config, "intermediate_size", 4 * hidden)
        adapter = layers * lora_r * (4 * 2 * hidden + 3 * (hidden + feed_forward))

    def parts_for(use_checkpointing: bool, micro_tokens: int) -> dict[str, int]:
        activation = activations(config, method, precision, micro_tokens, use_checkpointing)
        logits = rows * scored * config.vocab_size * 4 * (3 if method in ("lora", "full") else 2)
        parts = {"process": max(0, baseline - weight_bytes) if loaded else baseline,
                 "weights": weight_bytes, "mapped files (loading)": 0 if loaded else shape.file_bytes,
                 "training copy": _training_copy_bytes(shape, method, base_precision, weights_precision),
                 # an fp32 LoRA merges into fresh copies of the adapted (linear) weights once training is over
                 "merged copy (after training)": linear_params(shape) * 4
                 if method == "lora" and base_precision == "fp32" else 0,
                 "bf16 inference copy": shape.params * 2 if method in ("score", "probe") and precision == "bf16"
                 and base_precision == "fp32" else 0,
                 "gradients": shape.params * 4 if method == "full" else adapter * 4,
                 "optimizer": shape.params * 8 if method == "full" else adapter * 12,
                 "activations": activation + logits}
        return {name: value * processes for name, value in parts.items()}  # each process holds all of it

    def needed(parts: dict[str, int]) -> int:  # an fp32 LoRA's merge is optional unless asked for (`merge`)
        return peak(parts if merge else {**parts, "merged copy (after training)": 0})

    choose = checkpointing is None
    use_checkpointing = bool(checkpointing)
    parts = parts_for(use_checkpointing, tokens)
    reason = "checkpointing off: the activations fit" if choose else "as asked"
    if choose and method in ("lora", "full") and needed(parts) > HEADROOM * room_bytes:
        use_checkpointing, reason = True, "checkpointing on: without it the activations would not fit"
        parts = parts_for(True, tokens)
    if parts["merged copy (after training)"] and peak(parts) > HEADROOM * room_bytes >= needed(parts):
        parts = {**parts, "merged copy (after training)": 0}
        reason += "; the adapter is served unmerged after training (its merge would not fit)"
    result = MemoryPlan(method, precision, base_precision, processes, tokens, use_checkpointing, parts, room_bytes,
                        source, reason)
    if not result.fits:
        result.alternatives = _alternatives(shape, method, precision=precision, base_precision=base_precision,
                                            tokens=tokens, rows=rows, scored=scored, processes=processes,
                                            room=(free, source, cap), baseline=baseline, loaded=loaded,
                                            device=device, weights_precision=weights_precision)
    return result


def _alternatives(shape: ModelShape, method: str, **kwargs) -> list[str]:
    """The changes that would make a refused run fit, each checked by planning it."""
    found = []
    trials = []
    if method == "full":
        trials.append(("--method lora", dict(method="lora")))
    if kwargs["base_precision"] == "fp32":
        bf16 = dict(base_precision="bf16", weights_precision="bf16")
        if method == "lora":
            trials.append(("--base-precision bf16 (the frozen weights in bf16)", bf16))
        if method == "full":
            trials.append(("--method lora --base-precision bf16", dict(method="lora", **bf16)))
    if kwargs["processes"] > 1:
        trials.append(("--nproc 1", dict(processes=1)))
    if kwargs["tokens"] > 128:
        trials.append((f"micro-batches of {kwargs['tokens'] // 4} tokens (--max-length or --batch-size smaller)",
                       dict(tokens=kwargs["tokens"] // 4, rows=max(1, kwargs["rows"] // 4))))
    for text, change in trials:
        settings = {**kwargs, **change}
        method_tried = settings.pop("method", method)
        tried = plan(shape, method_tried, checkpointing=None, **settings)
        if tried.fits:
            found.append(f"{text}: {gb(tried.total)}")
    return found


def check(plan_: MemoryPlan) -> MemoryPlan:
    """The plan, or a refusal in one line before anything is loaded or written.

    Raises:
        MemoryPlanError: the run will not fit.
    """
    if not plan_.fits:
        raise MemoryPlanError(plan_.refusal())
    return plan_


PLANNED = (("score", "fp32"), ("probe", "fp32"), ("lora", "fp32"), ("lora", "bf16"), ("full", "fp32"))


def plans_for(config, file_bytes: int = 0, *, processes: int = 1, tokens: int = 512, rows: int = 8,
              device: torch.device | None = None) -> list[MemoryPlan]:
    """The plan of every method (and LoRA on a bf16 base) for a model config, before the model is loaded."""
    shape = ModelShape.of(config, file_bytes)
    room = memory_room(device)
    baseline = process_rss()
    return [plan(shape, method, base_precision=base, tokens=tokens, rows=rows, processes=processes, room=room,
                 baseline=baseline, device=device, weights_precision=base) for method, base in PLANNED]


def cores() -> int:
    """The CPU cores this process may run on (its affinity, as a container or taskset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
