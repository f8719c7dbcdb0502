"""Wrong names in a config are refused with a message naming the key and the valid values, before
anything runs; train.py and evaluate.py report it as one line, no traceback."""
import glob
import os
import subprocess
import sys

import pytest
from lavis.common.registry import registry

import _toy_plugin  # noqa: F401  (registers _toy_linear_model, named by a case below)
from _subprocesses import DEMO_CFG, TRAIN_PY, no_network_attempts, subprocess_env
from lavis_mmict.config_checks import check_config_names
from lavis_mmict.errors import ConfigError


@pytest.mark.parametrize(
    "option, expected",
    [
        ("datasets.msvd_qa_ic.vis_root=x", ["datasets.msvd_qa_ic", "synthetic_videoqa_icl"]),
        ("model.arch=mmict_blip3", ["model.arch 'mmict_blip3'", "mmict_blip2"]),
        ("model.arch=_toy_linear_model", ["model.arch cannot be changed with --options"]),
        ("model.model_type=opt2.7b", ["model.model_type 'opt2.7b'", "mmict_blip2", "'pretrain_opt2.7b'", "'tiny_t5'"]),
        ("datasets.synthetic_videoqa_icl.type=eval", ["datasets.synthetic_videoqa_icl.type 'eval'", "default"]),
        ("run.task=icl_vq", ["run.task 'icl_vq'", "icl_vqa"]),
        ("run.runner=runner_icl", ["run.runner 'runner_icl'", "icl_runner_base", "icl_runner_iter"]),
    ],
)
def test_unknown_names_in_config_are_named_with_the_valid_ones(option, expected):
    with pytest.raises(ConfigError) as excinfo:
        check_config_names(DEMO_CFG, [option])
    message = str(excinfo.value)
    assert DEMO_CFG in message
    for part in expected:
        assert part in message, message


def test_builder_list_shows_only_in_context_builders():
    with pytest.raises(ConfigError) as excinfo:
        check_config_names(DEMO_CFG, ["datasets.nope.x=1"])
    icl = [n for n in registry.mapping["builder_name_mapping"] if n.endswith("_icl")]
    listed = str(excinfo.value).split("(*_icl): ")[1].split("]")[0]
    assert sorted(icl) == sorted(n.strip(" '[") for n in listed.split(","))
    assert "'coco_caption'" not in listed  # LAVIS's own builders are mentioned, not listed


PROJECT_CFGS = sorted(glob.glob(os.path.join(os.path.dirname(TRAIN_PY), "projects", "*", "*.yaml")))


@pytest.mark.parametrize("cfg_path", PROJECT_CFGS, ids=lambda path: os.path.relpath(path, os.path.dirname(TRAIN_PY)))
def test_every_project_config_names_registered_parts(cfg_path):
    check_config_names(cfg_path)  # model arch/type, builders, task, runner all exist


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_entry_points_report_a_config_error_in_one_line(tmp_path, script):
    net_log = tmp_path / "network.log"
    result = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(TRAIN_PY), script), "--cfg-path", DEMO_CFG,
         "--options", "datasets.msvd_qa_ic.x=1",
         f"run.output_dir={tmp_path / 'out'}"],
        env=subprocess_env(no_network_log=net_log), cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{script}: error: Config {DEMO_CFG}: unknown dataset builder datasets.msvd_qa_ic" in result.stderr
    assert not (tmp_path / "out").exists()  # stopped before anything was built or written
    assert no_network_attempts(net_log) == []
