"""Check the registry names an experiment config uses before LAVIS builds anything.

LAVIS itself fails on a wrong name late and obscurely (``'NoneType' object has no attribute ...``
or a bare assertion). :func:`check_config_names` reads the config file plus its ``--options`` and
checks ``model.arch``, ``model.model_type``, the keys under ``datasets:`` and their ``type``,
``run.task`` and ``run.runner`` against LAVIS's registry; a wrong one is a :class:`ConfigError`
that names the file, the key and the valid values.
"""
import os

from lavis.common.registry import registry
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lavis_mmict.errors import ConfigError

#: the runner a config gets when it sets no ``run.runner``
DEFAULT_RUNNER = "icl_runner_base"


def _dot_list(options):
    """``--options`` as LAVIS takes them: ``k=v ...`` or ``k v ...`` pairs."""
    options = list(options or [])
    if options and "=" not in options[0]:
        options = [f"{k}={v}" for k, v in zip(options[0::2], options[1::2])]
    return options


def _registered(kind):
    return sorted(registry.mapping[kind])


def check_config_names(cfg_path, options=None):
    """Check the names ``cfg_path`` uses, with ``options`` (``--options``: ``k=v ...`` or
    ``k v ...``) applied. Raises :class:`ConfigError` naming the file, the key and the valid values."""
    if not os.path.isfile(cfg_path):
        raise ConfigError(f"Config file not found: {cfg_path}")
    try:
        file_config = OmegaConf.load(cfg_path)
        config = OmegaConf.merge(file_config, OmegaConf.from_dotlist(_dot_list(options)))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"Cannot read config {cfg_path} with --options {options}: {err}") from err
    where = f"Config {cfg_path}"

    for section in ("model", "datasets", "run"):
        if not OmegaConf.is_dict(config.get(section, None)) or len(config[section]) == 0:
            raise ConfigError(f"{where}: the '{section}:' section is missing or empty.")

    model_classes = registry.mapping["model_name_mapping"]
    arch = config.model.get("arch", None)
    if arch not in model_classes:
        raise ConfigError(
            f"{where}: unknown model.arch {arch!r}; registered models: {_registered('model_name_mapping')}"
        )
    if file_config.model.get("arch", None) != arch:
        raise ConfigError(
            f"{where}: model.arch cannot be changed with --options (LAVIS reads the model's default "
            f"config from the file's model.arch {file_config.model.get('arch', None)!r}); edit the file."
        )
    model_type = config.model.get("model_type", None)
    model_types = sorted(getattr(model_classes[arch], "PRETRAINED_MODEL_CONFIG_DICT", {}))
    if model_type not in model_types:
        raise ConfigError(
            f"{where}: unknown model.model_type {model_type!r} for model {arch!r}; valid: {model_types}"
        )

    builders = registry.mapping["builder_name_mapping"]
    for name in config.datasets:
        if name not in builders:
            icl_builders = [b for b in _registered("builder_name_mapping") if b.endswith("_icl")]
            raise ConfigError(
                f"{where}: unknown dataset builder datasets.{name}; registered in-context builders "
                f"(*_icl): {icl_builders}. LAVIS's own builders are accepted too; builders of your "
                f"own plugin need LAVIS_MMICT_EXTRA_IMPORTS=<module>."
            )
        dataset_cfg = config.datasets[name]
        config_type = dataset_cfg.get("type", "default") if dataset_cfg is not None else "default"
        config_types = sorted(getattr(builders[name], "DATASET_CONFIG_DICT", {}))
        if config_type not in config_types:
            raise ConfigError(
                f"{where}: unknown datasets.{name}.type {config_type!r}; valid: {config_types}"
            )

    task = config.run.get("task", None)
    if task not in registry.mapping["task_name_mapping"]:
        raise ConfigError(
            f"{where}: unknown run.task {task!r}; registered tasks: {_registered('task_name_mapping')}"
        )
    runner = config.run.get("runner", DEFAULT_RUNNER)
    if runner not in registry.mapping["runner_name_mapping"]:
        raise ConfigError(
            f"{where}: unknown run.runner {runner!r}; registered runners: {_registered('runner_name_mapping')}"
        )
