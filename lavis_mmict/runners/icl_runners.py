"""The registered runners ``icl_runner_base`` (epochs) and ``icl_runner_iter`` (iterations).

- ``icl_runner_base``: subclass of ``lavis.runners.runner_base.RunnerBase`` (``max_epoch``).
- ``icl_runner_iter``: subclass of ``lavis.runners.runner_iter.RunnerIter`` (``max_iters``,
  ``iters_per_inner_epoch``; use it for webdataset pipelines, which have no ``len()``).

Both put :class:`IclRunnerMixin` first in their bases, so its methods override LAVIS's; on CUDA
they behave like LAVIS's runners, on CPU they run too (``docs/lavis-1.0.2-runner-notes.md``).
"""
import lavis.common.optims  # noqa: F401  (registers LAVIS's lr schedulers, as its train.py does)
from lavis.common.registry import registry
from lavis.runners.runner_base import RunnerBase
from lavis.runners.runner_iter import RunnerIter

from lavis_mmict.runners.checkpointing import CheckpointingMixin
from lavis_mmict.runners.device import DeviceSetupMixin
from lavis_mmict.runners.loaders import RunnerLoadersMixin
from lavis_mmict.runners.media_check import MediaCheckMixin
from lavis_mmict.runners.skipped_media import SkippedMediaStatsMixin
from lavis_mmict.runners.training_loop import TrainingLoopMixin


class IclRunnerMixin(
    TrainingLoopMixin, CheckpointingMixin, RunnerLoadersMixin, SkippedMediaStatsMixin, MediaCheckMixin,
    DeviceSetupMixin,
):
    """Everything both runners override in LAVIS's runners (put it first in the bases)."""


@registry.register_runner("icl_runner_base")
class IclRunnerBase(IclRunnerMixin, RunnerBase):
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
class IclRunnerIter(IclRunnerMixin, RunnerIter):
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
