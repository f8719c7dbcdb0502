"""Check the registry names an experiment config uses before LAVIS builds anything.

LAVIS itself fails on a wrong name late and obscurely (``'NoneType' object has no attribute ...``
or a bare assertion). :func:`check_config_names` reads the config file plus its ``--options`` and
checks ``model.arch``, ``model.model_type``, the keys under ``datasets:`` and their ``type``,
``run.task`` and ``run.runner`` against LAVIS's registry; a wrong one is a :class:`ConfigError`
that names the file, the key and the valid values. :func:`check_config` adds every other key:
unknown keys (with the closest known one), value types (tables in :mod:`lavis_mmict.config_schema`),
``run.output_dir``, and the frame size the datasets' processors give against the model's
``image_size``. :func:`check_train_batches` (after the datasets are built) refuses a training split
smaller than one batch.
"""
import difflib
import logging
import os

from lavis.common.registry import registry
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lavis_mmict import config_schema as schema
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


def load_config(cfg_path, options=None):
    """(the file's config, the file's config with ``options`` applied); ConfigError if unreadable."""
    if not os.path.isfile(cfg_path):
        raise ConfigError(f"Config file not found: {cfg_path}")
    try:
        file_config = OmegaConf.load(cfg_path)
        config = OmegaConf.merge(file_config, OmegaConf.from_dotlist(_dot_list(options)))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"Cannot read config {cfg_path} with --options {options}: {err}") from err
    return file_config, config


def check_config_names(cfg_path, options=None):
    """Check the names ``cfg_path`` uses, with ``options`` (``--options``: ``k=v ...`` or
    ``k v ...``) applied. Raises :class:`ConfigError` naming the file, the key and the valid values."""
    file_config, config = load_config(cfg_path, options)
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


# --- every key: known, of the right type ------------------------------------------------------

SECTIONS = ("model", "datasets", "run")
#: sections a config may have besides those: LAVIS's ``env:`` (data_root.py reads ``env.cache_root``)
OPTIONAL_SECTIONS = ("env",)


def _plain(node):
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(node, resolve=False)


def _declared_keys(cls):
    """A plugin class's ``CONFIG_KEYS`` (mapping of dotted key -> kind, or names) as a table."""
    declared = getattr(cls, "CONFIG_KEYS", None)
    if declared is None:
        return None
    if isinstance(declared, dict):
        return dict(declared)
    return {name: schema.ANY for name in declared}


def model_keys(arch):
    """The known keys of ``model:`` for model ``arch`` (None: not checked)."""
    if arch in schema.MODEL_KEYS:
        return schema.MODEL_KEYS[arch]
    declared = _declared_keys(registry.get_model_class(arch))
    return None if declared is None else {**schema.LAVIS_MODEL_KEYS, **declared}


def dataset_keys(name):
    """The known keys of ``datasets: <name>:`` (None: not checked)."""
    if name in schema.DATASET_KEYS:
        return schema.DATASET_KEYS[name]
    from lavis_mmict.datasets.builders import ICLDatasetBuilder

    builder = registry.get_builder_class(name)
    if builder is None:  # not registered in this process: check_config_names reports it
        return None
    base = schema.ICL_DATASET_KEYS if issubclass(builder, ICLDatasetBuilder) else None
    declared = _declared_keys(builder)
    if declared is None:
        return base
    return {**(base or schema.LAVIS_DATASET_KEYS), **declared}


def run_keys(config):
    """The known keys of ``run:``: ours and LAVIS's, plus what the task and runner classes declare."""
    table = dict(schema.RUN_KEYS)
    for cls in (registry.get_task_class(config.run.get("task")),
                registry.get_runner_class(config.run.get("runner", DEFAULT_RUNNER))):
        table.update(_declared_keys(cls) or {})
    return table


def _matches(pattern, path):
    return len(pattern) == len(path) and all(p in (s, "<split>") for p, s in zip(pattern, path))


def _below(pattern, path):
    return len(pattern) > len(path) and _matches(pattern[:len(path)], path)


