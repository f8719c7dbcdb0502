"""The data root: the folder relative dataset paths (``build_info`` ``storage``) are read from.

It is LAVIS's own ``cache_root`` (``env.cache_root`` in ``lavis/configs/default.yaml``, registered
as the registry path ``cache_root``; ``/export/home/.cache/lavis`` in LAVIS 1.0.2), so LAVIS's
builders, its annotation downloader and ``lavis.common.utils.get_cache_path`` agree with ours.
Where it comes from, first found wins:

1. ``env.cache_root`` in the experiment config (the YAML, or ``--options env.cache_root=...``):
   the key LAVIS's ``default.yaml`` uses;
2. the environment variable ``$LAVIS_CACHE_ROOT`` (read when ``lavis_mmict`` is imported and by
   ``train.py``/``evaluate.py``; LAVIS alone does not read it);
3. LAVIS's default.

A relative root is relative to the current directory. :func:`apply_config_data_root` (train.py,
evaluate.py) and the import of ``lavis_mmict`` (the variable only) re-register ``cache_root``.
"""
import logging
import os

from lavis.common.registry import registry
from omegaconf import OmegaConf

from lavis_mmict.errors import ConfigError

DATA_ROOT_ENV = "LAVIS_CACHE_ROOT"
CONFIG_KEY = "env.cache_root"
LAVIS_DEFAULT_SOURCE = "LAVIS's default cache_root (lavis/configs/default.yaml)"

#: where the registered cache_root came from (for error messages); LAVIS's default until set
_source = {"root": None, "text": LAVIS_DEFAULT_SOURCE}


class DataFileNotFoundError(ConfigError, FileNotFoundError):
    """A dataset file or folder is missing; the message names it and the root it resolved against."""


def data_root() -> str:
    """The absolute data root now in use (LAVIS's registered ``cache_root``)."""
    return registry.get_path("cache_root")


def data_root_source() -> str:
    """Where :func:`data_root` came from, e.g. ``"$LAVIS_CACHE_ROOT"``."""
    return _source["text"] if _source["root"] == data_root() else LAVIS_DEFAULT_SOURCE


def use_data_root(path: str, source: str) -> str:
    """Register ``path`` (made absolute against the current directory) as LAVIS's ``cache_root``."""
    root = os.path.abspath(os.path.expanduser(str(path)))
    registry.mapping["paths"]["cache_root"] = root  # register_path refuses to replace a path
    _source.update(root=root, text=source)
    return root


def apply_env_data_root() -> None:
    """``$LAVIS_CACHE_ROOT``, when set, becomes the data root (run when ``lavis_mmict`` is imported)."""
    value = os.environ.get(DATA_ROOT_ENV)
    if value:
        use_data_root(value, f"${DATA_ROOT_ENV}")


def config_data_root(cfg_path: str, merged_config=None):
    """``env.cache_root`` from ``--options`` (in LAVIS's merged config) or else the YAML file; None if unset.

    LAVIS's ``Config`` keeps only ``run``/``model``/``datasets`` of the YAML, so the file is read here.
    """
    for config in (merged_config, OmegaConf.load(cfg_path) if cfg_path else None):
        value = OmegaConf.select(config, CONFIG_KEY) if config is not None else None
        if value:
            return str(value)
    return None


def apply_config_data_root(cfg) -> str:
    """Set the data root of a run from its LAVIS ``Config`` (``env.cache_root``, else
    ``$LAVIS_CACHE_ROOT``, else LAVIS's default) and log it; returns it."""
    value = config_data_root(getattr(cfg.args, "cfg_path", None), cfg.config)
    if value:
        use_data_root(value, f"{CONFIG_KEY} in the config")
    else:
        apply_env_data_root()
    logging.info("Data root (relative dataset paths): %s, from %s", data_root(), data_root_source())
    return data_root()


def describe_data_root() -> str:
    """``"the data root /x (from $LAVIS_CACHE_ROOT; ...)"``: what a relative path was resolved against."""
    return (f"the data root {data_root()} (from {data_root_source()}; set it with {CONFIG_KEY} "
            f"in the config or ${DATA_ROOT_ENV}, see docs/data.md)")
