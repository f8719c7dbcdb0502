"""Registered runners: LAVIS's epoch- and iteration-based runners, on CUDA (nccl) and CPU (gloo).

- ``icl_runner_base``: subclass of ``lavis.runners.runner_base.RunnerBase`` (epochs, ``max_epoch``).
- ``icl_runner_iter``: subclass of ``lavis.runners.runner_iter.RunnerIter`` (``max_iters``,
  ``iters_per_inner_epoch``; use it for webdataset pipelines, which have no ``len()``).

Both share :class:`DeviceAwareRunnerMixin`; on CUDA they behave like LAVIS's runners.

The eight CUDA-only places of LAVIS 1.0.2 (see LAVIS-1.0.2-NOTES.md) and how each is handled:

1. ``dist_utils.init_distributed_mode`` (``torch.cuda.set_device`` + nccl, 365-day timeout):
   replaced by :func:`lavis_mmict.dist.init_distributed`, called by ``train.py``/``evaluate.py``:
   nccl on CUDA, gloo on CPU, ``run.dist_timeout_s`` (default 30 min), cuda->cpu fallback.
2. ``RunnerBase.model`` returns None when the model stays on CPU: :attr:`model` moves and wraps
   once, whatever the device.
3. ``DDP(device_ids=[gpu])``: ``device_ids=None`` on CPU; ``find_unused_parameters`` from
   ``run.find_unused_parameters`` (default false).
4. ``torch.cuda.amp.GradScaler``: :attr:`scaler` exists only when ``run.amp`` and CUDA.
5. ``eval_epoch`` omits ``cuda_enabled`` (``BaseTask.evaluation`` then moves batches to CUDA):
   :meth:`eval_epoch` passes ``cuda_enabled=self.cuda_enabled``.
6. ``PrefetchLoader`` (creates a ``torch.cuda.Stream``) around every loader: :meth:`create_loaders`
   uses it on CUDA only.
7. ``SmoothedValue.synchronize_between_processes`` all-reduces a CUDA tensor: replaced with a
   backend-aware version in :mod:`lavis_mmict.compat`.
8. ``train()`` calls ``dist.barrier()`` even with one process: ``init_distributed`` creates a
   world-size-1 gloo group for plain ``python train.py`` (``run.distributed`` stays False).

Other fixes over LAVIS's runners:

- Checkpoints hold only the trainable parameters (LAVIS's ``RunnerIter`` saved everything), plus
  optimizer, scaler, config and ``epoch``/``iters``; written atomically (temp file + ``os.replace``).
- Loading uses ``torch.load(weights_only=True)``; the model is loaded non-strictly after checking
  that only frozen parameters/buffers are missing and nothing is unexpected (LAVIS's resume loaded
  strictly and so could not read its own checkpoints).
- Resume is exact: a run killed at any point and resumed from its latest checkpoint ends with the
  same parameters as an uninterrupted run (same seed, same number of processes). It restores the
  start epoch (or iteration: LAVIS's ``RunnerIter`` restarted one iteration late), optimizer and
  scaler, and each train loader's (epoch, batch position) - the iteration runner's inner epochs
  end mid-data-epoch, and its resume skips the sampler to that batch without loading the skipped
  samples. Randomness needs no saved RNG state: the train sampler is seeded by (``run.seed``,
  epoch) even in one process, demonstrations by (their seed, epoch, query), and every training
  chunk (epoch / inner epoch) reseeds Python, NumPy and torch from (``run.seed``, rank, chunk
  start), and DataLoader worker seeds come from (``run.seed``, rank, data epoch) through the
  loader's own generator, never from the global RNG. Work since
  the last checkpoint is redone; for long epochs use ``icl_runner_iter`` with a smaller
  ``iters_per_inner_epoch`` (its checkpoint interval). Exactness across the iteration runner's
  chunk boundaries holds with ``num_workers: 0`` or deterministic processors (workers prefetch
  across a boundary with the previous chunk's seeds).
  ``run.resume_ckpt_path: auto`` resumes from the newest complete ``checkpoint_*.pth`` under
  ``<run.output_dir>/*/`` (resolved by rank 0 for all ranks), if any.
- Batches' ``num_skipped_media`` (datasets with ``skip_bad_media``) are summed over each epoch
  and over ranks, logged (``skipped N bad media items in epoch E``; ``train_num_skipped_media``
  / ``<split>_num_skipped_media`` in log.txt) and removed before the batch reaches the model.
- A relative ``run.output_dir`` is relative to the current directory (LAVIS: to its install dir).
- Train loaders are infinite epoch-aware iterators (:class:`EpochAwareLoader`) without LAVIS's
  2-second sleep per epoch; they call ``set_epoch`` on the sampler and on datasets that have it.
- Test-split metrics are also written to log.txt (``test_agg_metrics``...), not only val ones.
- ``run.evaluate`` defaults to false; a missing ``checkpoint_best.pth`` at test time (no validation
  score ever improved) evaluates the current weights with a warning instead of crashing.

Checked on CUDA (one H100, torch 2.11): plain and torchrun/nccl runs with amp, resume, the
iteration runner and evaluate.py; on CPU by tests/test_runners.py (incl. 2-process gloo).

Run config keys read here (beyond LAVIS's own): ``find_unused_parameters``, ``seed`` (sampler
and per-chunk seeds), ``resume_ckpt_path`` (path, URL or ``auto``), ``amp``, ``evaluate``, ``device``.
"""
import datetime
import glob
import hashlib
import logging
import os
import random
import time
from pathlib import Path

