"""Checkpoint save, resume and reload-best for the runners (files through ``lavis_mmict.checkpoints``).

A checkpoint holds the trainable parameters, optimizer, scaler, config, progress (``epoch`` or
``iters``), best score and every rank's train loader positions; it is written atomically and only
the latest ``checkpoint_<progress>.pth`` (plus ``checkpoint_best.pth``) is kept. Resume restores
all of it, so a resumed run ends as an uninterrupted one would (see
``docs/lavis-1.0.2-runner-notes.md``). Run config keys: ``output_dir`` (relative to the current
directory), ``resume_ckpt_path`` (path, URL or ``auto``).
"""
import glob
import logging
import os
from pathlib import Path

import torch.distributed as dist
from lavis.common.dist_utils import get_world_size, is_main_process, main_process
from lavis.common.registry import registry

from lavis_mmict.checkpoints import (
    CheckpointError,
    atomic_torch_save,
    find_latest_checkpoint,
    load_trainable_state_dict,
    read_checkpoint,
    remove_stale_temp_files,
    trainable_state_dict,
)


class CheckpointingMixin:
    """Output dir, checkpoint writing, resuming and the best checkpoint of a runner.

    Subclasses set :attr:`checkpoint_progress_key` and implement :meth:`_restore_progress`.
    """

    #: key of the training progress in checkpoints: "epoch" or "iters"
    checkpoint_progress_key = "epoch"

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

    @property
    def best_agg_metric(self):
        return getattr(self, "_best_agg_metric", float("-inf"))

    @property
    def best_progress(self):
        return getattr(self, "_best_progress", None)

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
