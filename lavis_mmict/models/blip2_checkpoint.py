"""LAVIS BLIP-2 checkpoints (``blip2_opt``/``blip2_t5`` ``.pth`` files) read for our models.

``aim_opt`` keeps LAVIS's parameter names and loads them as they are (``load_same_names``);
``mmict_blip2`` (one class for OPT and FlanT5, with an M-Hub) maps them to its names
(``map_lavis_keys``) and fits the vocabulary tables (``fit_vocabulary_rows``).
"""
import logging

import torch

from lavis_mmict import backbones

# LAVIS BLIP-2 checkpoint key prefixes -> ours (one model class serves OPT and T5).
LAVIS_KEY_PREFIXES = {
    "Qformer.": "mhub.Qformer.",
    "query_tokens": "mhub.query_tokens",
    "opt_proj.": "llm_proj.",
    "opt_model.": "llm_model.",
    "t5_proj.": "llm_proj.",
    "t5_model.": "llm_model.",
}
# Vocabulary tables: a checkpoint may have fewer rows than ours (we add the separator token).
VOCABULARY_TABLES = ("embed_tokens.weight", "lm_head.weight", "shared.weight", "word_embeddings.weight")


def read_state_dict(url_or_path, description, config_key):
    """The state dict of a checkpoint (its ``model`` entry if it has one) -> (local path, state dict).

    ``description`` and ``config_key`` (``pretrained``/``finetuned``) word the error of a missing file.
    """
    path = backbones.resolve_weights_file(url_or_path, description, config_key)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return path, checkpoint.get("model", checkpoint)


def map_lavis_keys(state_dict):
    """Rename a LAVIS BLIP-2 state dict's keys to this model's names."""
    mapped = {}
    for key, value in state_dict.items():
        for old, new in LAVIS_KEY_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        mapped[key] = value
    return mapped


def fit_vocabulary_rows(state_dict, own_state):
    """Vocabulary tables whose row count differs from ours (tokens added on either side): take the
    checkpoint's rows where both have them and keep ours for the rest (e.g. the separator)."""
    fitted = dict(state_dict)
    for key, value in state_dict.items():
        own = own_state.get(key)
        if (own is not None and key.endswith(VOCABULARY_TABLES) and value.dim() == 2
                and own.shape != value.shape and own.shape[1] == value.shape[1]):
            rows = min(own.shape[0], value.shape[0])
            merged = own.detach().clone()
            merged[:rows] = value[:rows].to(merged.dtype)
            fitted[key] = merged
    return fitted


def load_same_names(model, url_or_path, description, config_key, skip=()):
    """Load, non-strict, the checkpoint's tensors that ``model`` has under the same name, except
    the names in ``skip``; their shapes must match. Returns the set of names loaded."""
    path, state_dict = read_state_dict(url_or_path, description, config_key)
    own = model.state_dict()
    usable = {k: v for k, v in state_dict.items() if k in own and k not in skip}
    mismatched = sorted(k for k, v in usable.items() if tuple(v.shape) != tuple(own[k].shape))
    if mismatched:
        raise ValueError(f"{path} (model.{config_key}): shapes differ from the model for {mismatched[:5]}")
    model.load_state_dict(usable, strict=False)
    logging.info("loaded %d tensors from %s; %d not in the model were skipped",
                 len(usable), path, len(state_dict) - len(usable))
    return set(usable)
