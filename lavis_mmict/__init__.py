"""lavis-mmict: MMICT and AIM multi-modal in-context learning for Salesforce LAVIS.

Importing this package registers its models, dataset builders, tasks and runners in
LAVIS's registry, so LAVIS's config system and runner can build them by name.
"""
import os

# LAVIS must be imported first: it sets up the registry paths our modules rely on.
import lavis  # noqa: F401

from lavis_mmict import compat  # noqa: F401  (CPU-safe fixes to LAVIS internals)
from lavis_mmict.data_root import apply_env_data_root
from lavis_mmict import datasets, models, runners, tasks  # noqa: F401

PACKAGE_ROOT = os.path.dirname(os.path.abspath(__file__))


def load_model(name, model_type=None, is_eval=False, device="cpu", checkpoint=None):
    """Build a registered model by name, like ``lavis.models.load_model``.

    ``model_type`` defaults to the model's ``default_model_type`` (``tiny`` for our models, the only
    type that needs no downloaded weights). ``checkpoint`` is a path to a checkpoint written by our
    runners (trainable parameters only) loaded on top of the type's weights; for ``own_finetuned_*``
    types it is the checkpoint they require (their ``model.finetuned``).
    """
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    model_cls = registry.get_model_class(name)
    if model_cls is None:
        known = sorted(registry.mapping["model_name_mapping"])
        raise ValueError(f"Unknown model {name!r}; registered models: {known}")
    model_type = model_type or model_cls.default_model_type
    if model_type not in model_cls.PRETRAINED_MODEL_CONFIG_DICT:
        raise ValueError(f"Unknown model_type {model_type!r} for {name}; valid: "
                         f"{list(model_cls.PRETRAINED_MODEL_CONFIG_DICT)}")
    cfg = OmegaConf.load(model_cls.default_config_path(model_type)).model
    if checkpoint is not None and cfg.get("load_finetuned", False):
        cfg.finetuned, checkpoint = checkpoint, None
    model = model_cls.from_config(cfg)
    if checkpoint is not None:
        model.load_trainable_checkpoint(checkpoint)
    if is_eval:
        model.eval()
    if str(device) == "cpu":
        model = model.float()
    return model.to(device)


def _refresh_lavis_model_zoo():
    """LAVIS builds ``lavis.models.model_zoo`` when it is imported, before our models register;
    refresh it in place so ``print(model_zoo)`` lists them too."""
    import lavis.models

    lavis.models.model_zoo.__init__()


_refresh_lavis_model_zoo()
apply_env_data_root()  # $LAVIS_CACHE_ROOT, when set, is LAVIS's cache_root from now on