import numpy as np

import lavis.common.optims  # noqa: F401  (registers LAVIS's lr schedulers, as its train.py does)
import torch
import torch.distributed as dist
import webdataset as wds
from lavis.common.dist_utils import (
    get_rank,
    get_world_size,
    is_main_process,
    main_process,
)
from lavis.common.registry import registry
from lavis.datasets.datasets.dataloader_utils import MultiIterLoader, PrefetchLoader
from lavis.runners.runner_base import RunnerBase
from lavis.runners.runner_iter import RunnerIter
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data.dataset import ChainDataset

from lavis_mmict.checkpoints import (
    CheckpointError,
    atomic_torch_save,
    find_latest_checkpoint,
    load_trainable_state_dict,
    read_checkpoint,
    remove_stale_temp_files,
    trainable_state_dict,
)
from lavis_mmict.compat import collective_device
from lavis_mmict.dist import _resolve_device

__all__ = [
    "CheckpointError",
    "DeviceAwareRunnerMixin",
    "EpochAwareLoader",
    "EvalLoader",
    "IclRunnerBase",
    "IclRunnerIter",
    "ResumableDistributedSampler",
    "SkippedMediaCounter",
    "atomic_torch_save",
    "find_latest_checkpoint",
    "load_trainable_state_dict",
    "read_checkpoint",
    "trainable_state_dict",
    "chunk_seed",
    "seed_everything",
]


# ---------------------------------------------------------------------------------------------
# data loading


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


SKIPPED_MEDIA_KEY = "num_skipped_media"


class SkippedMediaCounter:
    """Counts and strips ``batch["num_skipped_media"]`` (set by datasets with ``skip_bad_media``).

    The key never reaches the model or the task; ``total`` is the sum seen so far and ``seen``
    tells whether any batch carried the key.
    """

    def __init__(self):
        self.total = 0
        self.seen = False

    def strip(self, batch):
        if isinstance(batch, dict) and SKIPPED_MEDIA_KEY in batch:
            self.total += int(batch.pop(SKIPPED_MEDIA_KEY))
            self.seen = True
        return batch


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


# ---------------------------------------------------------------------------------------------
# runners


