"""All ranks must see rank 0's output and cache folders; a run whose ranks do not stops at start-up."""
import os
import subprocess

import pytest
from omegaconf import OmegaConf

from _jobs import write_config
from _subprocesses import subprocess_env, torchrun_command
from lavis_mmict.shared_storage import TOKEN_PREFIX, shared_folders


def test_folders_checked_are_the_output_dir_and_the_configured_disk_caches():
    config = OmegaConf.create({
        "run": {"output_dir": "out"},
        "model": {"demo_feature_cache": "disk", "demo_bank": {"disk_dir": "/shared/bank"}},
        "datasets": {"a": {"demonstrations": {"strategy": "similar", "feature_cache": "/shared/sim"}},
                     "b": {"demonstrations": {"strategy": "random", "feature_cache": "/unused"}}},
    })
    assert shared_folders(config) == {
        "run.output_dir": "out", "model.demo_feature_cache_dir": "output/cache/demo_vit_features",
        "model.demo_bank.disk_dir": "/shared/bank", "datasets.a.demonstrations.feature_cache": "/shared/sim"}
    assert shared_folders(OmegaConf.create({"run": {"output_dir": "o"}, "model": {}})) == {"run.output_dir": "o"}


@pytest.mark.slow
def test_two_ranks_seeing_different_output_dirs_stop_with_a_clear_error(tmp_path):
    (tmp_path / "node0").mkdir()
    (tmp_path / "node1").mkdir()
    cfg_path = write_config(tmp_path, "out")  # relative: each rank's own current directory
    env = subprocess_env(extra_imports="_rank_cwd", RANK1_CWD=tmp_path / "node1")
    result = subprocess.run(torchrun_command(cfg_path), env=env, cwd=tmp_path / "node0",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("train.py: error")]
    assert len(lines) == 2, result.stderr[-3000:]  # one line per rank, no traceback
    for line in lines:
        assert "run.output_dir is not shared by all ranks: rank 0 on " in line
        assert f"wrote a file into {tmp_path}/node0/out, but rank 1 on " in line
        assert f"sees {tmp_path}/node1/out without it" in line
    assert not (tmp_path / "node0" / "out" / "log.txt").exists() and not any(
        name.startswith(TOKEN_PREFIX) for name in os.listdir(tmp_path / "node0" / "out"))  # nothing trained, no token left


@pytest.mark.slow
def test_two_ranks_sharing_the_output_dir_pass_the_check(tmp_path):
    cfg_path = write_config(tmp_path, tmp_path / "out")
    result = subprocess.run(torchrun_command(cfg_path, "run.max_epoch=1", "run.max_iters=2"),
                            env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [name for name in os.listdir(tmp_path / "out") if name.startswith(TOKEN_PREFIX)]
