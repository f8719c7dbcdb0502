"""The runner's data loaders: resumable, epoch-aware and reproducibly seeded.

- :class:`ResumableDistributedSampler`: the train order depends only on (``run.seed``, epoch), also
  in one process, and a pass can start part-way (resume mid-epoch without loading skipped samples).
- :class:`EpochAwareLoader`: the infinite train iterator; calls ``set_epoch`` on sampler and
  datasets, knows its (epoch, position) for checkpoints, seeds its workers per data epoch.
- :class:`EvalLoader`: evaluation loaders; both strip ``num_skipped_media`` from batches.
- :func:`chunk_seed` / :func:`seed_everything`: the seeds of each training chunk and its workers.
- :class:`RunnerLoadersMixin`: the runner's ``create_loaders`` and saving/restoring loader positions.
"""
import hashlib
import logging
import random

import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from lavis.common.dist_utils import get_rank, get_world_size
from lavis.datasets.datasets.dataloader_utils import MultiIterLoader, PrefetchLoader
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data.dataset import ChainDataset

from lavis_mmict.runners.skipped_media import SkippedMediaCounter


def _set_dataset_epoch(dataset, epoch):
    """Call ``set_epoch`` on a dataset, or on each sub-dataset of a concatenation that lacks it."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    else:
        for sub_dataset in getattr(dataset, "datasets", ()):
            _set_dataset_epoch(sub_dataset, epoch)


class ResumableDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` whose next pass can start part-way, for resuming mid-epoch.

    The order of epoch ``e`` depends only on (``seed``, ``e``), also for a single process (where a
    plain ``RandomSampler`` would follow the global RNG); :meth:`skip_next` drops the first indices
    of the next pass without loading their samples.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._skip = 0

    def skip_next(self, num_indices):
        self._skip = int(num_indices)

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


class EvalLoader:
    """An evaluation loader that strips ``num_skipped_media`` from its batches (and counts them)."""

    def __init__(self, loader):
        self._loader = loader
        self.skipped_media = SkippedMediaCounter()

    def __iter__(self):
        for batch in self._loader:
            yield self.skipped_media.strip(batch)

    def __len__(self):
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class EpochAwareLoader:
    """An infinite iterator over a ``DataLoader`` that counts epochs and its position in them.

    At the start of each epoch ``e`` (before its iterator, and so its workers, is created) it calls
    ``sampler.set_epoch(e)`` and ``dataset.set_epoch(e)`` where they exist: distributed samplers
    reshuffle and demonstration datasets resample per epoch. ``len()`` is batches per epoch.
    :attr:`state` / :meth:`set_epoch` (with ``position``) save and restore where it is, so a resumed
    run continues with the very batch an uninterrupted one would have drawn. Batches lose their
    ``num_skipped_media`` entry (counted in :attr:`skipped_media`) before anyone sees them.

    Args:
        loader: what to iterate (a ``DataLoader``, or a ``PrefetchLoader`` around it).
        dataloader: the underlying ``DataLoader`` (defaults to ``loader``).
        worker_seed: a function epoch -> seed of the DataLoader's ``generator`` for that epoch
            (it gives the workers' seeds; without one, making an iterator draws from the global
            torch RNG, so where a resumed run makes it would shift every later random draw).
    """

    def __init__(self, loader, dataloader=None, epoch=0, worker_seed=None):
        self._loader = loader
        self._dataloader = dataloader if dataloader is not None else loader
        self._worker_seed = worker_seed
        self._epoch = epoch
        self._position = 0  # batches drawn in the current epoch
        self._skip = 0  # batches to skip when the current epoch's iterator is made
        self._iterator = None
        self.skipped_media = SkippedMediaCounter()

    @property
    def epoch(self):
        return self._epoch

    @property
    def state(self):
        """``{"epoch", "position"}`` of the next batch; a finished epoch counts as the next one's start."""
        if self._position >= len(self):
            return {"epoch": self._epoch + 1, "position": 0}
        return {"epoch": self._epoch, "position": self._position}

    def set_epoch(self, epoch, position=0):
        """Start over at batch ``position`` of ``epoch`` (used on resume)."""
        self._epoch = int(epoch)
        self._position = self._skip = int(position)
        self._iterator = None

    def _start_epoch(self):
        sampler = getattr(self._dataloader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self._epoch)
        _set_dataset_epoch(self._dataloader.dataset, self._epoch)
        generator = getattr(self._dataloader, "generator", None)
        if self._worker_seed is not None and generator is not None:
            generator.manual_seed(self._worker_seed(self._epoch))
        skip, self._skip = self._skip, 0
        if skip and hasattr(sampler, "skip_next"):
            sampler.skip_next(skip * self._dataloader.batch_size)
            self._iterator = iter(self._loader)
        else:
            self._iterator = iter(self._loader)
            for _ in range(skip):  # a sampler that cannot skip: draw and drop (loads the data)
                next(self._iterator)

    def _next_batch(self):
        if self._iterator is None:
            self._start_epoch()
        try:
            return next(self._iterator)
        except StopIteration:
            pass
        self._epoch += 1
        self._position = 0
        self._start_epoch()
        try:
            return next(self._iterator)
        except StopIteration:
            raise RuntimeError(
                "The training loader yields no batches: the training split has fewer samples per "
                "process than run.batch_size_train (the last incomplete batch is dropped)."
            ) from None

    def __next__(self):
        batch = self._next_batch()
        self._position += 1
        return self.skipped_media.strip(batch)

    def __iter__(self):
        return self

    def __len__(self):
        return len(self._dataloader)


