"""Runners on CPU: in-process (world size 1) and a 2-process torchrun/gloo run of train.py; the
epoch-aware loader; skipped media counted per epoch. Resuming: test_resume.py."""
import glob
import json
import logging
import os
import sys
import time

import pytest
import torch
import torch.distributed as dist
from lavis.common.registry import registry
from torch.utils.data import DataLoader, DistributedSampler

from _jobs import TRAINABLE, build_runner, read_log, trainable_params, write_config
from _subprocesses import REPO_ROOT, run_ok, subprocess_env
from lavis_mmict.checkpoints import read_checkpoint
from lavis_mmict.runners import EpochAwareLoader, IclRunnerBase, IclRunnerIter


def test_runners_registered():
    assert registry.get_runner_class("icl_runner_base") is IclRunnerBase
    assert registry.get_runner_class("icl_runner_iter") is IclRunnerIter


def test_cuda_request_falls_back_to_cpu_without_cuda(tmp_path, fresh_registry_paths):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: no fallback to test")
    runner = build_runner(write_config(tmp_path, tmp_path / "out", device="cuda"), "fallback")
    assert runner.config.run_cfg.device == "cpu" and runner.config.run_cfg.distributed is False
    assert runner.device.type == "cpu" and runner.scaler is None
    assert dist.is_initialized() and dist.get_world_size() == 1  # so LAVIS's barriers work


def test_train_epoch_runner_on_cpu(tmp_path, fresh_registry_paths):
    runner = build_runner(write_config(tmp_path, tmp_path / "out"), "job")
    assert runner.model is not None  # LAVIS's returns None on CPU
    before = trainable_params(runner)
    frozen_before = runner.unwrap_dist_model(runner.model).frozen.weight.detach().clone()
    runner.train()

    output_dir = tmp_path / "out" / "job"
    assert runner.output_dir == output_dir
    records = read_log(output_dir)
    val = [r for r in records if "val_agg_metrics" in r]
    assert len(val) == 2 and val[0]["val_num_questions"] == 13
    assert any("train_loss" in r for r in records)
    test = [r for r in records if "test_agg_metrics" in r]
    assert len(test) == 1 and test[0]["test_num_questions"] == 11
    assert (output_dir / "result" / "val_epoch0.json").is_file()
    assert (output_dir / "evaluate.txt").is_file()

    # trained: trainable params moved, frozen ones did not
    after = trainable_params(runner)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert torch.equal(frozen_before, runner.unwrap_dist_model(runner.model).frozen.weight)

    checkpoint = read_checkpoint(str(output_dir / "checkpoint_best.pth"))
    assert set(checkpoint["model"]) == TRAINABLE
    assert checkpoint["epoch"] == val[-1]["val_best_epoch"]
    assert {"optimizer", "config", "scaler"} <= set(checkpoint)
    assert not glob.glob(str(output_dir / ".*.tmp"))  # atomic write left no temp file

    # the demo datasets are told each new epoch, before its iterator is made
    train_dataset = runner.datasets["train"].datasets[0]
    assert train_dataset.epochs == [0, 1]


def test_relative_output_dir_is_under_cwd(tmp_path, monkeypatch, fresh_registry_paths):
    monkeypatch.chdir(tmp_path)
    runner = build_runner(write_config(tmp_path, "relative/out"), "rel")
    assert runner.output_dir == tmp_path / "relative" / "out" / "rel"
    assert (runner.output_dir / "result").is_dir()
    assert registry.get_path("output_dir") == str(tmp_path / "relative" / "out" / "rel")
    assert registry.get_path("result_dir") == str(tmp_path / "relative" / "out" / "rel" / "result")


class _EpochRecordingDataset(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n, self.epochs = n, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return index


def test_epoch_aware_loader():
    dataset = _EpochRecordingDataset(10)
    sampler = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=3)
    calls = []
    original_set_epoch = sampler.set_epoch
    sampler.set_epoch = lambda e: (calls.append(("sampler", e)), original_set_epoch(e))
    dataloader = DataLoader(
        torch.utils.data.ConcatDataset([dataset]), batch_size=2, sampler=sampler, drop_last=True
    )
    loader = EpochAwareLoader(dataloader)
    assert len(loader) == 2

    start = time.monotonic()
    batches = [next(loader).tolist() for _ in range(6)]  # three epochs
    assert time.monotonic() - start < 1.0  # no sleep between epochs
    assert loader.epoch == 2 and dataset.epochs == [0, 1, 2]
    assert calls == [("sampler", 0), ("sampler", 1), ("sampler", 2)]
    # each epoch follows the sampler's order for that epoch (a fresh seeded shuffle)
    reference = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=3)
    for epoch in range(3):
        reference.set_epoch(epoch)
        assert sum(batches[2 * epoch : 2 * epoch + 2], []) == list(reference)[:4]
    assert batches[0:2] != batches[2:4] or batches[2:4] != batches[4:6]


