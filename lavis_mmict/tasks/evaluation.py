"""What every evaluation task shares: a progress line with ETA, gathering the ranks' predictions
(each id exactly once), the merged result file and a readable metrics table.

``ICLEvalTask`` subclasses LAVIS's ``BaseTask``; the runner's call sequence is unchanged:
``before_evaluation(model, dataset)`` -> ``evaluation(model, loader)`` -> ``after_evaluation(...)``.

Run config key read here: ``eval_log_freq`` (batches between two progress lines; default 10, as
LAVIS's evaluation loop).
"""
import json
import logging
import os

import torch
import torch.distributed as dist
from lavis.common.dist_utils import get_rank, get_world_size, is_dist_avail_and_initialized, is_main_process
from lavis.common.logger import MetricLogger
from lavis.datasets.data_utils import prepare_sample
from lavis.tasks.base_task import BaseTask

from lavis_mmict.atomic import write_json_atomic
from lavis_mmict.errors import ConfigError, DataError

__all__ = [
    "ICLEvalTask",
    "check_validation_labelled",
    "format_metrics_table",
    "gather_to_main",
    "plain",
    "unique_by_key",
]

DEFAULT_EVAL_LOG_FREQ = 10


def plain(value):
    """A JSON-friendly version of a batch entry (tensors become Python numbers or lists)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def _hashable(value):
    """An id usable as a set member (json lists become tuples)."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def unique_by_key(records, key):
    """``records`` without repeats of ``record[key]`` (first one kept, order kept); linear time.

    (LAVIS's ``save_result`` tests membership in a list: quadratic, minutes for 100k results.)
    """
    seen = set()
    unique = []
    for record in records:
        if key not in record:
            raise KeyError(f"Result record has no {key!r} field: {record}")
        ident = _hashable(record[key])
        if ident not in seen:
            seen.add(ident)
            unique.append(record)
    return unique


