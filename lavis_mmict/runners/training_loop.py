"""The runners' train / validate / test loop, shared by the epoch and the iteration runner.

:class:`TrainingLoopMixin` replaces LAVIS's ``train``, ``eval_epoch`` and ``evaluate``: each
training chunk (epoch, or inner epoch) is seeded from (``run.seed``, rank, chunk start), followed
by validation and a resumable checkpoint; the test phase uses the best checkpoint. Batches stay on
the runner's device (CPU too). Both ``train`` and ``evaluate`` first run the media check of the
splits they use (media_check.py). Run config key: ``evaluate`` (default false). An evaluation whose
demonstrations come from the evaluated split itself logs ``<split>_transductive: true``.
"""
import datetime
import logging
import time

import torch
import torch.distributed as dist
from lavis.common.dist_utils import get_rank, is_main_process

from lavis_mmict.datasets.demonstrations import is_transductive
from lavis_mmict.runners.loaders import chunk_seed, seed_everything
from lavis_mmict.runners.skipped_media import SkippedMediaCounter


class TrainingLoopMixin:
    """``train``, ``eval_epoch``, ``evaluate`` of a runner (subclasses say what a training chunk is)."""

    @property
    def evaluate_only(self):
        return bool(self.config.run_cfg.get("evaluate", False))

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
        used = ([] if self.evaluate_only else list(self.train_splits)) + list(self.valid_splits)
        self.check_media(used + list(self.test_splits))
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
        if split_log is not None and is_transductive(self.datasets[split_name]):
            split_log["transductive"] = True  # demos from the evaluated split itself (pool: self)
        return split_log

    def evaluate(self, cur_epoch="best", skip_reload=False):
        """LAVIS's test phase, plus its metrics in log.txt as ``<split>_<metric>`` (LAVIS logs val only)."""
        self.check_media(list(self.test_splits))
        test_logs = super().evaluate(cur_epoch=cur_epoch, skip_reload=skip_reload)
        for split_name, split_log in (test_logs or {}).items():
            if split_log:
                self.log_stats(split_log, split_name)
        return test_logs