class DeviceAwareRunnerMixin:
    """Overrides shared by :class:`IclRunnerBase` and :class:`IclRunnerIter` (put it first in the bases)."""

    #: key of the training progress in checkpoints: "epoch" or "iters"
    checkpoint_progress_key = "epoch"

    # --- settings ------------------------------------------------------------------------------

    @property
    def device(self):
        if self._device is None:
            self._device = torch.device(_resolve_device(self.config.run_cfg))
        return self._device

    @property
    def use_distributed(self):
        return bool(self.config.run_cfg.get("distributed", False))

    @property
    def evaluate_only(self):
        return bool(self.config.run_cfg.get("evaluate", False))

    @property
    def find_unused_parameters(self):
        return bool(self.config.run_cfg.get("find_unused_parameters", False))

    @property
    def seed(self):
        return int(self.config.run_cfg.get("seed", 0))

    @property
    def output_root(self):
        """``run.output_dir`` as an absolute path; relative means relative to the current directory."""
        return Path(self.config.run_cfg.output_dir).expanduser().absolute()

    @property
    def resume_ckpt_path(self):
        """``run.resume_ckpt_path``; ``auto`` is resolved once, by rank 0, for every rank."""
        if not hasattr(self, "_resume_ckpt_path"):
            path = self.config.run_cfg.get("resume_ckpt_path", None)
            if path == "auto":
                holder = [None]
                if is_main_process():
                    holder[0] = find_latest_checkpoint(self.output_root, readable=True)
                    if holder[0] is None:
                        logging.info(
                            "resume_ckpt_path=auto: no checkpoint under %s/*/, starting fresh.",
                            self.output_root,
                        )
                if dist.is_initialized() and get_world_size() > 1:
                    dist.broadcast_object_list(holder, src=0)
                path = holder[0]
            self._resume_ckpt_path = path
        return self._resume_ckpt_path

    # --- model, optimisation -------------------------------------------------------------------

    @property
    def model(self):
        """The model on ``self.device``, DDP-wrapped when distributed (on CUDA and on CPU)."""
        if self._wrapped_model is None:
            self._model = self._model.to(self.device)
            # DDP refuses a model with nothing to train (e.g. evaluating a frozen model)
            trains = any(param.requires_grad for param in self._model.parameters())
            if self.use_distributed and trains:
                on_cuda = self.device.type == "cuda"
                self._wrapped_model = DDP(
                    self._model,
                    device_ids=[self.config.run_cfg.gpu] if on_cuda else None,
                    find_unused_parameters=self.find_unused_parameters,
                )
            else:
                self._wrapped_model = self._model
        return self._wrapped_model

    @property
    def scaler(self):
        """A GradScaler when ``run.amp`` is on and training runs on CUDA; None otherwise."""
        if self._scaler is None and self.config.run_cfg.get("amp", False):
            if self.cuda_enabled:
                self._scaler = torch.amp.GradScaler("cuda")
            elif not getattr(self, "_warned_amp_on_cpu", False):
                logging.warning("run.amp is ignored on CPU (LAVIS's mixed precision is CUDA-only).")
                self._warned_amp_on_cpu = True
        return self._scaler

    # --- training loop -------------------------------------------------------------------------

    @property
    def best_agg_metric(self):
        return getattr(self, "_best_agg_metric", float("-inf"))

    @property
    def best_progress(self):
        return getattr(self, "_best_progress", None)

    def train(self):
        """LAVIS's train loop (train, validate, checkpoint; then test), for epochs or iterations.

        Unlike LAVIS: the first validation score counts as the best even when it is 0 (so a best
        checkpoint always exists), every epoch (inner epoch) leaves a resumable
        ``checkpoint_<progress>.pth`` (only the latest is kept) that also records the best score,
        and the test phase uses the best checkpoint for both runners.

        Each training chunk (epoch, or inner epoch) starts by seeding Python/NumPy/torch from
        (``run.seed``, rank, chunk start), so a run resumed from a chunk's checkpoint draws the
        same dropout masks, augmentations and demonstrations as an uninterrupted one.
        """
        start_time = time.time()
        self.log_config()
        if not self.evaluate_only and self.resume_ckpt_path is not None:
            self._load_checkpoint(self.resume_ckpt_path)

        for (chunk_start, progress), train_chunk in self._training_chunks():
            if not self.evaluate_only:
                logging.info("Start training")
                seed_everything(chunk_seed(self.seed, get_rank(), chunk_start))
                skipped_before = self._skipped_media_counts()
                stats = train_chunk()
                self._add_skipped_media_stats(
                    stats, skipped_before, self._chunk_name(chunk_start, progress)
                )
                self._loader_states = self._gather_loader_states()
                self.log_stats(split_name="train", stats=stats)
            self._validate(progress)
            if self.evaluate_only:
                break
            self._save_checkpoint(progress)
            dist.barrier()

        self.evaluate(cur_epoch="best" if self.valid_splits else "latest", skip_reload=self.evaluate_only)
        logging.info("Training time %s", datetime.timedelta(seconds=int(time.time() - start_time)))

    def _training_chunks(self):
        """Yield ((progress at the chunk's start, progress after it), function that trains the
        chunk and returns its stats)."""
        raise NotImplementedError

    # --- skipped media (datasets with skip_bad_media) ---------------------------------------------

    def _skipped_media_counts(self):
        counters = [loader.skipped_media for loader in self._train_epoch_loaders()]
        return sum(c.total for c in counters), any(c.seen for c in counters)

    def _add_skipped_media_stats(self, stats, counts_before, where):
        """Sum this chunk's skipped media over ranks; log and record them when a dataset skips."""
        total, seen = self._skipped_media_counts()
        self._log_skipped_media(stats, *self._sum_skipped_media(total - counts_before[0], seen), where)

    @staticmethod
    def _sum_skipped_media(count, seen):
        """(count summed over ranks, whether any rank saw the key); a collective: call on every rank."""
        if dist.is_initialized() and get_world_size() > 1:
            totals = torch.tensor([count, int(seen)], dtype=torch.float64, device=collective_device())
            dist.all_reduce(totals)
            count, seen = int(totals[0].item()), bool(totals[1].item())
        return count, seen

    @staticmethod
    def _log_skipped_media(stats, count, seen, where):
        """When a dataset reported skips: log them and put ``num_skipped_media`` into ``stats``
        (the ``train_``/``<split>_`` entry of log.txt)."""
        if not seen:
            return
        logging.info("skipped %d bad media items in %s", count, where)
        if isinstance(stats, dict):
            stats[SKIPPED_MEDIA_KEY] = count

    # --- resumable data position ------------------------------------------------------------------

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

    def _progress_label(self, progress):
        return progress

    def _chunk_name(self, chunk_start, progress):
        return f"epoch {progress}"

    def _validate(self, progress):
        """Evaluate every valid split; a better ``val`` score writes ``checkpoint_best.pth``."""
        for split_name in self.valid_splits:
            logging.info("Evaluating on %s.", split_name)
            val_log = self.eval_epoch(split_name=split_name, cur_epoch=self._progress_label(progress))
            if val_log is None or not is_main_process():
                continue
            if "agg_metrics" not in val_log:
                raise KeyError(f"The task's log for split {split_name!r} has no 'agg_metrics': {val_log}")
            if split_name == "val" and val_log["agg_metrics"] > self.best_agg_metric:
                self._best_agg_metric, self._best_progress = val_log["agg_metrics"], progress
                self._save_checkpoint(progress, is_best=True)
            val_log[f"best_{self.checkpoint_progress_key}"] = self.best_progress
            self.log_stats(val_log, split_name)

    # --- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def eval_epoch(self, split_name, cur_epoch, skip_reload=False):
        """Evaluate on ``split_name``; as LAVIS's, but batches stay on the runner's device."""
        data_loader = self.dataloaders.get(split_name, None)
        if not data_loader:
            raise KeyError(
                f"No data loader for split {split_name!r}; splits: {sorted(self.dataloaders)}"
            )
        model = self.unwrap_dist_model(self.model)
        if not skip_reload and cur_epoch == "best":
            model = self._reload_best_model(model)
        model.eval()

        self.task.before_evaluation(model=model, dataset=self.datasets[split_name])
        counter = getattr(data_loader, "skipped_media", None) or SkippedMediaCounter()
        skipped_before = counter.total
        results = self.task.evaluation(model, data_loader, cuda_enabled=self.cuda_enabled)
        # every rank takes part in the sum, whatever the task returned on it
        skipped = self._sum_skipped_media(counter.total - skipped_before, counter.seen)
        if results is None:
            return None
        split_log = self.task.after_evaluation(
            val_result=results, split_name=split_name, epoch=cur_epoch
        )
        self._log_skipped_media(split_log, *skipped, f"{split_name} evaluation")
        return split_log

    def evaluate(self, cur_epoch="best", skip_reload=False):
        """LAVIS's test phase, plus its metrics in log.txt as ``<split>_<metric>`` (LAVIS logs val only)."""
        test_logs = super().evaluate(cur_epoch=cur_epoch, skip_reload=skip_reload)
        for split_name, split_log in (test_logs or {}).items():
            if split_log:
                self.log_stats(split_log, split_name)
        return test_logs

    # --- data ----------------------------------------------------------------------------------

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

    # --- output, checkpoints -------------------------------------------------------------------

    def setup_output_dir(self):
        output_dir = self.output_root / self.job_id
        result_dir = output_dir / "result"
        output_dir.mkdir(parents=True, exist_ok=True)
        result_dir.mkdir(parents=True, exist_ok=True)

        registry.register_path("result_dir", str(result_dir))
        registry.register_path("output_dir", str(output_dir))

        self.result_dir = result_dir
        self.output_dir = output_dir

    @main_process
    def _save_checkpoint(self, progress, is_best=False):
        """Save trainable parameters + optimizer/scaler/config/best score at ``progress``.

        ``checkpoint_best.pth`` or ``checkpoint_<progress>.pth``; older ``checkpoint_<n>.pth``
        files of this run are removed once the new one is in place (resume needs the latest only).
        """
        model = self.unwrap_dist_model(self.model)
        save_obj = {
            "model": trainable_state_dict(model),
            "optimizer": self.optimizer.state_dict(),
            "config": self.config.to_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            self.checkpoint_progress_key: progress,
            "best_agg_metric": self.best_agg_metric,
            "best_progress": self.best_progress,
            # per rank, per train loader: {"epoch", "position"} of the next batch
            "loader_states": getattr(self, "_loader_states", None),
            "world_size": get_world_size(),
        }
        save_to = os.path.join(
            self.output_dir, "checkpoint_{}.pth".format("best" if is_best else progress)
        )
        logging.info(
            "Saving checkpoint at %s %s to %s.", self.checkpoint_progress_key, progress, save_to
        )
        remove_stale_temp_files(self.output_dir)
        atomic_torch_save(save_obj, save_to)
        if is_best:
            self._best_checkpoint_path = save_to
        if not is_best:
            for old in glob.glob(os.path.join(self.output_dir, "checkpoint_*.pth")):
                if old != save_to and os.path.basename(old) != "checkpoint_best.pth":
                    os.remove(old)

    def _reload_best_model(self, model):
        """Load this run's best checkpoint into ``model`` (kept as is if there is none).

        That is ``checkpoint_best.pth`` of this run's output dir, or, for a resumed run whose
        validation never beat the score it resumed with, the one next to the resumed checkpoint.
        """
        checkpoint_path = os.path.join(self.output_dir, "checkpoint_best.pth")
        if not os.path.isfile(checkpoint_path):
            checkpoint_path = getattr(self, "_best_checkpoint_path", None) or checkpoint_path
        if not os.path.isfile(checkpoint_path):
            logging.warning(
                "No %s (no validation ran in this run): evaluating the current weights.",
                checkpoint_path,
            )
            return model
        logging.info("Loading checkpoint from %s.", checkpoint_path)
        checkpoint = read_checkpoint(checkpoint_path, map_location="cpu")
        return load_trainable_state_dict(model, checkpoint["model"], source=checkpoint_path)

    def load_model_weights(self, url_or_filename):
        """Load a runner checkpoint's trainable parameters into the model (e.g. before evaluation)."""
        if url_or_filename == "auto":
            url_or_filename = find_latest_checkpoint(self.output_root)
            if url_or_filename is None:
                raise FileNotFoundError(f"No checkpoint_*.pth under {self.output_root}/*/")
        checkpoint = read_checkpoint(url_or_filename, map_location=self.device)
        load_trainable_state_dict(
            self.unwrap_dist_model(self.model), checkpoint["model"], source=url_or_filename
        )
        logging.info("Loaded model weights from %s", url_or_filename)
        return checkpoint

    def _load_checkpoint(self, url_or_filename):
        """Resume: model (checked), optimizer, scaler, the start epoch/iteration and the train
        loaders' data position."""
        checkpoint = self.load_model_weights(url_or_filename)
        if self.checkpoint_progress_key not in checkpoint:
            raise CheckpointError(
                f"Checkpoint {url_or_filename} has no {self.checkpoint_progress_key!r} entry; "
                f"was it written by the other runner type?"
            )
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"Checkpoint {url_or_filename}: its optimizer state does not fit this run's "
                f"optimizer ({err}). Were the trainable parameters or run.weight_decay groups changed?"
            ) from err
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        progress = int(checkpoint[self.checkpoint_progress_key])
        self._restore_progress(progress)
        if checkpoint.get("loader_states") is not None:
            self._restore_loader_states(checkpoint["loader_states"], url_or_filename)
        self._best_agg_metric = checkpoint.get("best_agg_metric", float("-inf"))
        self._best_progress = checkpoint.get("best_progress")
        best_path = os.path.join(os.path.dirname(str(url_or_filename)), "checkpoint_best.pth")
        if self._best_progress is not None and os.path.isfile(best_path):
            self._best_checkpoint_path = best_path
        logging.info("Resume checkpoint from %s", url_or_filename)

    def _restore_progress(self, progress):
        raise NotImplementedError


