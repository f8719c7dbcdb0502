"""Distributed set-up that works on CUDA (nccl) and CPU (gloo), for ``train.py``/``evaluate.py``.

Replaces ``lavis.common.dist_utils.init_distributed_mode``, which always calls
``torch.cuda.set_device`` and uses nccl with a 365-day timeout.

- Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set): one process per rank, nccl when
  ``run.device`` is cuda and CUDA exists (device ``LOCAL_RANK``), gloo otherwise.
- Plain ``python train.py``: one process, ``run.distributed = False``; a world-size-1 gloo group is
  still created in-process, because LAVIS's runner calls ``dist.barrier()`` unconditionally.

Run config keys read: ``device`` (cuda|cpu; cuda falls back to cpu with a warning when CUDA is
missing), ``dist_url`` (default ``env://``), ``dist_timeout_s`` (default 1800), ``job_id`` (optional,
see :func:`shared_job_id`).
Run config keys written (as LAVIS does): ``distributed``, ``rank``, ``world_size``, ``gpu``,
``dist_backend`` and, on the CPU fallback, ``device``.
"""
import datetime
import gc
import logging
import os

import torch
import torch.distributed as dist
from lavis.common.dist_utils import setup_for_distributed

DEFAULT_TIMEOUT_S = 30 * 60
TORCHRUN_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun():
    """True when the torchrun/``torch.distributed.run`` variables are all set."""
    return all(name in os.environ for name in TORCHRUN_ENV_VARS)


def _resolve_device(run_cfg):
    """Return the device string to use; a cuda request without CUDA falls back to cpu."""
    device = str(run_cfg.get("device", "cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        logging.warning("run.device is %r but CUDA is not available: running on CPU.", device)
        device = "cpu"
    return device


def init_distributed(run_cfg):
    """Initialise ``torch.distributed`` from the environment and record the layout in ``run_cfg``.

    Idempotent in one process: an already initialised default group is reused (tests build several
    runners in one interpreter).
    """
    run_cfg.device = _resolve_device(run_cfg)
    use_cuda = run_cfg.device.startswith("cuda")
    timeout = datetime.timedelta(seconds=float(run_cfg.get("dist_timeout_s", DEFAULT_TIMEOUT_S)))

    if launched_by_torchrun():
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        run_cfg.distributed = True
    else:
        rank, world_size, local_rank, backend = 0, 1, 0, "gloo"
        run_cfg.distributed = False

    run_cfg.rank = rank
    run_cfg.world_size = world_size
    run_cfg.gpu = local_rank
    run_cfg.dist_backend = backend

    if dist.is_initialized():
        return run_cfg

    if run_cfg.distributed:
        print(
            "| distributed init (rank {}, world {}, backend {}): {}".format(
                rank, world_size, backend, run_cfg.get("dist_url", "env://")
            ),
            flush=True,
        )
        dist.init_process_group(
            backend=backend,
            init_method=run_cfg.get("dist_url", "env://"),
            world_size=world_size,
            rank=rank,
            timeout=timeout,
        )
        dist.barrier()
        # as LAVIS does: only rank 0 prints (print(..., force=True) still prints everywhere)
        setup_for_distributed(rank == 0)
    else:
        # One process; the group only exists so that LAVIS's unconditional barriers succeed.
        dist.init_process_group(
            "gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
        )
    return run_cfg


def _timestamp():
    """A LAVIS-style job id (``lavis.common.utils.now``), to the second, so reruns don't collide."""
    return datetime.datetime.now().strftime("%Y%m%d%H%M%S")


def shared_job_id(run_cfg=None):
    """One job id for all ranks: ``run.job_id`` if set, else rank 0's timestamp, broadcast.

    Each rank computing its own timestamp (as LAVIS's ``train.py`` does) can give different output
    directories when ranks start across a clock tick.
    """
    fixed = run_cfg.get("job_id", None) if run_cfg is not None else None
    if fixed:
        return str(fixed)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return _timestamp()
    holder = [_timestamp() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def destroy_distributed(finished=False):
    """Tear down the default process group if one exists.

    ``finished``: every rank got here without an error. The ranks then meet at a barrier, and the
    backend is destroyed (its worker threads joined) while the interpreter is still alive. Gloo's
    worker threads release finished collectives (with the Python-owned tensors of
    ``all_gather_object`` and friends) after the caller has already woken up; one doing so after
    interpreter shutdown began needs the GIL, cannot get it, and aborts the process ("terminate
    called without an active exception", seen under heavy load). After an error: no barrier and no
    join, since the other ranks may never come and a collective may never finish.
    """
    if not dist.is_initialized():
        return
    if not finished:
        dist.destroy_process_group()
        return
    if dist.get_world_size() > 1:
        dist.barrier()
    device = torch.device("cuda" if dist.get_backend() == "nccl" else "cpu")
    try:
        backend = dist.group.WORLD._get_backend(device)  # private API: a success must not fail here
    except (AttributeError, RuntimeError) as error:
        logging.debug("not joining the process group's threads: %s", error)
        backend = None
    dist.destroy_process_group()
    gc.collect()  # frees the runner and its DDP wrapper (reference cycles), which hold the group
    # ``backend`` now holds the last reference: dropping it runs the destructor with the GIL
    # released (torch binds it so), which joins the worker threads; they may take the GIL to finish.
    del backend
