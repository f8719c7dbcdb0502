"""Runner checkpoints: trainable parameters only, written atomically, read with ``weights_only``."""
import glob
import os
import pickle

import torch
from lavis.common.dist_utils import download_cached_file
from lavis.common.utils import is_url


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read safely or does not fit the model."""


# ---------------------------------------------------------------------------------------------
# checkpoints


def _trainable_names(model):
    return {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}


def trainable_state_dict(model):
    """``model.state_dict()`` restricted to parameters with ``requires_grad`` (no buffers)."""
    trainable = _trainable_names(model)
    return {k: v for k, v in model.state_dict().items() if k in trainable}


def load_trainable_state_dict(model, state_dict, source="<state_dict>"):
    """Load a trainable-parameters checkpoint into ``model``, checked before anything is changed.

    Missing keys are fine only for frozen parameters and buffers (they come from the model's own
    initialisation); any missing trainable parameter or unexpected key raises :class:`CheckpointError`
    naming ``source`` and the keys.
    """
    model_keys = set(model.state_dict().keys())
    ckpt_keys = set(state_dict.keys())
    unexpected = sorted(ckpt_keys - model_keys)
    missing_trainable = sorted((_trainable_names(model) & model_keys) - ckpt_keys)
    if unexpected or missing_trainable:
        problems = []
        if unexpected:
            problems.append(f"unexpected keys (not in the model): {_short_list(unexpected)}")
        if missing_trainable:
            problems.append(f"trainable parameters missing: {_short_list(missing_trainable)}")
        raise CheckpointError(
            f"Checkpoint {source} does not fit the model: " + "; ".join(problems)
            + ". Was it written for a different model configuration?"
        )
    model.load_state_dict(state_dict, strict=False)
    return model


def _short_list(keys, limit=10):
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ... (%d more)' % (len(keys) - limit) if len(keys) > limit else ''}]"


def read_checkpoint(url_or_filename, map_location="cpu"):
    """Read a runner checkpoint with ``torch.load(weights_only=True)`` (tensors and plain data only)."""
    if is_url(url_or_filename):
        path = download_cached_file(url_or_filename, check_hash=False, progress=True)
    elif os.path.isfile(url_or_filename):
        path = url_or_filename
    else:
        raise FileNotFoundError(f"Checkpoint not found: {url_or_filename}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"Refusing to load checkpoint {path}: it holds objects other than tensors and plain "
            f"containers, which torch.load(weights_only=True) does not execute. ({err})"
        ) from err
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not a runner checkpoint (no 'model' entry).")
    return checkpoint


def atomic_torch_save(obj, path):
    """``torch.save`` to a temp file in the same folder, then ``os.replace``: never a partial file."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    tmp_path = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp_path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def find_latest_checkpoint(output_root):
    """The most recently written ``checkpoint_*.pth`` in ``<output_root>/*/``, or None."""
    candidates = glob.glob(os.path.join(os.fspath(output_root), "*", "checkpoint_*.pth"))
    return max(candidates, key=os.path.getmtime) if candidates else None