def test_epoch_aware_loader_rejects_empty_epoch():
    loader = EpochAwareLoader(DataLoader(list(range(3)), batch_size=4, drop_last=True))
    with pytest.raises(RuntimeError, match="no batches"):
        next(loader)


# --- skipped media (skip_bad_media, runner side) ---------------------------------------------


def test_skipped_media_are_counted_logged_and_never_reach_the_model(
    tmp_path, monkeypatch, caplog, fresh_registry_paths
):
    seen_keys = tmp_path / "seen_keys.jsonl"
    monkeypatch.setenv("TOY_SEEN_KEYS_FILE", str(seen_keys))
    runner = build_runner(
        write_config(tmp_path, tmp_path / "out"), "skips",
        "datasets._toy_builder.build_info.skipped_media_every=3",  # train + val batches report skips
    )
    with caplog.at_level(logging.INFO):
        runner.train()

    records = read_log(tmp_path / "out" / "skips")
    train_logs = [r for r in records if "train_loss" in r]
    # 32 train items, batches of 4, all used: indices 0, 3, ..., 30 are "skipped" -> 11 per epoch
    assert [r["train_num_skipped_media"] for r in train_logs] == [11, 11]
    # 13 val items: 0, 3, 6, 9, 12; the test split does not report skips: no entry
    assert [r["val_num_skipped_media"] for r in records if "val_agg_metrics" in r] == [5, 5]
    assert not any("test_num_skipped_media" in r for r in records)
    messages = [r.getMessage() for r in caplog.records]
    assert "skipped 11 bad media items in epoch 0" in messages
    assert "skipped 11 bad media items in epoch 1" in messages

    forward_keys = [json.loads(line) for line in seen_keys.read_text().splitlines()]
    assert len(forward_keys) == 16  # every training step went through the model ...
    assert not any("num_skipped_media" in keys for keys in forward_keys)  # ... without the key


def test_no_skipped_media_entry_without_the_key(tmp_path, fresh_registry_paths):
    runner = build_runner(write_config(tmp_path, tmp_path / "out"), "plain", "run.test_splits=[]")
    runner.train()
    assert not any(
        k.endswith("num_skipped_media") for r in read_log(tmp_path / "out" / "plain") for k in r
    )


# --- 2 processes: torchrun and gloo ------------------------------------------------------------


@pytest.mark.slow
def test_two_process_torchrun_train_then_evaluate(tmp_path):
    dump_dir = tmp_path / "dumps"
    dump_dir.mkdir()
    cfg_path = write_config(tmp_path, "out")  # relative: under the subprocess's cwd
    env = subprocess_env(TOY_PARAM_DUMP_DIR=str(dump_dir), TOY_SKEW_JOB_ID="1")
    run_ok(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         os.path.join(REPO_ROOT, "train.py"), "--cfg-path", str(cfg_path)],
        env, cwd=tmp_path,
    )

    # one output dir: rank 1's own (skewed) timestamp was overridden by rank 0's job id
    job_dirs = os.listdir(tmp_path / "out")
    assert len(job_dirs) == 1, job_dirs
    output_dir = tmp_path / "out" / job_dirs[0]
    records = read_log(output_dir)
    val = [r for r in records if "val_agg_metrics" in r]
    assert len(val) == 2
    # 13 questions over 2 ranks: the sampler pads one repeat; each question is scored once
    assert all(r["val_num_questions"] == 13 for r in val)
    assert [r for r in records if "test_agg_metrics" in r][0]["test_num_questions"] == 11
    assert set(read_checkpoint(str(output_dir / "checkpoint_best.pth"))["model"]) == TRAINABLE

    # both ranks evaluated identical trainable parameters, with the same output dir
    dumps = {}
    for path in glob.glob(str(dump_dir / "rank*_eval*.pt")):
        rank, call = os.path.basename(path)[4:-3].split("_eval")
        dumps[(int(rank), int(call))] = torch.load(path, weights_only=True)
    calls = sorted({call for _, call in dumps})
    assert calls == [0, 1, 2]  # val epoch 0, val epoch 1, test
    for call in calls:
        rank0, rank1 = dumps[(0, call)], dumps[(1, call)]
        assert rank0["output_dir"] == rank1["output_dir"] == str(output_dir)
        for name in TRAINABLE:
            assert torch.equal(rank0["params"][name], rank1["params"][name]), (call, name)

    # evaluate.py, one plain process, on the best checkpoint
    run_ok(
        [sys.executable, os.path.join(REPO_ROOT, "evaluate.py"), "--cfg-path", str(cfg_path),
         "--options", "run.output_dir=eval_out", "run.job_id=eval",
         f"run.eval_ckpt_path={output_dir / 'checkpoint_best.pth'}"],
        subprocess_env(), cwd=tmp_path,
    )
    eval_records = read_log(tmp_path / "eval_out" / "eval")
    test_logs = [r for r in eval_records if "test_agg_metrics" in r]
    assert len(test_logs) == 1
    trained_test = [r for r in records if "test_agg_metrics" in r][0]
    assert test_logs[0]["test_agg_metrics"] == pytest.approx(trained_test["test_agg_metrics"])
