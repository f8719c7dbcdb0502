"""Counting the media that datasets with ``skip_bad_media`` dropped, per epoch and over ranks.

The collater reports them as ``batch[SKIPPED_MEDIA_KEY]``; the runner's loaders strip that entry
(:class:`SkippedMediaCounter`) before a batch reaches the model or the task, and
:class:`SkippedMediaStatsMixin` sums the counts over ranks, logs ``skipped N bad media items in
<where>`` and records ``num_skipped_media`` in the epoch's stats (``train_num_skipped_media`` /
``<split>_num_skipped_media`` in log.txt).
"""
import logging

import torch
import torch.distributed as dist
from lavis.common.dist_utils import get_world_size

from lavis_mmict.compat import collective_device
from lavis_mmict.datasets.icl_dataset import SKIPPED_MEDIA_KEY


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


class SkippedMediaStatsMixin:
    """Sums, logs and records a runner's skipped media (needs ``_train_epoch_loaders``)."""

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
