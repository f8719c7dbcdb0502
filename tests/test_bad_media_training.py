"""Bad media through train.py with 2 processes (torchrun, gloo) on the real ``videoqa_icl`` builder
over generated clips: the media check stops a run with a bad val clip before any training, and
``skip_bad_media`` trains past bad clips, counting every skipped query and dropped demonstration."""
import os
import subprocess
import sys

import pytest
from lavis.common.registry import registry
from omegaconf import OmegaConf

import _dataset_files as files
from _jobs import read_log
from _subprocesses import REPO_ROOT, TESTS_DIR, torchrun_command
from lavis_mmict.datasets.icl_dataset import ITEM_SKIPPED_MEDIA_KEY

pytestmark = pytest.mark.slow  # torchrun

CONFIG = """\
model: {{arch: mmict_blip2, model_type: tiny, demo_format: mmict}}
datasets:
  videoqa_icl:
    build_info:
      annotations: {{train: {{storage: {train}}}, val: {{storage: {val}}}, test: {{storage: {test}}}}}
      videos: {{storage: {media}}}
    num_frames: 2
    skip_bad_media: {skip}
    vis_processor:
      train: {{name: blip2_image_train, image_size: 32}}
      eval: {{name: blip_image_eval, image_size: 32}}
    demonstrations: {{num: 2, strategy: random, pool: train, seed: 3}}
run:
  task: icl_vqa
  runner: icl_runner_base
  device: cpu
  distributed: true
  dist_url: env://
  seed: 42
  output_dir: {output}
  lr_sched: linear_warmup_cosine_lr
  init_lr: 1e-3
  min_lr: 1e-5
  warmup_lr: 1e-5
  warmup_steps: 2
  weight_decay: 0.05
  max_epoch: 2
  batch_size_train: 4
  batch_size_eval: 2
  num_workers: 1
  amp: false
  num_beams: 1
  max_len: 5
  min_len: 1
  train_splits: ["train"]
  valid_splits: ["val"]
  test_splits: ["test"]
"""


def write_config(tmp_path, skip):
    """Generated clips (train: video0-8 x 2 questions, val: video9-10, test: video11-12; odd clips
    are frame folders) and the config of a 2-epoch run on them."""
    made = files.make_videoqa(str(tmp_path / "data"), clips={"train": 9, "val": 2, "test": 2}, frame_folders=True)
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG.format(output=tmp_path / "out", media=made["media"], skip=str(skip).lower(),
                                  **made["annotations"]))
    return path, made["media"]


def subprocess_env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, TESTS_DIR, env.get("PYTHONPATH", "")])
    return env


def train(cfg_path):
    return subprocess.run(torchrun_command(cfg_path, nproc=2), env=subprocess_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)


def job_log(tmp_path):
    (job,) = os.listdir(tmp_path / "out")
    return tmp_path / "out" / job, read_log(tmp_path / "out" / job)


def test_a_bad_val_clip_stops_train_py_before_training_naming_it(tmp_path):
    cfg_path, media = write_config(tmp_path, skip=False)
    open(os.path.join(media, "video10.mp4"), "wb").close()  # a val clip: 0 bytes
    result = train(cfg_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error (rank 0): ")]
    assert errors == ["train.py: error (rank 0): media check: 1 unreadable media file(s), before training; fix "
                      "or remove them, set skip_bad_media: true on the dataset to skip them, or "
                      "run.check_media: false to skip this check:"]
    assert (f"  videoqa_icl/val record 2 (question_id=20) and 1 more: Video file is empty (0 bytes): "
            f"{media}/video10.mp4") in result.stderr
    job_dir, records = job_log(tmp_path)
    assert not any("train_loss" in r for r in records)  # not one epoch trained (before: a whole one)
    assert not any(name.endswith(".pth") for name in os.listdir(job_dir))

    # evaluate.py checks the test split and its demo pool (train): a missing test clip, one line
    os.remove(os.path.join(media, "video12.mp4"))
    result = subprocess.run([sys.executable, "evaluate.py", "--cfg-path", str(cfg_path), "--options",
                             f"run.output_dir={tmp_path / 'eval'}"], env=subprocess_env(), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (f"evaluate.py: error: media check: 1 unreadable media file(s), before training; fix or remove "
            f"them, set skip_bad_media: true on the dataset to skip them, or run.check_media: false to skip "
            f"this check:\n  videoqa_icl/test record 2 (question_id=24) and 1 more: Video file not found: "
            f"{media}/video12.mp4\n") in result.stderr


def expected_train_skips(cfg_path, bad_clip, epochs=2):
    """Per epoch: the bad media the training split meets, computed in this process with the same
    builder (each epoch draws every training item once: 16 kept items = 2 ranks x 2 batches of 4)."""
    import lavis_mmict  # noqa: F401  (registers videoqa_icl)

    builder_cls = registry.get_builder_class("videoqa_icl")
    cfg = OmegaConf.merge(OmegaConf.load(builder_cls.default_config_path()).datasets.videoqa_icl,
                          OmegaConf.load(cfg_path).datasets.videoqa_icl)
    dataset = builder_cls(cfg).build_datasets()["train"]
    dataset.exclude_bad_media({bad_clip})
    counts = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        counts.append(sum(dataset[i][ITEM_SKIPPED_MEDIA_KEY] for i in range(len(dataset))))
    return len(dataset), counts


def test_skip_bad_media_trains_past_bad_clips_and_counts_every_skip(tmp_path):
    cfg_path, media = write_config(tmp_path, skip=True)
    open(os.path.join(media, "video0.mp4"), "wb").close()  # found by the media check: excluded
    # video1/ passes the check (its first frame reads) but a frame read in training is truncated
    frame = os.path.join(media, "video1", "frame_0004.jpg")
    data = open(frame, "rb").read()
    open(frame, "wb").write(data[:200])
    kept, expected = expected_train_skips(cfg_path, os.path.join(media, "video0.mp4"))
    assert kept == 16 and all(count > 2 for count in expected)  # video1's 2 queries + dropped demos

    result = train(cfg_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    _, records = job_log(tmp_path)
    assert {"media_check_num_bad_files": 1, "media_check_num_excluded_queries": 2} in records
    train_logs = [r for r in records if "train_loss" in r]
    assert [r["train_num_skipped_media"] for r in train_logs] == expected
    assert f"skipped {expected[0]} bad media items in epoch 0" in result.stdout + result.stderr
