"""Start-up check that every rank sees the same output and cache folders.

Rank 0 writes checkpoints, `similar` features and disk caches that the other ranks then read
(the best checkpoint before testing, a resumed run's state, cached features). Without a shared
file system a rank on another node would read nothing, or its own stale copy, and evaluate
different weights. So before anything is built, rank 0 writes a token file with a random content
into each folder below and every rank reads it back; a rank that cannot is a
:class:`SharedStorageError` (one line, on every rank) naming the folder, the ranks and hosts.

Folders checked (relative ones are relative to each process's current directory):
``run.output_dir``; ``model.demo_feature_cache_dir`` when ``model.demo_feature_cache: disk``;
``model.demo_bank.disk_dir``; ``datasets.<name>.demonstrations.feature_cache`` of ``similar``
demonstrations. Skipped with one process.
"""
import os
import socket
import uuid

import torch.distributed as dist
from omegaconf import OmegaConf

from lavis_mmict.errors import ConfigError

TOKEN_PREFIX = ".lavis_mmict_shared_check_"


class SharedStorageError(ConfigError):
    """A folder rank 0 writes is not the same folder on every rank."""


def shared_folders(config):
    """{config key: folder} of the folders all ranks must share (see the module docstring)."""
    select = lambda key: OmegaConf.select(config, key, default=None)  # noqa: E731
    folders = {"run.output_dir": select("run.output_dir")}
    if select("model.demo_feature_cache") == "disk":
        from lavis_mmict.models.feature_cache import DEFAULT_CACHE_DIR

        folders["model.demo_feature_cache_dir"] = select("model.demo_feature_cache_dir") or DEFAULT_CACHE_DIR
    folders["model.demo_bank.disk_dir"] = select("model.demo_bank.disk_dir")
    for name in (select("datasets") or {}):
        demos = f"datasets.{name}.demonstrations"
        if select(f"{demos}.strategy") == "similar":
            from lavis_mmict.datasets.demonstrations import DEFAULT_FEATURE_CACHE

            folders[f"{demos}.feature_cache"] = select(f"{demos}.feature_cache") or DEFAULT_FEATURE_CACHE
    return {key: str(folder) for key, folder in folders.items() if folder}


def check_shared_folders(config):
    """Raise :class:`SharedStorageError` on every rank if a rank does not see rank 0's folders.

    ``config``: the run's whole config (``cfg.config``). Needs the default process group (any
    backend); a no-op with one process. Collective: every rank must call it.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    rank = dist.get_rank()
    folders = shared_folders(config)
    tokens = [None]
    if rank == 0:
        tokens[0] = {key: _write_token(folder) for key, folder in folders.items()}
    dist.broadcast_object_list(tokens, src=0)
    seen = {key: _read_token(folder, *tokens[0][key]) for key, folder in folders.items()}
    views = [None] * dist.get_world_size()
    dist.all_gather_object(views, {"host": socket.gethostname(), "seen": seen,
                                   "folders": {k: os.path.abspath(f) for k, f in folders.items()}})
    if rank == 0:
        for key, folder in folders.items():
            _remove(os.path.join(folder, tokens[0][key][0]))
    for key in folders:
        blind = [r for r, view in enumerate(views) if not view["seen"][key]]
        if blind:
            where = ", ".join(f"rank {r} on {views[r]['host']} sees {views[r]['folders'][key]}" for r in blind)
            raise SharedStorageError(
                f"{key} is not shared by all ranks: rank 0 on {views[0]['host']} wrote a file into "
                f"{views[0]['folders'][key]}, but {where} without it. Rank 0 writes checkpoints and caches "
                f"there that every rank reads: use a folder on a file system all nodes share "
                f"(an absolute path, the same on every node; docs/running.md#several-gpus-several-nodes)")


def _write_token(folder):
    """Write a token file into ``folder`` (created); returns (file name, content)."""
    os.makedirs(folder, exist_ok=True)
    name, content = f"{TOKEN_PREFIX}{uuid.uuid4().hex}", uuid.uuid4().hex
    with open(os.path.join(folder, name), "w") as f:
        f.write(content)
    return name, content


def _read_token(folder, name, content):
    try:
        with open(os.path.join(folder, name)) as f:
            return f.read() == content
    except OSError:
        return False


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass
