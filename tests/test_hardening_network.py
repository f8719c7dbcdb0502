"""No network: importing lavis_mmict and a tiny MMICT training run (tiny model, generated data,
one process) make no connection attempt and no DNS lookup, even without HF_HUB_OFFLINE.
The 2-process runs of test_hardening_resume.py run under the same guard with loopback allowed."""
import subprocess
import sys

from _hardening import TRAIN_PY, no_network_attempts, subprocess_env
from test_hardening_inputs import DEMO_CFG


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
