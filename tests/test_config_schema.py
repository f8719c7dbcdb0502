"""Every config key is checked before anything is built (lavis_mmict/config_schema.py +
config_checks.py): typos name the closest valid key, wrong types and a bad run.output_dir are one
line; every shipped config and every key the tests and scripts pass passes; docs and schema agree."""
import glob
import os
import re

import pytest
from lavis.common.registry import registry
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from omegaconf import OmegaConf

import _toy_plugin  # noqa: F401  (declares CONFIG_KEYS)
from _jobs import write_config
from _subprocesses import DEMO_CFG, REPO_ROOT
from lavis_mmict import config_schema as schema
from lavis_mmict.config_checks import (
    check_config_keys,
    check_config_names,
    check_demonstrations,
    check_frame_sizes,
    check_section_keys,
    check_train_batches,
    dataset_keys,
    model_keys,
)
from lavis_mmict.errors import ConfigError


def _error(cfg_path, options):
    with pytest.raises(ConfigError) as excinfo:
        check_config_names(cfg_path, options)
        check_config_keys(cfg_path, options)
        check_demonstrations(cfg_path, options)
        check_frame_sizes(cfg_path, options)
    message = str(excinfo.value)
    assert "\n" not in message and cfg_path in message
    return message


@pytest.mark.parametrize("option, expected", [
    ("run.resume_ckpt_pth=auto", "unknown key run.resume_ckpt_pth; did you mean `run.resume_ckpt_path`?"),
    ("run.max_epochs=5", "unknown key run.max_epochs; did you mean `run.max_epoch`?"),
    ("model.demo_formatt=none", "unknown key model.demo_formatt; did you mean `model.demo_format`?"),
    ("model.demo_mode=raw", "did you mean `model.demo_format`?"),
    ("datasets.synthetic_videoqa_icl.build_info.storag=x",
     "unknown key datasets.synthetic_videoqa_icl.build_info.storag; did you mean "
     "`datasets.synthetic_videoqa_icl.build_info.storage`?"),
    ("datasets.synthetic_videoqa_icl.demonstrations.nmu=3", "did you mean `datasets.synthetic_videoqa_icl.demonstrations.num`?"),
    ("datasets.synthetic_videoqa_icl.vis_processor.eval.image_sise=32",
     "did you mean `datasets.synthetic_videoqa_icl.vis_processor.eval.image_size`?"),
    ("datasets.synthetic_videoqa_icl.build_info.annotations.val.storag=x",
     "did you mean `datasets.synthetic_videoqa_icl.build_info.annotations.val.storage`?"),
    ("runn.max_epoch=1", "unknown section 'runn:'; did you mean `run`?"),
    ("run.batch_size_train=abc", "run.batch_size_train must be int, got 'abc'"),
    ("run.amp=3", "run.amp must be bool, got 3"),
    ("run.init_lr=fast", "run.init_lr must be number, got 'fast'"),
    ("model.num_frames=four", "model.num_frames must be int or null, got 'four'"),
    ("datasets.synthetic_videoqa_icl.build_info=3", "datasets.synthetic_videoqa_icl.build_info must be a mapping"),
    ("run.output_dir=null", "run.output_dir is not set"),
    ("datasets.synthetic_videoqa_icl.demonstrations.strategy=rices",
     "datasets.synthetic_videoqa_icl.demonstrations: Unknown demonstrations.strategy 'rices'"),
])
def test_unknown_keys_and_wrong_types_are_one_line_naming_the_key(option, expected):
    assert expected in _error(DEMO_CFG, [option])


