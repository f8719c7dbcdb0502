"""LAVIS BLIP-2 checkpoints (``blip2_opt``/``blip2_t5`` ``.pth`` files) read for our models, strictly.

``aim_opt`` keeps LAVIS's parameter names and loads them as they are (``load_same_names``);
``mmict_blip2`` (one class for OPT and FlanT5, with an M-Hub) maps them to its names
(``map_lavis_keys``) and fits the vocabulary tables (``fit_vocabulary_rows``).

Strict loading (``check_coverage``): after a checkpoint is loaded every parameter and buffer comes
from it or from a named source: the vision encoder's and the LLM's own weights (frozen; built from
``vit_weights`` / ``llm_model``, or randomly by ``vit_init`` / ``llm_init``), the Q-Former's text
branch from ``model.qformer_text_init`` (LAVIS's stage-1 ``blip2_pretrained.pth``; stage-2 files lack
it), the separator, and the buffers the model builds itself (``position_ids``: constants, absent from
our runner's checkpoints, which hold trainable parameters only). Anything else missing, any key the model does not have and any shape that
differs is a :class:`CheckpointError` naming the file and the keys, raised before the model changes.
"""
import logging
import re

import torch

from lavis_mmict import backbones
from lavis_mmict.checkpoints import CheckpointError, load_torch_file, misfit_problems, short_list

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
# The Q-Former's text branch (names after "Qformer."): what BLIP-2's stage 2 deletes and the
# M-Hub reads text with; LAVIS's stage-1 checkpoint blip2_pretrained.pth has it.
QFORMER_TEXT_BRANCH = re.compile(
    r"bert\.embeddings\.(word|position)_embeddings\.weight"
    r"|bert\.encoder\.layer\.\d+\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)"
)
STAGE1_URL = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/blip2_pretrained.pth"


def read_state_dict(url_or_path, description, config_key):
    """The state dict of a checkpoint (its ``model`` entry if it has one) -> (local path, state dict).

    ``description`` and ``config_key`` (``pretrained``/``finetuned``) word the errors: a missing
    file is a MissingWeightsError, a file that is not a torch state dict a CheckpointError.
    """
    path = backbones.resolve_weights_file(url_or_path, description, config_key)
    checkpoint = load_torch_file(path, what=f"{description} (model.{config_key})")
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError(f"{description} {path} (model.{config_key}) is not a state dict of tensors")
    return path, state_dict


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


def own_buffers_source(model):
    """``check_coverage`` source: the model's buffers (constants it builds, e.g. ``position_ids``),
    which runner checkpoints (trainable parameters only) do not hold."""
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    buffers = {name for name, _ in model.named_buffers()} - parameters
    return {"the model's own buffers": lambda key: key in buffers}


def check_coverage(path, config_key, state_dict, own_state, sources):
    """Raise CheckpointError unless ``state_dict`` fits the model: no unknown key, no other shape, and
    every model key it lacks is accounted for by ``sources`` ({source name: predicate on a key}).

    Returns {source name: number of keys it accounts for} (logged by the callers).
    """
    counts = {"checkpoint": len(set(state_dict) & set(own_state))}
    unaccounted = []
    for key in sorted(set(own_state) - set(state_dict)):
        source = next((name for name, covers in sources.items() if covers(key)), None)
        if source is None:
            unaccounted.append(key)
        else:
            counts[source] = counts.get(source, 0) + 1
    problems = misfit_problems(state_dict, own_state, unaccounted, "parameters it lacks and nothing else provides")
    if problems:
        hint = ""
        if any(QFORMER_TEXT_BRANCH.fullmatch(k.split("Qformer.", 1)[-1]) for k in unaccounted):
            hint = (" The Q-Former's text branch comes from LAVIS's stage-1 checkpoint: set "
                    f"model.qformer_text_init to blip2_pretrained.pth ({STAGE1_URL}).")
        raise CheckpointError(f"Checkpoint {path} (model.{config_key}) does not fit the model: "
                              + "; ".join(problems) + "." + hint)
    return counts


def read_qformer_text_branch(url_or_path, qformer_prefix, own_state):
    """The Q-Former text branch of LAVIS's stage-1 checkpoint, as this model's keys.

    qformer_prefix: where the model keeps its Q-Former (``mhub.Qformer.``). Every text-branch key
    of the model must be in the file (a CheckpointError naming it and the keys otherwise); the
    word-embedding table is fitted to ours (stage 1 adds a [DEC] row to bert-base-uncased's).
    Returns (path, {model key: tensor}).
    """
    path, state_dict = read_state_dict(url_or_path, "Q-Former text-branch checkpoint", "qformer_text_init")
    wanted = [k for k in own_state if k.startswith(qformer_prefix)
              and QFORMER_TEXT_BRANCH.fullmatch(k[len(qformer_prefix):])]
    found = {k: state_dict["Qformer." + k[len(qformer_prefix):]] for k in wanted
             if "Qformer." + k[len(qformer_prefix):] in state_dict}
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise CheckpointError(f"{path} (model.qformer_text_init) lacks the Q-Former text branch "
                              f"{short_list(missing)}; it must be LAVIS's stage-1 blip2_pretrained.pth")
    found = fit_vocabulary_rows(found, own_state)
    check_coverage(path, "qformer_text_init", found, own_state, {"rest of the model": lambda key: True})
    return path, found


def load_same_names(model, url_or_path, description, config_key, skip=lambda key: False, sources=None):
    """Load, strictly, a checkpoint whose names are the model's, except the names ``skip(name)`` is true for
    (they are neither read nor required); vocabulary tables are fitted. ``sources`` (see
    ``check_coverage``) names where the keys the file lacks come from. Returns the set of names loaded.
    """
    path, state_dict = read_state_dict(url_or_path, description, config_key)
    own = model.state_dict()
    usable = fit_vocabulary_rows({k: v for k, v in state_dict.items() if not skip(k)}, own)
    sources = dict(sources or {}, **own_buffers_source(model),
                   **{"the model's own parameters (skipped)": skip})
    counts = check_coverage(path, config_key, usable, own, sources)
    model.load_state_dict(usable, strict=False)
    logging.info("loaded %s: %s", path, counts)
    return set(usable)
