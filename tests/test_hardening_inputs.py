"""Bad inputs outside the datasets: wrong names in a config, a checkpoint of another model or
shape, real weights missing offline, a checkpoint carrying code. Each is refused with a message
naming the key or file, before anything runs; train.py reports it as one line, no traceback."""
import glob
import os
import subprocess
import sys

import pytest
import torch
from lavis.common.registry import registry

import lavis_mmict
from _hardening import TRAIN_PY, no_network_attempts, subprocess_env
from lavis_mmict.checkpoints import CheckpointError, read_checkpoint
from lavis_mmict.config_checks import check_config_names
from lavis_mmict.errors import ConfigError
from test_runners import TRAINABLE, build_runner, trainable_params, write_config

DEMO_CFG = os.path.join(os.path.dirname(TRAIN_PY), "projects", "mmict", "demo.yaml")


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


def test_missing_real_weights_offline_names_the_config_key(tmp_path):
    """A real weights URL (as the eva_clip_g preset has) that is not cached, with HF_HUB_OFFLINE=1:
    train.py stops at model building, naming the key to set and where the file should be."""
    cfg_path = write_config(tmp_path, tmp_path / "out")
    cfg_path.write_text(cfg_path.read_text().replace(
        "arch: _toy_linear_model\n  model_type: default", "arch: mmict_blip2\n  model_type: tiny"))
    url = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/not_cached_vit.pth"
    net_log = tmp_path / "network.log"
    result = subprocess.run(
        [sys.executable, TRAIN_PY, "--cfg-path", str(cfg_path), "--options",
         f"model.vit_weights={url}", "run.job_id=w"],
        env=subprocess_env(no_network_log=net_log, TORCH_HOME=tmp_path / "torch_home"), cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    # one error (its first line starts "train.py: error:"), listing each missing piece below it
    message = result.stderr[result.stderr.index("train.py: error:"):]
    assert "model.vit_weights" in message and "HF_HUB_OFFLINE" in message and "not_cached_vit.pth" in message
    assert no_network_attempts(net_log) == []


# --- checkpoints of another model ------------------------------------------------------------


@pytest.fixture
def toy_checkpoint(tmp_path, fresh_registry_paths):
    runner = build_runner(write_config(tmp_path, tmp_path / "out"), "ckpt", "run.max_epoch=1",
                          "run.valid_splits=[]", "run.test_splits=[]")
    runner.train()
    return str(tmp_path / "out" / "ckpt" / "checkpoint_0.pth")


def test_checkpoint_of_another_shape_is_refused_with_keys_and_shapes(tmp_path, toy_checkpoint, fresh_registry_paths):
    runner = build_runner(write_config(tmp_path, tmp_path / "out2"), "wide", "model.hidden=16")
    untouched = trainable_params(runner)
    with pytest.raises(CheckpointError) as excinfo:
        runner._load_checkpoint(toy_checkpoint)
    message = str(excinfo.value)
    assert toy_checkpoint in message
    assert "head.weight: checkpoint (1, 8) vs model (1, 16)" in message
    assert "Traceback" not in message
    for name, value in trainable_params(runner).items():
        assert torch.equal(value, untouched[name])  # nothing half-loaded


def test_checkpoint_of_another_architecture_into_load_model(toy_checkpoint):
    with pytest.raises(CheckpointError) as excinfo:
        lavis_mmict.load_model("mmict_blip2", "tiny", checkpoint=toy_checkpoint)
    message = str(excinfo.value)
    assert toy_checkpoint in message
    assert "unexpected keys" in message and "head.weight" in message
    assert "trainable parameters missing" in message and "llm_model.lm_head.weight" in message
    assert set(read_checkpoint(toy_checkpoint)["model"]) == TRAINABLE


def test_optimizer_state_of_another_run_is_a_checkpoint_error(tmp_path, toy_checkpoint, fresh_registry_paths):
    saved = read_checkpoint(toy_checkpoint)
    saved["optimizer"]["param_groups"] = saved["optimizer"]["param_groups"][:1]
    bad = tmp_path / "bad_optimizer.pth"
    torch.save(saved, bad)
    runner = build_runner(write_config(tmp_path, tmp_path / "out3"), "opt")
    with pytest.raises(CheckpointError, match=str(bad)):
        runner._load_checkpoint(str(bad))


# --- code hidden in a checkpoint ---------------------------------------------------------------


class _CreatesFileWhenUnpickled:
    marker = None

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_everywhere_and_nothing_runs(tmp_path, fresh_registry_paths):
    _CreatesFileWhenUnpickled.marker = str(tmp_path / "code_ran")
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"head.weight": torch.zeros(1, 8)}, "epoch": 0,
                "payload": _CreatesFileWhenUnpickled()}, evil)

    with pytest.raises(CheckpointError, match=f"Refusing to load checkpoint {evil}"):
        lavis_mmict.load_model("mmict_blip2", "tiny", checkpoint=str(evil))
    runner = build_runner(write_config(tmp_path, tmp_path / "out"), "evil")
    with pytest.raises(CheckpointError, match=f"Refusing to load checkpoint {evil}"):
        runner._load_checkpoint(str(evil))  # run.resume_ckpt_path
    with pytest.raises(CheckpointError, match=f"Refusing to load checkpoint {evil}"):
        runner.load_model_weights(str(evil))  # run.eval_ckpt_path
    assert not os.path.exists(_CreatesFileWhenUnpickled.marker)