def chunk_seed(seed, rank, progress, purpose="chunk"):
    """The seed of the training chunk (epoch, or inner epoch) starting at ``progress`` on ``rank``
    (``purpose="workers"``: of the DataLoader workers of data epoch ``progress``)."""
    key = f"lavis_mmict/{purpose}/{int(seed)}/{int(rank)}/{int(progress)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


def seed_everything(seed):
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pipeline_collater(dataset):
    """The ``collater`` of a webdataset pipeline; LAVIS chains pipelines into a ChainDataset, which
    hides it (torch's default collate would then transpose the demo text lists)."""
    parts = dataset.datasets if isinstance(dataset, ChainDataset) else [dataset]
    collaters = {getattr(part, "collater", None) for part in parts}
    return collaters.pop() if len(collaters) == 1 else None


class RunnerLoadersMixin:
    """A runner's loaders: one per split, train ones resumable; their positions go into checkpoints."""

    @property
    def seed(self):
        return int(self.config.run_cfg.get("seed", 0))

    def create_loaders(
        self, datasets, num_workers, batch_sizes, is_trains, collate_fns, dataset_ratios=None
    ):
        """One loader per split; a tuple of train datasets is sampled with LAVIS's MultiIterLoader."""
        loaders = []
        for dataset, batch_size, is_train, collate_fn in zip(
            datasets, batch_sizes, is_trains, collate_fns
        ):
            if isinstance(dataset, (list, tuple)):
                loader = MultiIterLoader(
                    loaders=[
                        self._create_loader(d, num_workers, batch_size, is_train, collate_fn[i])
                        for i, d in enumerate(dataset)
                    ],
                    ratios=dataset_ratios,
                )
            else:
                loader = self._create_loader(dataset, num_workers, batch_size, is_train, collate_fn)
            loaders.append(loader)
        return loaders

    def _create_loader(self, dataset, num_workers, batch_size, is_train, collate_fn):
        pin_memory = self.cuda_enabled
        if isinstance(dataset, (ChainDataset, wds.DataPipeline)):
            # webdataset pipelines shard and shuffle themselves (as in LAVIS); batched here
            return iter(
                DataLoader(
                    dataset,
                    batch_size=batch_size,
                    num_workers=num_workers,
                    pin_memory=pin_memory,
                    persistent_workers=False,
                    collate_fn=collate_fn or pipeline_collater(dataset),
                )
            )

        sampler = None
        if is_train:
            # seeded by (run.seed, epoch) even in one process, so a resumed run sees the same order
            sampler = ResumableDistributedSampler(
                dataset,
                num_replicas=get_world_size() if self.use_distributed else 1,
                rank=get_rank() if self.use_distributed else 0,
                shuffle=True,
                seed=self.seed,
            )
        elif self.use_distributed and self.use_dist_eval_sampler:
            sampler = DistributedSampler(
                dataset,
                num_replicas=get_world_size(),
                rank=get_rank(),
                shuffle=False,
                seed=self.seed,
            )
        dataloader = DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            sampler=sampler,
            shuffle=False,  # the train sampler shuffles
            collate_fn=collate_fn,
            drop_last=is_train,
            persistent_workers=False,
            generator=torch.Generator() if is_train else None,
        )
        # PrefetchLoader overlaps host-to-GPU copies on a CUDA stream; nothing to overlap on CPU.
        loader = PrefetchLoader(dataloader) if self.cuda_enabled else dataloader
        if is_train:
            rank = get_rank() if self.use_distributed else 0
            return EpochAwareLoader(
                loader, dataloader=dataloader,
                worker_seed=lambda epoch: chunk_seed(self.seed, rank, epoch, purpose="workers"),
            )
        return EvalLoader(loader)

    def _train_epoch_loaders(self):
        """The :class:`EpochAwareLoader` objects feeding training (several with dataset ratios)."""
        if "train" not in self.dataloaders:
            return []
        loader = self.dataloaders["train"]
        loaders = getattr(loader, "loaders", [loader])
        return [l for l in loaders if isinstance(l, EpochAwareLoader)]

    def _gather_loader_states(self):
        """Every rank's train loader positions (ranks may differ with ``train_dataset_ratios``)."""
        states = [loader.state for loader in self._train_epoch_loaders()]
        if dist.is_initialized() and get_world_size() > 1:
            gathered = [None] * get_world_size()
            dist.all_gather_object(gathered, states)
            return gathered
        return [states]

    def _restore_loader_states(self, per_rank_states, source):
        """Put each train loader at the saved (epoch, position); True when that was possible."""
        loaders = self._train_epoch_loaders()
        if not per_rank_states:
            return False
        rank = get_rank()
        if len(per_rank_states) != get_world_size():
            logging.warning(
                "%s was written by %d processes, this run has %d: every rank resumes at rank 0's "
                "data position (the batches differ from an uninterrupted run).",
                source, len(per_rank_states), get_world_size(),
            )
            rank = 0
        states = per_rank_states[rank]
        if len(states) != len(loaders):
            logging.warning("%s holds %d train loader positions, this run has %d loaders: "
                            "not restoring them.", source, len(states), len(loaders))
            return False
        for loader, state in zip(loaders, states):
            loader.set_epoch(state["epoch"], position=state["position"])
        return True
