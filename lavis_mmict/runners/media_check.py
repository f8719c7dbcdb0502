"""The media check before training (``run.check_media``, default true).

Before the first batch, every used split's and demo pool's media files (datasets that name their
files with ``media_path``) are probed once each with
:func:`~lavis_mmict.datasets.media.probe_media` (container and first frame, not the whole clip).
The distinct files are shared out over the ranks and, on each rank, over ``run.num_workers``
DataLoader workers, with a progress bar on rank 0; the bad files of all ranks are gathered, so
every rank knows all of them. Then:

- a bad file read by a dataset without ``skip_bad_media`` stops the run with one ``MediaError``
  listing every such file (split, record, reason naming the path);
- with ``skip_bad_media`` the records using bad files are excluded up front
  (:meth:`ICLDataset.exclude_bad_media`) and counted: logged, and ``media_check_*`` in log.txt.

Either way rank 0 writes all bad files to ``<output_dir>/<job_id>/media_check.json``.
"""
import logging
import os
import time

import torch.distributed as dist
from lavis.common.dist_utils import get_rank

from lavis_mmict.atomic import write_json_atomic
from lavis_mmict.datasets.media import MediaError, probe_media
from lavis_mmict.datasets.records import _identity as record_identity
from lavis_mmict.datasets.sharded_media import rank_and_world, shard_results

# Files per probe batch handed to a DataLoader worker, and bad files listed in the error message.
PROBE_BATCH = 8
MAX_LISTED = 20


class _ProbeReason:
    """File i of ``files`` -> None when it reads, else the reason (a MediaError message naming the path)."""

    def __init__(self, files):
        self.files = files  # [(path, is_video)]

    def __call__(self, index):
        path, is_video = self.files[index]
        try:
            probe_media(path, is_video)
        except MediaError as error:
            return str(error)
        return None


def probe_files(files, num_workers=0, progress=True):
    """``{index in files: reason}`` of the unreadable ones among ``files`` ([(path, is_video)]);
    this rank probes every world-size-th file, the results of all ranks are gathered (a collective:
    call on every rank with the same ``files``)."""
    bad = {index: reason
           for batch in shard_results(len(files), _ProbeReason(files), PROBE_BATCH, num_workers, "media check",
                                      unit="file", progress=progress)
           for index, reason in batch if reason is not None}
    _, world = rank_and_world()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, bad)
        bad = {index: reason for part in gathered for index, reason in part.items()}
    return bad


def _split_datasets(datasets):
    """(split, dataset) pairs of a runner's datasets, before ({name: {split: d}}) or after LAVIS
    regrouped them by split (concatenations and tuples opened)."""
    for key, value in datasets.items():
        parts = value.items() if isinstance(value, dict) else [(key, value)]
        for split, dataset in parts:
            stack = [dataset]
            while stack:
                item = stack.pop()
                if isinstance(item, (list, tuple)) or hasattr(item, "cumulative_sizes"):
                    stack.extend(item.datasets if hasattr(item, "cumulative_sizes") else item)
                else:
                    yield split, item


class MediaCheckMixin:
    """A runner's :meth:`check_media` (train and evaluate call it before their first batch)."""

    def check_media(self, split_names):
        """Probe the media of the datasets of ``split_names`` not checked yet; raise MediaError for
        bad files of datasets without ``skip_bad_media``, exclude (and count) the others'."""
        if not bool(self.config.run_cfg.get("check_media", True)):
            return
        checked = self.__dict__.setdefault("_media_checked_splits", set())
        wrappers = [d for split, d in _split_datasets(self.datasets)
                    if split in split_names and split not in checked and hasattr(d, "media_records")]
        checked.update(split_names)
        files, users, readers = _media_files(wrappers)
        if not files:
            return
        start = time.time()
        bad = probe_files(files, int(self.config.run_cfg.get("num_workers", 0)))
        logging.info("media check: %d files of splits %s probed in %.1f s, %d unreadable",
                     len(files), sorted(set(split_names)), time.time() - start, len(bad))
        if not bad:
            return
        reports = [_describe(files[i][0], users[i], reason) for i, reason in sorted(bad.items())]
        self._write_media_report(reports)
        strict = {id(dataset) for wrapper, dataset in readers if not wrapper.skip_bad_media}
        fatal = [report for index, report in zip(sorted(bad), reports)
                 if any(id(dataset) in strict for dataset, _ in users[index])]
        if fatal:
            lines = [f"  {r['where']}: {r['reason']}" for r in fatal[:MAX_LISTED]]
            if len(fatal) > MAX_LISTED:
                lines.append(f"  ... and {len(fatal) - MAX_LISTED} more (all in "
                             f"{os.path.join(self.output_dir, 'media_check.json')})")
            raise MediaError(
                f"media check: {len(fatal)} unreadable media file(s), before training; fix or remove "
                f"them, set skip_bad_media: true on the dataset to skip them, or run.check_media: "
                f"false to skip this check:\n" + "\n".join(lines))
        bad_paths = {files[i][0] for i in bad}
        excluded = 0
        for wrapper in {id(w): w for w in wrappers}.values():
            counts = wrapper.exclude_bad_media(bad_paths)
            excluded += counts["queries"]
            logging.warning("media check: %s: skip_bad_media excludes %d queries; %d demo pool records "
                            "are never read", wrapper.name, counts["queries"], counts["pool_records"])
        self.log_stats({"num_bad_files": len(bad), "num_excluded_queries": excluded}, "media_check")

    def _write_media_report(self, reports):
        if get_rank() == 0:
            write_json_atomic(os.path.join(self.output_dir, "media_check.json"), reports, indent=1)


def _media_files(wrappers):
    """The distinct media files the ICLDatasets ``wrappers`` read (queries and pools), each once:
    ``files`` [(path, is_video)], ``users`` (per file: [(dataset, record index)]) and ``readers``
    [(wrapper, dataset it reads)]."""
    index_of, users, readers, seen = {}, [], [], set()
    for wrapper in wrappers:
        for dataset, is_video in wrapper.media_records():
            readers.append((wrapper, dataset))
            if id(dataset) in seen:
                continue
            seen.add(id(dataset))
            for index in range(len(dataset.annotation)):
                key = (dataset.media_path(index), is_video)
                if key not in index_of:
                    index_of[key] = len(users)
                    users.append([])
                users[index_of[key]].append((dataset, index))
    return list(index_of), users, readers


def _describe(path, users, reason):
    """{"path", "where" (first record per dataset, + how many more), "reason"} of one bad file."""
    first = {}
    for dataset, index in users:
        first.setdefault(id(dataset), [dataset, index, 0])[2] += 1
    where = "; ".join(
        f"{getattr(dataset, 'name', type(dataset).__name__)} record {index} "
        f"({record_identity(dataset.annotation[index])})" + (f" and {count - 1} more" if count > 1 else "")
        for dataset, index, count in first.values())
    return {"path": path, "where": where, "reason": reason}