def test_output_dir_that_is_a_file_or_below_one(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert f"run.output_dir {a_file} is a file" in _error(DEMO_CFG, [f"run.output_dir={a_file}"])
    assert f"is below a file ({a_file})" in _error(DEMO_CFG, [f"run.output_dir={a_file}/out"])
    check_config_keys(DEMO_CFG, [f"run.output_dir={tmp_path}/new/out"])  # a folder to be made: fine


def test_a_config_without_output_dir(tmp_path):
    config = OmegaConf.load(DEMO_CFG)
    del config.run["output_dir"]
    path = tmp_path / "no_output_dir.yaml"
    OmegaConf.save(config, path)
    assert "run.output_dir is not set" in _error(str(path), [])


def test_processor_frames_must_fit_the_model():
    message = _error(DEMO_CFG, ["datasets.synthetic_videoqa_icl.vis_processor.train.image_size=224"])
    assert ("datasets.synthetic_videoqa_icl.vis_processor.train gives 224 px frames but model "
            "mmict_blip2 tiny takes 32 px (model.image_size): set "
            "datasets.synthetic_videoqa_icl.vis_processor.train.image_size=32") in message
    assert "(or model.image_size=32)" in _error(DEMO_CFG, ["model.image_size=64"])


def test_train_split_smaller_than_one_batch_per_process():
    run_cfg = OmegaConf.create({"batch_size_train": 8, "train_splits": ["train"]})
    datasets = {"mine": {"train": list(range(10)), "val": list(range(3))}}
    check_train_batches(run_cfg, datasets, world_size=1)
    with pytest.raises(ConfigError) as excinfo:
        check_train_batches(run_cfg, datasets, world_size=2)  # 5 per process < 8
    assert str(excinfo.value) == (
        "Training split 'train' has 10 items (datasets.mine: 10), fewer than one batch per process "
        "(run.batch_size_train=8 x 2 processes): set run.batch_size_train <= 5 or add training data")


# --- plugins -----------------------------------------------------------------------------------

def test_plugin_classes_declare_their_keys():
    assert model_keys("_toy_linear_model")["hidden"] is schema.INT
    assert "build_info.num_train" in dataset_keys("_toy_builder")
    with pytest.raises(ConfigError, match=r"unknown key model.hiden; did you mean `model.hidden`\?"):
        check_section_keys({"hiden": 3}, model_keys("_toy_linear_model"), "model", "Config x")
    with pytest.raises(ConfigError, match=r"datasets._toy_builder.build_info.num_train must be int"):
        check_section_keys({"build_info": {"num_train": "many"}}, dataset_keys("_toy_builder"),
                           "datasets._toy_builder", "Config x")


def test_undeclared_plugin_builder_is_not_checked_and_unchecked_keys_pass():
    @registry.register_builder("_undeclared_builder_for_schema_test")
    class Undeclared(BaseDatasetBuilder):
        pass

    try:
        assert dataset_keys("_undeclared_builder_for_schema_test") is None
    finally:
        registry.mapping["builder_name_mapping"].pop("_undeclared_builder_for_schema_test")
    check_section_keys({"my_flag": 1, "my": {"deep": 2}}, schema.RUN_KEYS, "run", "Config x",
                       unchecked=["run.my_flag", "run.my"])
    check_config_keys(DEMO_CFG, ["run.unchecked_keys=[model.my_flag]", "model.my_flag=1"])


# --- every shipped config and every key passed by the tests and scripts ------------------------

PROJECT_CFGS = sorted(glob.glob(os.path.join(REPO_ROOT, "projects", "*", "*.yaml")))
MODEL_DEFAULTS = sorted(glob.glob(os.path.join(REPO_ROOT, "lavis_mmict", "configs", "models", "*.yaml")))
DATASET_DEFAULTS = sorted(glob.glob(os.path.join(REPO_ROOT, "lavis_mmict", "configs", "datasets", "*", "*.yaml")))


def _rel(path):
    return os.path.relpath(path, REPO_ROOT)


@pytest.mark.parametrize("cfg_path", PROJECT_CFGS, ids=_rel)
def test_every_project_config_passes(cfg_path, tmp_path):
    options = [f"run.output_dir={tmp_path}"]
    check_config_names(cfg_path, options)
    check_config_keys(cfg_path, options)
    check_demonstrations(cfg_path, options)
    check_frame_sizes(cfg_path, options)


@pytest.mark.parametrize("runner", ["icl_runner_base", "icl_runner_iter"])
def test_the_test_jobs_config_passes(runner, tmp_path):
    path = str(write_config(tmp_path, tmp_path / "out", runner=runner))
    check_config_names(path)
    check_config_keys(path)


@pytest.mark.parametrize("path", MODEL_DEFAULTS + DATASET_DEFAULTS, ids=_rel)
def test_every_default_config_passes(path):
    config = OmegaConf.to_container(OmegaConf.load(path))
    assert set(config) <= {"model", "preprocess", "datasets"}
    if "model" in config:
        check_section_keys(config["model"], model_keys(config["model"]["arch"]), "model", path)
    for name, values in config.get("datasets", {}).items():
        check_section_keys(values, dataset_keys(name), f"datasets.{name}", path)


OPTION = re.compile(r"""["' ]((?:model|run|datasets)\.[A-Za-z0-9_.]+)=""")
# files whose options are wrong on purpose
WRONG_ON_PURPOSE = {"tests/test_config_errors.py", "tests/test_config_schema.py", "tests/test_cli_errors.py"}


def _passed_keys():
    files = glob.glob(os.path.join(REPO_ROOT, "tests", "*.py")) + glob.glob(
        os.path.join(REPO_ROOT, "run_scripts", "**", "*.*"), recursive=True) + glob.glob(
        os.path.join(REPO_ROOT, "lavis_mmict", "*.py")) + [os.path.join(REPO_ROOT, "Makefile")]
    keys = set()
    for path in files:
        if _rel(path) not in WRONG_ON_PURPOSE and os.path.isfile(path):
            with open(path, errors="replace") as file:
                keys.update(OPTION.findall(file.read()))
    return sorted(keys)


@pytest.mark.parametrize("key", _passed_keys())
def test_every_option_the_tests_and_scripts_pass_is_known(key):
    section, _, rest = key.partition(".")
    if section == "model":
        tables = list(schema.MODEL_KEYS.values()) + [model_keys("_toy_linear_model")]
        prefix = "model"
    elif section == "datasets":
        name, _, rest = rest.partition(".")
        # a builder registered only inside its own run (the README's cooking_qa_icl example, an
        # ICLDatasetBuilder) is checked there; here against the ICL builders' keys
        table = dataset_keys(name) if registry.get_builder_class(name) else schema.ICL_DATASET_KEYS
        tables, prefix = [table], f"datasets.{name}"
    else:
        tables, prefix = [schema.RUN_KEYS], "run"
    values = None
    for part in reversed(rest.split(".")):
        values = {part: values}
    errors = []
    for table in tables:
        try:
            check_section_keys(values, {k: schema.ANY for k in table}, prefix, "option")
            return
        except ConfigError as error:
            errors.append(str(error))
    pytest.fail(f"{key}: {errors}")


# --- docs/configuration.md and the schema name the same keys ----------------------------------

DOCS = os.path.join(REPO_ROOT, "docs", "configuration.md")
GROUPS = {"model": ("## Model:", "### Demo feature cache", "### AIM demonstration bank"),
          "datasets": ("## Datasets", "### `demonstrations:`", "### `skip_bad_media", "### `synthetic_videoqa_icl`",
                       "### `web_pairs_icl`"),
          "run": ("## Run",)}


def _expand(name):
    """`vis_processor.{train,eval}` -> both; `demo_bank.enabled` as is."""
    match = re.search(r"\{([^}]*)\}", name)
    if not match:
        return [name]
    return [e for part in match.group(1).split(",") for e in _expand(name[:match.start()] + part.strip() + name[match.end():])]


def documented_keys():
    groups, current = {group: set() for group in GROUPS}, None
    with open(DOCS) as file:
        for line in file:
            if line.startswith("#"):
                current = next((g for g, heads in GROUPS.items() if line.startswith(heads)), None)
            elif current and line.startswith("| `"):
                first_cell = line.split("|")[1]
                for name in re.findall(r"`([^`]+)`", first_cell):
                    groups[current].update(_expand(name.removesuffix(".*")))
    return groups


def schema_keys():
    return {"model": set().union(*schema.MODEL_KEYS.values()),
            "datasets": set().union(*schema.DATASET_KEYS.values()),
            "run": set(schema.RUN_KEYS)}


def _covered(key, names):
    """``key`` or one of its dotted prefixes is in ``names`` (a processor row covers its LAVIS keys)."""
    parts = key.split(".")
    return any(".".join(parts[:n]) in names for n in range(1, len(parts) + 1))


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_docs_and_schema_name_the_same_keys(group):
    documented, known = documented_keys()[group], schema_keys()[group]
    undocumented = sorted(k for k in known if not _covered(k, documented))
    unknown = sorted(d for d in documented if not any(k == d or k.startswith(d + ".") for k in known))
    assert not undocumented, f"in config_schema.py but not in docs/configuration.md ({group}): {undocumented}"
    assert not unknown, f"in docs/configuration.md but not in config_schema.py ({group}): {unknown}"