def _suggestion(full_name, prefix, path, patterns):
    """The closest known key to ``full_name`` (``<split>`` filled in from the user's path)."""
    names = []
    for pattern in patterns:
        filled = [path[i] if seg == "<split>" and i < len(path) else seg for i, seg in enumerate(pattern)]
        names.append(".".join([prefix, *filled]))
    close = difflib.get_close_matches(full_name, names, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    siblings = sorted({p[len(path) - 1] for p in patterns if _matches(p[:len(path) - 1], path[:-1])
                       and len(p) >= len(path)})
    return f"known keys there: {siblings}"


def check_section_keys(values, table, prefix, where, unchecked=(), renamed=None):
    """Raise ConfigError for the first key of ``values`` (a dict) not in ``table`` (dotted key ->
    :class:`~lavis_mmict.config_schema.Kind`) or whose value the kind refuses. ``prefix`` names the
    section in messages (``run``, ``datasets.msvd_qa_icl``)."""
    patterns = {tuple(key.split(".")): kind for key, kind in table.items()}

    def walk(node, path):
        for key, value in node.items():
            here = (*path, str(key))
            full_name = ".".join([prefix, *here])
            if any(full_name == u or full_name.startswith(u + ".") for u in unchecked):
                continue
            kind = next((k for p, k in patterns.items() if _matches(p, here)), None)
            deeper = any(_below(p, here) for p in patterns)
            if kind is None and not deeper:
                new_name = (renamed or {}).get(full_name[len(prefix) + 1:])
                hint = (f"did you mean `{prefix}.{new_name}`?" if new_name
                        else _suggestion(full_name, prefix, here, patterns))
                raise ConfigError(f"{where}: unknown key {full_name}; {hint}")
            if kind is not None and not kind.accepts(value):
                raise ConfigError(f"{where}: {full_name} must be {kind!r}, got {value!r}")
            if isinstance(value, dict) and deeper:
                walk(value, here)
            elif kind is None and value is not None:
                raise ConfigError(f"{where}: {full_name} must be a mapping (of "
                                  f"{sorted({p[len(here)] for p in patterns if _below(p, here)})}), got {value!r}")

    walk(values, ())


def check_config_keys(cfg_path, options=None):
    """Every key of ``model:``, each ``datasets: <name>:`` and ``run:`` is known and of its type;
    ``run.output_dir`` is set and can be a folder. Call after :func:`check_config_names`."""
    _, config = load_config(cfg_path, options)
    where = f"Config {cfg_path}"
    for section in config:
        if section not in SECTIONS + OPTIONAL_SECTIONS:
            known = SECTIONS + OPTIONAL_SECTIONS
            close = difflib.get_close_matches(str(section), known, n=1)
            raise ConfigError(f"{where}: unknown section '{section}:'; "
                              + (f"did you mean `{close[0]}`?" if close else f"sections are {list(known)}"))
    values = {section: _plain(config[section]) for section in SECTIONS}
    unchecked = [str(u) for u in (values["run"].get("unchecked_keys") or [])]

    check_output_dir(values["run"].get("output_dir"), where)

    tables = [("model", values["model"], model_keys(values["model"]["arch"]))]
    tables += [(f"datasets.{name}", values["datasets"][name] or {}, dataset_keys(name))
               for name in values["datasets"]]
    tables.append(("run", values["run"], run_keys(config)))
    if "env" in config:
        tables.append(("env", _plain(config["env"]) or {}, schema.ENV_KEYS))
    for prefix, section_values, table in tables:
        if table is None:
            logging.warning("%s: the keys of %s are not checked (its class declares no CONFIG_KEYS).",
                            where, prefix)
            continue
        check_section_keys(section_values, table, prefix, where, unchecked,
                           schema.RENAMED_MODEL_KEYS if prefix == "model" else None)


def check_output_dir(output_dir, where):
    """``run.output_dir`` is set, and it (or its nearest existing parent) is a folder."""
    if output_dir in (None, ""):
        raise ConfigError(f"{where}: run.output_dir is not set (the folder of the run's <job_id>/ "
                          f"folders, relative to the current directory)")
    path = os.path.abspath(os.path.expanduser(str(output_dir)))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is a file" if existing == path else f"is below a file ({existing})"
        raise ConfigError(f"{where}: run.output_dir {output_dir} {what}; it must be a folder")


# --- sizes: the datasets' frames against the model, a training split against one batch -------

def _processor_frame_size(processor_cfg):
    """The frame size (int) a LAVIS image processor config gives, or None if it cannot tell."""
    name = processor_cfg.get("name") if processor_cfg is not None else None
    cls = registry.get_processor_class(name) if name else None
    if cls is None:
        return None
    transforms = getattr(getattr(cls.from_config(processor_cfg), "transform", None), "transforms", [])
    for transform in transforms:
        size = getattr(transform, "size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
            return int(size[0])
    return None


def _dataset_configs(config):
    """(name, the builder's default config merged with the user's) for each dataset, as LAVIS merges."""
    for name in config.datasets:
        builder = registry.get_builder_class(name)
        user_cfg = config.datasets[name] or {}
        defaults = OmegaConf.load(builder.default_config_path(user_cfg.get("type", "default")))
        yield name, OmegaConf.merge(defaults.datasets[name], user_cfg)


def check_demonstrations(cfg_path, options=None):
    """Each ``*_icl`` dataset's ``demonstrations:`` block has valid values (strategy, pool, num...),
    as the builder will read it (defaults included)."""
    from lavis_mmict.datasets.builders import ICLDatasetBuilder
    from lavis_mmict.datasets.demonstrations import DemonstrationConfig

    _, config = load_config(cfg_path, options)
    for name, dataset_cfg in _dataset_configs(config):
        if not issubclass(registry.get_builder_class(name), ICLDatasetBuilder):
            continue
        try:
            DemonstrationConfig.from_config(dataset_cfg.get("demonstrations"))
        except (ValueError, TypeError) as error:
            raise ConfigError(f"Config {cfg_path}: datasets.{name}.demonstrations: {error}") from error


def check_frame_sizes(cfg_path, options=None):
    """The frames every dataset's ``vis_processor`` gives have the model's ``image_size`` (our models:
    their ViT's patch embedding asserts it, deep inside the first forward pass)."""
    _, config = load_config(cfg_path, options)
    arch, model_type = config.model.arch, config.model.model_type
    if arch not in schema.MODEL_KEYS:
        return
    model_cls = registry.get_model_class(arch)
    model_cfg = OmegaConf.merge(OmegaConf.load(model_cls.default_config_path(model_type)).model, config.model)
    image_size = model_cfg.get("image_size", 224)
    for name, dataset_cfg in _dataset_configs(config):
        for split in ("train", "eval"):
            key = f"datasets.{name}.vis_processor.{split}"
            processor_cfg = OmegaConf.select(dataset_cfg, f"vis_processor.{split}")
            size = _processor_frame_size(processor_cfg)
            if size is not None and size != image_size:
                raise ConfigError(
                    f"Config {cfg_path}: {key} gives {size} px frames but model {arch} "
                    f"{model_type} takes {image_size} px (model.image_size): set {key}.image_size={image_size}"
                    f" (or model.image_size={size})"
                )


def check_train_batches(run_cfg, datasets, world_size=1):
    """Each ``run.train_splits`` split (summed over datasets, as LAVIS concatenates them) holds at
    least one batch per process: LAVIS drops the last incomplete batch, so a smaller split trains
    0 iterations and LAVIS's logger divides by zero."""
    batch_size = int(run_cfg.get("batch_size_train", 1))
    for split in run_cfg.get("train_splits", []) or []:
        sizes = {name: len(splits[split]) for name, splits in datasets.items()
                 if split in splits and hasattr(splits[split], "__len__")}
        if not sizes:
            continue  # no such split, or an endless (webdataset) one
        per_process = -(-sum(sizes.values()) // world_size)  # DistributedSampler pads up
        if per_process < batch_size:
            names = ", ".join(f"datasets.{name}: {n}" for name, n in sizes.items())
            raise ConfigError(
                f"Training split '{split}' has {sum(sizes.values())} items ({names}), fewer than one "
                f"batch per process (run.batch_size_train={batch_size} x {world_size} processes): "
                f"set run.batch_size_train <= {max(per_process, 1)} or add training data"
            )
