"""One sharded, batched pass over a list of media: what the pool feature store (models/pool_store.py)
and the ``similar`` strategy's features (datasets/similarity.py) both extract with.

Each rank takes every ``world``-th item (rank r: items r, r + world, ...), reads them through a
DataLoader with worker processes (decoding runs beside the encoder), stacks them in batches and
hands each batch to the caller's encoder; rank 0 shows a tqdm progress bar with an ETA for its
share (every rank has about as many items). How the ranks' results are gathered and stored is the
caller's: each writes its share, then ``barrier()``.
"""
import logging
from typing import Callable, Iterator, List, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from lavis_mmict.datasets.media import MediaError


def rank_and_world() -> Tuple[int, int]:
    """(this process's rank, number of ranks); (0, 1) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier():
    """Wait for every rank (no-op outside torch.distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _MediaShard(Dataset):
    """Items ``positions`` of a media list: position -> (position, frames (F, 3, H, W) or None when
    unreadable and ``skip_bad_media``)."""

    def __init__(self, positions: Sequence[int], load: Callable[[int], torch.Tensor], name: str,
                 skip_bad_media: bool):
        self.positions, self.load, self.name, self.skip_bad_media = list(positions), load, name, skip_bad_media

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, index):
        position = self.positions[index]
        try:
            return position, self.load(position)
        except MediaError as error:
            if not self.skip_bad_media:
                raise
            logging.warning("%s: skipping unreadable media: %s", self.name, error)
            return position, None


def _collate(items):
    read = [(position, frames) for position, frames in items if frames is not None]
    failed = [position for position, frames in items if frames is None]
    frames = torch.stack([frames for _, frames in read]) if read else None
    return [position for position, _ in read], frames, failed


def shard_batches(count: int, load: Callable[[int], torch.Tensor], batch_size: int, num_workers: int,
                  name: str, skip_bad_media: bool = False) -> Iterator[Tuple[List[int], torch.Tensor, List[int]]]:
    """This rank's share of items 0..count-1, in batches read by ``num_workers`` worker processes.

    Args:
        load: item position -> processed frames (F, 3, H, W) (may raise MediaError).
        name: what the progress bar and warnings call the pass.
    Yields (positions (b,), frames (b, F, 3, H, W) or None when all b failed, failed positions):
    ``failed`` are unreadable items (only with ``skip_bad_media``; otherwise MediaError propagates).
    """
    from tqdm import tqdm

    rank, world = rank_and_world()
    shard = _MediaShard(range(rank, count, world), load, name, skip_bad_media)
    loader = DataLoader(shard, batch_size=max(1, int(batch_size)), shuffle=False,
                        num_workers=max(0, int(num_workers)), collate_fn=_collate)
    with tqdm(total=len(shard), desc=f"{name} (rank {rank}/{world})", unit="clip",
              disable=rank != 0 or len(shard) == 0) as progress:
        for positions, frames, failed in loader:
            yield positions, frames, failed
            progress.update(len(positions) + len(failed))
