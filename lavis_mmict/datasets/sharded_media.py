"""One sharded, batched pass over a list of media: what the pool feature store (models/pool_store.py)
and the ``similar`` strategy's features (datasets/similarity.py) both extract with, and what the
media check (runners/media_check.py) probes files with.

Each rank takes every ``world``-th item (rank r: items r, r + world, ...), reads them through a
DataLoader with worker processes (decoding runs beside the encoder), stacks them in batches and
hands each batch to the caller's encoder; rank 0 shows a tqdm progress bar with an ETA for its
share (every rank has about as many items). How the ranks' results are gathered and stored is the
caller's: each writes its share, then ``barrier()``.
"""
import logging
from typing import Any, Callable, Iterator, List, Sequence, Tuple

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


class _Shard(Dataset):
    """Items ``positions`` of a list: index -> (position, ``read(position)``)."""

    def __init__(self, positions: Sequence[int], read: Callable[[int], Any]):
        self.positions, self.read = list(positions), read

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, index):
        position = self.positions[index]
        return position, self.read(position)


def shard_results(count: int, read: Callable[[int], Any], batch_size: int, num_workers: int, name: str,
                  unit: str = "item", progress: bool = True) -> Iterator[List[Tuple[int, Any]]]:
    """This rank's share of items 0..count-1 (rank r: r, r + world, ...), each ``read(position)`` by
    one of ``num_workers`` DataLoader worker processes (no more than there are batches).

    Yields batches [(position, read(position))] of up to ``batch_size``; rank 0 shows a tqdm bar
    ``name (rank r/world)`` counting ``unit``s. The caller gathers the ranks' results.
    """
    from tqdm import tqdm

    rank, world = rank_and_world()
    shard = _Shard(range(rank, count, world), read)
    batch_size = max(1, int(batch_size))
    workers = min(max(0, int(num_workers)), -(-len(shard) // batch_size))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=list)
    with tqdm(total=len(shard), desc=f"{name} (rank {rank}/{world})", unit=unit,
              disable=rank != 0 or not progress or len(shard) == 0) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch))


class _ReadOrSkip:
    """position -> frames (F, 3, H, W), or None when unreadable and ``skip_bad_media`` (logged)."""

    def __init__(self, load: Callable[[int], torch.Tensor], name: str, skip_bad_media: bool):
        self.load, self.name, self.skip_bad_media = load, name, skip_bad_media

    def __call__(self, position):
        try:
            return self.load(position)
        except MediaError as error:
            if not self.skip_bad_media:
                raise
            logging.warning("%s: skipping unreadable media: %s", self.name, error)
            return None


def shard_batches(count: int, load: Callable[[int], torch.Tensor], batch_size: int, num_workers: int,
                  name: str, skip_bad_media: bool = False) -> Iterator[Tuple[List[int], torch.Tensor, List[int]]]:
    """This rank's share of media items 0..count-1 (:func:`shard_results`), frames stacked per batch.

    Args:
        load: item position -> processed frames (F, 3, H, W) (may raise MediaError).
        name: what the progress bar and warnings call the pass.
    Yields (positions (b,), frames (b, F, 3, H, W) or None when all b failed, failed positions):
    ``failed`` are unreadable items (only with ``skip_bad_media``; otherwise MediaError propagates).
    """
    for batch in shard_results(count, _ReadOrSkip(load, name, skip_bad_media), batch_size, num_workers,
                               name, unit="clip"):
        read = [(position, frames) for position, frames in batch if frames is not None]
        failed = [position for position, frames in batch if frames is None]
        yield [position for position, _ in read], torch.stack([f for _, f in read]) if read else None, failed
