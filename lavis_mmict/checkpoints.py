"""Runner checkpoints: trainable parameters only, written atomically, read with ``weights_only``."""
import glob
import logging
import os
import pickle
import zipfile

import torch
from lavis.common.dist_utils import download_cached_file
from lavis.common.utils import is_url

from lavis_mmict.atomic import atomic_output, temp_pattern


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
    initialisation); any missing trainable parameter, unexpected key or tensor of another shape
    raises :class:`CheckpointError` naming ``source`` and the keys, and leaves the model untouched.
    """
    model_state = model.state_dict()
    missing_trainable = sorted((_trainable_names(model) & set(model_state)) - set(state_dict))
    problems = misfit_problems(state_dict, model_state, missing_trainable, "trainable parameters missing")
    if problems:
        raise CheckpointError(
            f"Checkpoint {source} does not fit the model: " + "; ".join(problems)
            + ". Was it written for a different model configuration?"
        )
    model.load_state_dict(state_dict, strict=False)
    return model


def misfit_problems(state_dict, model_state, missing, missing_what):
    """Why ``state_dict`` does not fit a model whose state is ``model_state``: the ``missing`` keys
    (worded ``missing_what``), keys the model does not have, same names of other sizes (e.g. another
    num_query_token or LLM width). Returns a list of phrases, empty when it fits."""
    unexpected = sorted(set(state_dict) - set(model_state))
    mismatched = [
        f"{key}: checkpoint {_shape(state_dict[key])} vs model {_shape(model_state[key])}"
        for key in sorted(set(state_dict) & set(model_state))
        if _shape(state_dict[key]) != _shape(model_state[key])
    ]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys (not in the model): {short_list(unexpected)}")
    if missing:
        problems.append(f"{missing_what}: {short_list(missing)}")
    if mismatched:
        problems.append(f"shape mismatch: {short_list(mismatched)}")
    return problems


def _shape(value):
    return tuple(value.shape) if torch.is_tensor(value) else type(value).__name__


def short_list(keys, limit=10):
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ... (%d more)' % (len(keys) - limit) if len(keys) > limit else ''}]"


def load_torch_file(path, map_location="cpu", what="Checkpoint"):
    """``torch.load(path, weights_only=True)``; a file that is not a torch checkpoint (truncated,
    a text file, pickled objects) is a :class:`CheckpointError` naming ``path``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"Refusing to load {what.lower()} {path}: it holds objects other than tensors and plain "
            f"containers, which torch.load(weights_only=True) does not execute. ({err})"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
        # a truncated or overwritten file (torch's zip reader fails with a RuntimeError), or not a
        # torch file at all (a text file fails in the legacy reader, e.g. KeyError: 101)
        raise CheckpointError(f"{what} {path} is corrupt or not a torch file "
                              f"({type(err).__name__}: {err})") from err


def read_checkpoint(url_or_filename, map_location="cpu"):
    """Read a runner checkpoint with ``torch.load(weights_only=True)`` (tensors and plain data only)."""
    if is_url(url_or_filename):
        path = download_cached_file(url_or_filename, check_hash=False, progress=True)
    elif os.path.isfile(url_or_filename):
        path = url_or_filename
    else:
        raise FileNotFoundError(f"Checkpoint not found: {url_or_filename}")
    checkpoint = load_torch_file(path, map_location)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not a runner checkpoint (no 'model' entry).")
    return checkpoint


def atomic_torch_save(obj, path):
    """``torch.save`` through :func:`lavis_mmict.atomic.atomic_output`, durable (fsync of the file and
    its folder): ``path`` is either the previous complete file or the new complete one, also after
    a power loss.

    A process killed while saving leaves at most a hidden ``.<name>.<pid>-<token>.tmp`` file (never
    matched by :func:`find_latest_checkpoint`, removed by :func:`remove_stale_temp_files`).
    """
    with atomic_output(path, durable=True) as temporary:
        with open(temporary, "wb") as file:
            torch.save(obj, file)


def remove_stale_temp_files(directory):
    """Remove the temporaries of ``checkpoint_*`` files left in ``directory`` by a process killed
    while saving."""
    for path in glob.glob(os.path.join(os.fspath(directory), temp_pattern("checkpoint_*"))):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def find_latest_checkpoint(output_root, readable=False):
    """The most recently written ``checkpoint_*.pth`` in ``<output_root>/*/``, or None.

    With ``readable=True`` newer files that are not complete torch archives (e.g. copied in half;
    our own writes are atomic) are skipped with a warning: only the zip directory at the end of the
    file is read, not the tensors.
    """
    candidates = glob.glob(os.path.join(os.fspath(output_root), "*", "checkpoint_*.pth"))
    candidates.sort(key=os.path.getmtime, reverse=True)
    for path in candidates:
        if not readable or _is_complete_archive(path):
            return path
        logging.warning("Skipping %s: not a complete torch checkpoint (truncated or corrupt).", path)
    return None


def _is_complete_archive(path):
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