def pipeline_collater(dataset):
    """The ``collater`` of a webdataset pipeline; LAVIS chains pipelines into a ChainDataset, which
    hides it (torch's default collate would then transpose the demo text lists)."""
    parts = dataset.datasets if isinstance(dataset, ChainDataset) else [dataset]
    collaters = {getattr(part, "collater", None) for part in parts}
    return collaters.pop() if len(collaters) == 1 else None


@registry.register_runner("icl_runner_base")
class IclRunnerBase(DeviceAwareRunnerMixin, RunnerBase):
    """LAVIS's epoch-based runner (``max_epoch``), on CUDA or CPU."""

    checkpoint_progress_key = "epoch"

    def _training_chunks(self):
        for epoch in range(self.start_epoch, self.max_epoch):
            yield (epoch, epoch), lambda epoch=epoch: self.train_epoch(epoch)

    def _restore_progress(self, epoch):
        # the checkpoint was written after `epoch` finished
        self.start_epoch = epoch + 1
        for loader in self._train_epoch_loaders():
            loader.set_epoch(self.start_epoch)


@registry.register_runner("icl_runner_iter")
class IclRunnerIter(DeviceAwareRunnerMixin, RunnerIter):
    """LAVIS's iteration-based runner (``max_iters``, ``iters_per_inner_epoch``), on CUDA or CPU."""

    checkpoint_progress_key = "iters"

    def _training_chunks(self):
        for start_iters in range(self.start_iters, self.max_iters, self.iters_per_inner_epoch):
            end_iters = start_iters + self.iters_per_inner_epoch
            yield (start_iters, end_iters), (
                lambda start_iters=start_iters: self.train_iters(self.cur_epoch, start_iters)
            )

    def _progress_label(self, iters):
        return self._progress(iters)

    def _chunk_name(self, start_iters, end_iters):
        return f"epoch {start_iters // self.iters_per_inner_epoch} (iterations {start_iters}-{end_iters})"

    def _restore_progress(self, iters):
        # the checkpoint was written after `iters` iterations: the next one to run is `iters`
        # (older checkpoints without loader_states: the position of a single train loader)
        self.start_iters = iters
        for loader in self._train_epoch_loaders():
            batches = max(len(loader), 1)
            loader.set_epoch(iters // batches, position=iters % batches)