def gather_to_main(records):
    """Concatenate every rank's list of records on the main process (rank order); None elsewhere.

    Works with shards of different lengths and with any backend (object collectives), without a
    shared file system.
    """
    if not is_dist_avail_and_initialized() or get_world_size() == 1:
        return list(records)
    gathered = [None] * get_world_size() if get_rank() == 0 else None
    dist.gather_object(list(records), gathered, dst=0)
    if get_rank() != 0:
        return None
    return [record for rank_records in gathered for record in rank_records]


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def format_metrics_table(title, metrics):
    """A small markdown table of ``metrics`` (one row per metric), headed by ``title``."""
    width = max([len("metric")] + [len(str(name)) for name in metrics])
    lines = [title, f"| {'metric'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    for name, value in metrics.items():
        lines.append(f"| {str(name).ljust(width)} | {_number(value)} |")
    return "\n".join(lines)


def _has_length(iterable):
    try:
        len(iterable)
    except TypeError:
        return False
    return True


def check_validation_labelled(run_cfg, datasets):
    """A training run's ``run.valid_splits`` have ground truth: an unlabelled split would score 0
    every epoch, so the best checkpoint would stay the first one. DataError naming the split.
    (train.py calls it; evaluate.py evaluates ``run.test_splits`` only.)"""
    if run_cfg.get("evaluate", False) or not run_cfg.get("train_splits"):
        return
    for split in run_cfg.get("valid_splits", []) or []:
        for name, splits in datasets.items():
            if split in splits and not getattr(splits[split], "labelled", True):
                raise DataError(
                    f"datasets.{name} split '{split}' has no answers (an unlabelled split) but is in "
                    f"run.valid_splits of a training run: validation would score 0 and keep the "
                    f"epoch-0 weights as best. Validate on a labelled split, or evaluate it with "
                    f"evaluate.py (run.test_splits)."
                )


class ICLEvalTask(BaseTask):
    """Base of ``icl_vqa`` and ``icl_captioning``; subclasses implement ``valid_step`` and
    ``score(results, split_name)`` (main process only) and set ``result_id_key``."""

    #: field identifying one prediction; each value is kept exactly once in the merged results
    result_id_key = "question_id"

    def __init__(self, eval_log_freq=DEFAULT_EVAL_LOG_FREQ):
        super().__init__()
        self.eval_log_freq = max(1, int(eval_log_freq))
        self.eval_dataset = None

    def build_model(self, cfg):
        """LAVIS's build_model, then ``demonstrations.max_prefix_tokens`` (one value across the
        datasets) handed to the model, which drops the farthest demos to fit it."""
        model = super().build_model(cfg)
        limits = {(d.get("demonstrations") or {}).get("max_prefix_tokens") for d in cfg.datasets_cfg.values()}
        limits.discard(None)
        if len(limits) > 1 or any(not isinstance(v, int) or v < 1 for v in limits):
            raise ConfigError(f"demonstrations.max_prefix_tokens must be one positive integer for all "
                              f"datasets, got {sorted(limits)}")
        if limits and hasattr(model, "max_prefix_tokens"):
            model.max_prefix_tokens = limits.pop()
        return model

    def before_evaluation(self, model, dataset, **kwargs):
        """Remember the split's dataset (its name for progress lines; ground truth for captions),
        then LAVIS's hook (``model.before_evaluation``)."""
        self.eval_dataset = dataset
        if model is not None:
            super().before_evaluation(model, dataset, **kwargs)

    @torch.no_grad()
    def evaluation(self, model, data_loader, cuda_enabled=True):
        """Predict every batch of this rank's shard, printing progress with an ETA (rank 0)."""
        name = getattr(self.eval_dataset, "name", None) or "Evaluation"
        header = f"Evaluation {name}:"
        results = []
        if _has_length(data_loader):
            batches = MetricLogger(delimiter="  ").log_every(data_loader, self.eval_log_freq, header)
        else:  # webdataset pipelines have no length: no ETA possible
            logging.info("%s no length known: no progress line", header)
            batches = data_loader
        for samples in batches:
            samples = prepare_sample(samples, cuda_enabled=cuda_enabled)
            results.extend(self.valid_step(model=model, samples=samples))
        if is_dist_avail_and_initialized():
            dist.barrier()
        return results

    @staticmethod
    def save_result(result, result_dir, filename, remove_duplicate=""):
        """Gather all ranks' results, keep each ``remove_duplicate`` id once, write
        ``<result_dir>/<filename>.json`` from the main process; every rank gets its path.

        Same signature and file as LAVIS's ``BaseTask.save_result``, but no per-rank files and a
        linear-time de-duplication. ``DistributedSampler`` pads uneven shards with repeats of
        the first items; those repeats are what the de-duplication removes.
        """
        final_result_file = os.path.join(result_dir, f"{filename}.json")
        merged = gather_to_main(result)
        if merged is not None:
            if remove_duplicate:
                merged = unique_by_key(merged, remove_duplicate)
            write_json_atomic(final_result_file, merged)
            logging.info("%d results saved to %s", len(merged), final_result_file)
        if is_dist_avail_and_initialized():
            dist.barrier()  # the file exists before any rank returns its path
        return final_result_file

    def after_evaluation(self, val_result, split_name, epoch=None, **kwargs):
        """Merge, score (main process), log a table and append to ``evaluate.txt``; None elsewhere."""
        from lavis.common.registry import registry

        result_file = self.save_result(
            val_result,
            result_dir=registry.get_path("result_dir"),
            filename=f"{split_name}_epoch{epoch}",
            remove_duplicate=self.result_id_key,
        )
        if not is_main_process():
            return None
        with open(result_file) as f:
            results = json.load(f)
        metrics = self.score(results, split_name)
        logging.info("\n%s", format_metrics_table(f"{split_name} (epoch {epoch})", metrics))
        with open(os.path.join(registry.get_path("output_dir"), "evaluate.txt"), "a") as f:
            f.write(json.dumps({split_name: metrics}) + "\n")
        return metrics

    def score(self, results, split_name):
        """Metrics of the merged, de-duplicated ``results``; must include ``agg_metrics``."""
        raise NotImplementedError
