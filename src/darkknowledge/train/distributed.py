"""Data parallelism with PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

``torchrun --nproc_per_node=N -m darkknowledge.cli train|distill ...`` starts N processes with
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` set; :func:`from_environment` joins them into one process
group (gloo on CPU, NCCL on CUDA with device ``cuda:LOCAL_RANK``). Every process draws the same
data order and takes its own contiguous slice of each global batch (:func:`rank_slice`); only
the student is wrapped in DDP (the teacher is replicated, frozen, never wrapped); only rank 0
writes files. See docs/performance.md.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from darkknowledge.errors import DKError


@dataclass(frozen=True)
class Distributed:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    created: bool  # this module initialized the process group (and so destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where collective tensors must live (NCCL: the GPU; gloo: the CPU)."""
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        out = t.to(self.comm_device)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(t.device)

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of ``t`` (same shape and dtype on every rank), on ``t``'s device."""
        local = t.to(self.comm_device).contiguous()
        out = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(out, local)
        return [o.to(t.device) for o in out]

    def agree(self, ok: bool) -> bool:
        """True only if every rank passes ``ok=True`` (a collective: every rank must call it)."""
        flags = self.all_reduce_sum(torch.tensor([0.0 if ok else 1.0], device=self.comm_device))
        return float(flags[0]) == 0.0

    def barrier(self) -> None:
        if self.comm_device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise DKError(
            f"environment variable {name}={raw!r} is not an integer",
            "launch with torchrun, or unset it",
        ) from None


def from_environment(device_name: str) -> Distributed | None:
    """Join the torchrun process group if this process was launched by torchrun with WORLD_SIZE > 1.

    ``device_name`` is the config's ``device``: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` when
    CUDA is available (NCCL), ``cpu`` (or no CUDA) uses gloo. Returns None for a single process.
    """
    world = _env_int("WORLD_SIZE")
    if world is None or world <= 1:
        return None
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if rank is None or local is None:
        raise DKError(
            f"WORLD_SIZE={world} is set but RANK or LOCAL_RANK is not",
            "launch with torchrun --nproc_per_node=N -m darkknowledge.cli ...",
        )
    want_cuda = device_name.startswith("cuda") or (
        device_name == "auto" and torch.cuda.is_available()
    )
    if want_cuda:
        if not torch.cuda.is_available():
            raise DKError(
                f"device {device_name!r} requested but CUDA is not available",
                "use device=cpu (gloo) or device=auto",
            )
        if local >= torch.cuda.device_count():
            raise DKError(
                f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPUs",
                "use --nproc_per_node at most the GPU count",
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device_name in ("auto", "cpu"):
        device, backend = torch.device("cpu"), "gloo"
    else:
        raise DKError(
            f"device {device_name!r} cannot be used by several processes",
            "use device=auto, cuda or cpu with torchrun",
        )
    created = False
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend=backend, device_id=device if backend == "nccl" else None
            )
        except (ValueError, RuntimeError) as exc:
            raise DKError(
                f"cannot join the process group of WORLD_SIZE={world} "
                f"({' '.join(str(exc).split())[:200]})",
                "launch with torchrun --nproc_per_node=N, or unset WORLD_SIZE/RANK",
            ) from None
        created = True
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise DKError(
            f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) disagrees with "
            f"RANK={rank}, WORLD_SIZE={world}",
            "launch with torchrun",
        )
    return Distributed(rank, world, local, device, created)


def shutdown(d: Distributed | None) -> None:
    if d is not None and d.created and dist.is_initialized():
        dist.destroy_process_group()


def rank_slice(n: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``n`` examples: sizes differ by at most one, in rank
    order.
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def rank_seed(seed: int, rank: int) -> int:
    """A dropout seed for rank ``rank`` > 0, distinct per (seed, rank), reproducible."""
    return (
        int.from_bytes(
            hashlib.sha256(f"darkknowledge/{seed}/rank{rank}".encode()).digest()[:8], "little"
        )
        >> 1
    )
