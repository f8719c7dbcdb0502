"""No network: importing lavis_mmict and a tiny MMICT training run (tiny model, generated data,
one process) make no connection attempt and no DNS lookup, even without HF_HUB_OFFLINE; real
weights missing offline stop train.py naming the config key. The 2-process runs of
test_resume.py run under the same guard with loopback allowed."""
import subprocess
import sys

import pytest

from _jobs import write_config
from _subprocesses import DEMO_CFG, TRAIN_PY, no_network_attempts, subprocess_env

pytestmark = pytest.mark.slow  # every test here runs a child process


def _without_offline_flags(env):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)
    return env


def test_guard_is_active_in_subprocesses(tmp_path):
    log = tmp_path / "network.log"
    result = subprocess.run(
        [sys.executable, "-c", "import urllib.request; urllib.request.urlopen('http://example.com', timeout=5)"],
        env=subprocess_env(no_network_log=log), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "network access disabled in this test" in result.stderr
    assert "getaddrinfo 'example.com'" in no_network_attempts(log)[0]


def test_import_and_tiny_training_run_offline(tmp_path):
    """train.py imports lavis_mmict first, under the guard (active from interpreter start)."""
    log = tmp_path / "network.log"
    env = _without_offline_flags(subprocess_env(no_network_log=log, extra_imports=""))
    result = subprocess.run(
        [sys.executable, TRAIN_PY, "--cfg-path", DEMO_CFG, "--options",
         "datasets.synthetic_videoqa_icl.build_info.num_clips.train=4",
         "datasets.synthetic_videoqa_icl.build_info.num_clips.val=2",
         "datasets.synthetic_videoqa_icl.build_info.num_clips.test=2",
         f"datasets.synthetic_videoqa_icl.build_info.storage={tmp_path / 'data'}",
         f"run.output_dir={tmp_path / 'out'}", "run.job_id=offline", "run.max_epoch=1",
         "run.batch_size_train=4", "run.batch_size_eval=8", "run.num_workers=0", "run.warmup_steps=1"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "out" / "offline" / "checkpoint_best.pth").is_file()
    assert no_network_attempts(log) == []


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
