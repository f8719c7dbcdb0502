"""Minimal fixes to LAVIS 1.0.2 internals that hard-code CUDA where subclassing cannot reach.

Everything else is handled by subclassing (see ``lavis_mmict.runners``). Applied once, on import of
``lavis_mmict``:

- ``lavis.common.logger.SmoothedValue.synchronize_between_processes`` builds its all-reduce tensor
  with ``device="cuda"``, which fails on CPU/gloo. ``MetricLogger`` creates ``SmoothedValue``
  objects inside ``BaseTask._train_inner_loop``, so there is no class to subclass: the method is
  replaced by :func:`synchronize_between_processes`, which puts the tensor where the process
  group's backend needs it (CUDA for nccl, CPU otherwise). Same result on CUDA.
"""
import torch
import torch.distributed as dist
from lavis.common import dist_utils
from lavis.common.logger import SmoothedValue


def collective_device():
    """The device a tensor must live on for collectives of the default process group."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def synchronize_between_processes(self):
    """Sum ``count`` and ``total`` of a ``SmoothedValue`` over ranks (the deque is not synced)."""
    if not dist_utils.is_dist_avail_and_initialized() or dist.get_world_size() == 1:
        return
    totals = torch.tensor(
        [self.count, self.total], dtype=torch.float64, device=collective_device()
    )
    dist.all_reduce(totals)
    count, total = totals.tolist()
    self.count = int(count)
    self.total = total


def apply():
    """Install the fixes (idempotent)."""
    SmoothedValue.synchronize_between_processes = synchronize_between_processes


apply()
