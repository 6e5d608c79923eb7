"""Data-parallel training on torch.distributed: the process group, each process's shard of a batch, and the one
gradient reduction every trainer makes before its optimizer step.

tunelab joins whatever started it: `torchrun` / `python -m torch.distributed.run`, `accelerate launch` and Ray
Train's TorchTrainer all set RANK, WORLD_SIZE and MASTER_ADDR/PORT (Ray Train also creates the group itself);
`tunelab tune --nproc N` starts torch.distributed.run for one machine. gloo on a CPU; on GPUs NCCL for GPU tensors
with gloo beside it for CPU ones (choose_backend).

Why the gradients are summed here rather than by wrapping the model in DistributedDataParallel: a tunelab step
accumulates micro-batches (long documents) and every process's loss is already scaled to its share of the *global*
batch, so one SUM all-reduce of the flattened gradients per optimizer step, after the last micro-batch, gives
exactly the gradient one process would have computed on the whole batch. DDP would average (divide by the world
size), reduce on every micro-batch unless each is wrapped in no_sync(), and hide the model behind a wrapper whose
forward signature the scoring code inspects. The reduction is the same collective DDP runs (one bucket).

The guarantees: the global batch is the one the user set, split across processes; the same seed gives the same
weights for any world size (up to float summation order; dropout masks do differ per process); only rank 0 writes
checkpoints and artifacts; collectives time out (TUNELAB_DIST_TIMEOUT_S, default 300 s) instead of hanging, and a
dead process ends the job, which `--resume` continues with any world size.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch

TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: its rank, the world size, the backend (None when alone)."""

    rank: int = 0
    world: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, items: list) -> list:
        """This process's part of one global batch: every world-th item from its rank on."""
        return items[self.rank :: self.world] if self.active else items

    def reduce_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes, in one collective (a process whose shard was empty
        contributes zeros)."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        offset = 0
        for parameter, grad in zip(parameters, grads):
            parameter.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
            offset += grad.numel()

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the processes (losses, counts)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor.tolist()

    def gather(self, value: float) -> list[float]:
        """Every process's value, in rank order (per-process throughput)."""
        if not self.active:
            return [value]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def broadcast(self, value):
        """Rank 0's value, on every process (a choice that must be the same everywhere, e.g. a timed precision)."""
        if not self.active:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def describe(self) -> dict:
        return {"world_size": self.world, "backend": self.backend or "none", "rank": self.rank}


def from_env() -> Dist:
    """The job this process belongs to: the process group a launcher set up (created here from RANK, WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT when the launcher did not create it), or a job of one."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        return Dist(td.get_rank(), td.get_world_size(), td.get_backend())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not td.is_available():
        return Dist()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend = choose_backend(gpus, local_world, td.is_nccl_available())
    if "nccl" in backend:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(seconds=float(os.environ.get("TUNELAB_DIST_TIMEOUT_S", TIMEOUT_S)))
    td.init_process_group(backend, timeout=timeout)
    atexit.register(_leave_group)
    return Dist(td.get_rank(), td.get_world_size(), backend)


def choose_backend(gpus: int, local_world: int, nccl_available: bool) -> str:
    """The process group's backend: NCCL for GPU tensors when every local process has a GPU of its own, with gloo
    beside it for the CPU tensors every trainer also reduces (losses, counts, timed choices), which NCCL refuses;
    gloo alone on a CPU, and where processes would share a GPU (NCCL refuses two ranks on one device)."""
    if gpus >= local_world and gpus > 0 and nccl_available:
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def _leave_group() -> None:
    """Destroys the group this process created while the interpreter is still whole: a gloo group left to the
    interpreter's own teardown can abort the process ("terminate called without an active exception", SIGABRT),
    and the launcher then kills the others. Seen in CI on a rank that returned early while rank 0 evaluated."""
    import torch.distributed as td

    if td.is_initialized():
        td.destroy_process_group()


def threads_per_process(processes: int | None = None, cores: int | None = None) -> int:
    """Torch threads for each of this machine's `processes` (default: the launcher's LOCAL_WORLD_SIZE): the cores
    shared out, at least one each, so that processes x threads never exceeds the cores (oversubscribed torch threads
    ran ~15x slower here)."""
    local = processes or int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, local))


def launch_command(nproc: int, argv: list[str]) -> list[str]:
    """The torch.distributed.run command that runs `tunelab ARGV` in `nproc` processes on this machine."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--max-restarts=0", "-m", "tunelab.cli", *argv]
