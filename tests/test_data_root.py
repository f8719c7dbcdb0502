"""The data root: env.cache_root / $LAVIS_CACHE_ROOT become LAVIS's cache_root, relative dataset
paths resolve under it, and a missing file names the root it was resolved against."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from lavis.common.registry import registry
from lavis.common.utils import get_cache_path
from omegaconf import OmegaConf

import _dataset_files as files
from conftest import REPO_ROOT
from lavis_mmict.data_root import DataFileNotFoundError, apply_config_data_root
from lavis_mmict.errors import ConfigError


def msvd_config(**build_info):
    builder_cls = registry.get_builder_class("msvd_qa_icl")
    cfg = OmegaConf.load(builder_cls.default_config_path()).datasets.msvd_qa_icl
    cfg.build_info.update(build_info)
    cfg.vis_processor = {"train": {"name": "blip_image_eval", "image_size": 32},
                         "eval": {"name": "blip_image_eval", "image_size": 32}}
    cfg.num_frames, cfg.demonstrations.num = 2, 1
    return builder_cls, cfg


def lavis_config(tmp_path, yaml_env=None, options=None):
    """What apply_config_data_root reads from LAVIS's Config: args.cfg_path and the merged config."""
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(OmegaConf.to_yaml({"env": yaml_env} if yaml_env else {"run": {"task": "icl_vqa"}}))
    merged = OmegaConf.from_dotlist(options or [])
    return SimpleNamespace(args=SimpleNamespace(cfg_path=str(cfg_path)), config=merged)


def test_config_key_beats_environment_variable_and_lavis_uses_the_same_root(tmp_path, monkeypatch,
                                                                            fresh_registry_paths):
    monkeypatch.setenv("LAVIS_CACHE_ROOT", str(tmp_path / "from_env"))
    assert apply_config_data_root(lavis_config(tmp_path)) == str(tmp_path / "from_env")
    assert apply_config_data_root(lavis_config(tmp_path, {"cache_root": str(tmp_path / "yaml")})) == str(
        tmp_path / "yaml")
    options = lavis_config(tmp_path, {"cache_root": str(tmp_path / "yaml")}, [f"env.cache_root={tmp_path}/opt"])
    assert apply_config_data_root(options) == str(tmp_path / "opt")
    # LAVIS's own helper (and its builders' downloader) resolve against the same root
    assert get_cache_path("coco/x.json") == str(tmp_path / "opt" / "coco" / "x.json")


def test_relative_root_is_relative_to_the_current_directory(tmp_path, monkeypatch, fresh_registry_paths):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAVIS_CACHE_ROOT", raising=False)
    assert apply_config_data_root(lavis_config(tmp_path, {"cache_root": "data"})) == str(tmp_path / "data")


def test_relative_build_info_paths_resolve_under_the_data_root(tmp_path, monkeypatch, fresh_registry_paths):
    layout = files.make_videoqa(str(tmp_path / "data" / "msvd"))  # msvd/annotations/qa_*.json, msvd/videos
    assert layout["annotations"]["train"] == str(tmp_path / "data" / "msvd" / "annotations" / "qa_train.json")
    monkeypatch.setenv("LAVIS_CACHE_ROOT", str(tmp_path / "data"))
    apply_config_data_root(lavis_config(tmp_path))
    builder_cls, cfg = msvd_config()  # the builder's default, relative paths
    datasets = builder_cls(cfg).build_datasets()
    assert len(datasets["train"]) == 8 and datasets["test"][0]["image"].shape == (2, 3, 32, 32)


def test_missing_file_names_the_root_it_resolved_against_and_how_to_change_it(tmp_path, monkeypatch,
                                                                              fresh_registry_paths):
    monkeypatch.setenv("LAVIS_CACHE_ROOT", str(tmp_path / "nowhere"))
    apply_config_data_root(lavis_config(tmp_path))
    builder_cls, cfg = msvd_config()
    with pytest.raises(DataFileNotFoundError) as error:
        builder_cls(cfg).build_datasets()
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, ConfigError)  # train.py prints it as one line
    assert f"not found: {tmp_path}/nowhere/msvd/annotations/qa_train.json" in message
    assert f"'msvd/annotations/qa_train.json' resolved against the data root {tmp_path}/nowhere " \
           f"(from $LAVIS_CACHE_ROOT; set it with env.cache_root in the config or $LAVIS_CACHE_ROOT" in message


def test_missing_media_folder_is_an_error_naming_build_info_root(tmp_path):
    layout = files.make_videoqa(str(tmp_path / "msvd"))
    os.rename(layout["media"], str(tmp_path / "msvd" / "clips"))
    builder_cls, cfg = msvd_config(root=str(tmp_path))
    with pytest.raises(DataFileNotFoundError, match=rf"msvd_qa_icl: videos folder not found: {tmp_path}/msvd/videos "
                                                    rf"\('msvd/videos' resolved against datasets.msvd_qa_icl"
                                                    rf".build_info.root {tmp_path}\)"):
        builder_cls(cfg).build_datasets()


@pytest.mark.slow
def test_environment_variable_applies_when_lavis_mmict_is_imported(tmp_path):
    code = "import lavis_mmict; from lavis.common.registry import registry; print(registry.get_path('cache_root'))"
    env = dict(os.environ, LAVIS_CACHE_ROOT=str(tmp_path), PYTHONPATH=REPO_ROOT, PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == str(tmp_path)


PAPER_CONFIGS = sorted(
    os.path.join(folder, name) for folder in ("projects/mmict", "projects/aim")
    for name in os.listdir(os.path.join(REPO_ROOT, folder))
    if name.endswith(".yaml") and not name.startswith(("demo", "pretrain_webdataset")))


@pytest.mark.parametrize("cfg_path", PAPER_CONFIGS)
def test_every_paper_project_config_reads_its_data_under_the_data_root(cfg_path):
    """No project config pins a path of its own: all of them follow env.cache_root / $LAVIS_CACHE_ROOT."""
    project = OmegaConf.load(os.path.join(REPO_ROOT, cfg_path))
    assert "env.cache_root" in open(os.path.join(REPO_ROOT, cfg_path)).read()  # the header says how
    for name, dataset in project.datasets.items():
        defaults = OmegaConf.load(registry.get_builder_class(name).default_config_path()).datasets[name]
        build_info = OmegaConf.merge(defaults, dataset).build_info
        assert build_info.get("root") is None
        storages = [split.storage for split in build_info.annotations.values()] + [build_info[defaults.data_type].storage]
        assert storages and all(not os.path.isabs(s) for s in storages), (cfg_path, storages)
