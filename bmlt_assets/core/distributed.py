"""The processes that train one model together (DistributedDataParallel under torchrun).

``Replicas`` is what the training loop needs to know about them: its rank, how many there are,
its device, and how to sum a statistic over all of them. One process alone is ``Replicas()``
and runs the very same loop (``core.train``) with no collective at all.

BatchNorm: on ``nccl`` (GPUs) the model's BatchNorm layers become ``SyncBatchNorm``, which
normalizes over the global batch. On ``gloo`` (CPU) torch refuses ``SyncBatchNorm`` ("SyncBatchNorm
layers only work with GPU modules", measured with torch 2.13), so each rank normalizes with its
own part of the batch, and rank 0's running statistics are broadcast to every rank before each
forward (DDP's ``broadcast_buffers``) and before validation: the weights and buffers stay
identical on every rank, and the saved model is rank 0's.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from bmlt_assets.core.config import TrainingConfig

Backend = Literal["gloo", "nccl"]


@dataclass(frozen=True)
class Replicas:
    rank: int = 0
    world_size: int = 1
    backend: Backend = "gloo"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and reports."""
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over every replica (float64, so counts stay exact)."""
        if self.world_size == 1:
            return values
        # gloo sums CPU tensors; nccl only device tensors.
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model to train: on this replica's device, wrapped in DDP when there are several."""
        if self.world_size == 1:
            return model.to(self.device)
        if self.backend == "nccl":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's BatchNorm running statistics on every replica (see the module docstring)."""
        if self.world_size > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def digests(self, model: nn.Module) -> list[str]:
        """Every replica's :func:`state_digest`, in rank order (identical when training kept them in sync)."""
        own = state_digest(model)
        if self.world_size == 1:
            return [own]
        gathered: list[str | None] = [None] * self.world_size
        dist.all_gather_object(gathered, own)
        return [str(digest) for digest in gathered]


ALONE = Replicas()  # one process training alone on the CPU: no collective at all


class DeviceError(RuntimeError):
    """training.device names a device this machine does not have."""


def resolve_device(setting: str) -> torch.device:
    """``training.device`` on this machine: ``auto`` is the first CUDA GPU torch sees, else the
    CPU; ``cuda`` and ``cuda:N`` must exist (a config that asks for a GPU never trains on CPU
    silently)."""
    if setting == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if setting == "auto":
        return torch.device("cuda", 0) if count else torch.device("cpu")
    index = int(setting.split(":", 1)[1]) if ":" in setting else 0
    if not count:
        raise DeviceError(
            f"training.device {setting!r}, but torch {torch.__version__} sees no CUDA GPU on this machine "
            f"(CUDA {torch.version.cuda or 'not built in'}); use device auto or cpu, or run on a GPU node"
        )
    if index >= count:
        raise DeviceError(
            f"training.device {setting!r}, but this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def alone_on(setting: str) -> Replicas:
    """One process training alone on ``training.device``."""
    return Replicas(device=resolve_device(setting))


def state_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer, in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()


def backend_problem(backend: Backend, nproc_per_node: int) -> str | None:
    """Why ``backend`` cannot run ``nproc_per_node`` ranks on this machine, or None."""
    if backend != "nccl":
        return None
    if not torch.cuda.is_available():
        return (
            f"training.backend 'nccl' needs CUDA GPUs, but this machine has none usable by torch "
            f"{torch.__version__} (CUDA {torch.version.cuda or 'not built in'}); use backend 'gloo' to train on CPUs"
        )
    if torch.cuda.device_count() < nproc_per_node:
        return (
            f"training.nproc_per_node={nproc_per_node} with backend 'nccl' needs a GPU per rank, but this machine "
            f"has {torch.cuda.device_count()}; lower nproc_per_node"
        )
    return None


def torchrun_args(
    training: TrainingConfig, endpoint: str | None = None, run_id: str = "bmlt", is_host: bool = True
) -> list[str]:
    """torchrun's options for ``training``: ``--standalone`` on one node; with ``nnodes`` > 1 the
    c10d rendezvous at ``endpoint`` (host:port), hosted by the node started with ``is_host``."""
    per_node = f"--nproc_per_node={training.nproc_per_node}"
    if training.nnodes == 1:
        return ["--standalone", per_node]
    if endpoint is None:
        raise ValueError("a multi-node torchrun needs the rendezvous endpoint (host:port of node 0)")
    return [
        f"--nnodes={training.nnodes}",
        per_node,
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={run_id}",
        f"--rdzv-conf=is_host={'true' if is_host else 'false'}",
    ]


def join(backend: Backend) -> Replicas:
    """This process's place among torchrun's ranks (read from the environment torchrun sets),
    with the process group initialized."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    problem = backend_problem(backend, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    if problem:
        raise RuntimeError(problem)
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    return Replicas(dist.get_rank(), dist.get_world_size(), backend, device)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
