"""Runners on CPU: in-process (world size 1) and a 2-process torchrun/gloo run of train.py."""
import glob
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from lavis import tasks
from lavis.common.config import Config
from lavis.common.registry import registry
from torch.utils.data import DataLoader, DistributedSampler

import _toy_plugin  # noqa: F401  (registers _toy_linear_model and _toy_builder)
from lavis_mmict.checkpoints import CheckpointError, read_checkpoint
from lavis_mmict.dist import init_distributed, shared_job_id
from lavis_mmict.runners import EpochAwareLoader, IclRunnerBase, IclRunnerIter

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(REPO_ROOT, "tests")
TRAINABLE = {"head.weight", "head.bias"}

CONFIG_TEMPLATE = """\
model:
  arch: _toy_linear_model
  model_type: default
datasets:
  _toy_builder:
    build_info: {{num_train: 32, num_val: 13, num_test: 11}}
run:
  task: icl_vqa
  runner: {runner}
  lr_sched: linear_warmup_cosine_lr
  init_lr: 0.1
  min_lr: 0.01
  warmup_lr: 0.01
  warmup_steps: 2
  weight_decay: 0.01
  max_epoch: 2
  max_iters: 12
  iters_per_inner_epoch: 6
  batch_size_train: 4
  batch_size_eval: 5
  num_workers: 0
  seed: 42
  output_dir: {output_dir}
  amp: false
  evaluate: false
  train_splits: ["train"]
  valid_splits: ["val"]
  test_splits: ["test"]
  device: {device}
  dist_url: env://
"""


def write_config(tmp_path, output_dir, runner="icl_runner_base", device="cpu"):
    path = tmp_path / f"{runner}.yaml"
    path.write_text(CONFIG_TEMPLATE.format(runner=runner, output_dir=output_dir, device=device))
    return path


def build_runner(cfg_path, job_id, *options):
    """What train.py does, in-process, with a fixed job id (several runners per test)."""
    registry.mapping["paths"].pop("output_dir", None)
    registry.mapping["paths"].pop("result_dir", None)
    cfg = Config(SimpleNamespace(cfg_path=str(cfg_path), options=[f"run.job_id={job_id}", *options]))
    init_distributed(cfg.run_cfg)
    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    runner_cls = registry.get_runner_class(cfg.run_cfg.runner)
    return runner_cls(
        cfg=cfg, job_id=shared_job_id(cfg.run_cfg), task=task, model=model, datasets=datasets
    )


def read_log(output_dir):
    """The JSON-lines records of a LAVIS log.txt (skipping the indented config dump)."""
    records = []
    with open(os.path.join(output_dir, "log.txt")) as f:
        for line in f:
            if line.startswith("{") and line.rstrip().endswith("}"):
                records.append(json.loads(line))
    return records


def trainable_params(runner):
    model = runner.unwrap_dist_model(runner.model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------


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


def test_resume_restores_epoch_params_and_optimizer(tmp_path, fresh_registry_paths):
    cfg_path = write_config(tmp_path, tmp_path / "out")
    first = build_runner(cfg_path, "first", "run.max_epoch=1", "run.valid_splits=[]", "run.test_splits=[]")
    first.train()
    checkpoint_path = str(tmp_path / "out" / "first" / "checkpoint_0.pth")
    saved = read_checkpoint(checkpoint_path)
    assert set(saved["model"]) == TRAINABLE and saved["epoch"] == 0

    second = build_runner(cfg_path, "second", "run.resume_ckpt_path=auto", "run.test_splits=[]")
    assert second.resume_ckpt_path == checkpoint_path  # newest checkpoint under output_dir
    second._load_checkpoint(second.resume_ckpt_path)
    assert second.start_epoch == 1
    for name, value in trainable_params(second).items():
        assert torch.equal(value, saved["model"][name]), name
    assert second.optimizer.state_dict()["state"]  # Adam moments restored
    assert second.train_loader.epoch == 1

    second.train()  # resumes at epoch 1 (loads the same checkpoint again) and trains only that
    train_dataset = second.datasets["train"].datasets[0]
    assert train_dataset.epochs == [1]
    assert [r["val_best_epoch"] for r in read_log(tmp_path / "out" / "second") if "val_agg_metrics" in r]


def test_resume_refuses_mismatched_checkpoint(tmp_path, fresh_registry_paths):
    cfg_path = write_config(tmp_path, tmp_path / "out")
    first = build_runner(cfg_path, "first", "run.max_epoch=1", "run.valid_splits=[]", "run.test_splits=[]")
    first.train()
    saved = read_checkpoint(str(tmp_path / "out" / "first" / "checkpoint_0.pth"))

    runner = build_runner(cfg_path, "second")
    untouched = trainable_params(runner)

    unexpected = dict(saved, model=dict(saved["model"], **{"bogus.weight": torch.zeros(2)}))
    bad_path = tmp_path / "unexpected.pth"
    torch.save(unexpected, bad_path)
    with pytest.raises(CheckpointError) as excinfo:
        runner._load_checkpoint(str(bad_path))
    assert str(bad_path) in str(excinfo.value) and "bogus.weight" in str(excinfo.value)

    missing = dict(saved, model={"head.weight": saved["model"]["head.weight"]})
    missing_path = tmp_path / "missing.pth"
    torch.save(missing, missing_path)
    with pytest.raises(CheckpointError, match="head.bias"):
        runner._load_checkpoint(str(missing_path))

    for name, value in trainable_params(runner).items():  # nothing was half-loaded
        assert torch.equal(value, untouched[name])


class _RunsCodeWhenUnpickled:
    marker = None

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_loading_is_weights_only(tmp_path):
    _RunsCodeWhenUnpickled.marker = str(tmp_path / "code_ran")
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _RunsCodeWhenUnpickled()}, path)
    with pytest.raises(CheckpointError, match="Refusing to load"):
        read_checkpoint(str(path))
    assert not os.path.exists(_RunsCodeWhenUnpickled.marker)


def test_relative_output_dir_is_under_cwd(tmp_path, monkeypatch, fresh_registry_paths):
    monkeypatch.chdir(tmp_path)
    runner = build_runner(write_config(tmp_path, "relative/out"), "rel")
    assert runner.output_dir == tmp_path / "relative" / "out" / "rel"
    assert (runner.output_dir / "result").is_dir()
    assert registry.get_path("output_dir") == str(tmp_path / "relative" / "out" / "rel")
    assert registry.get_path("result_dir") == str(tmp_path / "relative" / "out" / "rel" / "result")


def test_iteration_runner_saves_trainable_only_and_resumes(tmp_path, fresh_registry_paths):
    cfg_path = write_config(tmp_path, tmp_path / "out", runner="icl_runner_iter")
    runner = build_runner(cfg_path, "iters", "run.valid_splits=[]", "run.test_splits=[]")
    runner.train()
    # only the latest inner epoch's checkpoint is kept
    assert sorted(os.listdir(tmp_path / "out" / "iters")) == ["checkpoint_12.pth", "log.txt", "result"]
    checkpoint_path = str(tmp_path / "out" / "iters" / "checkpoint_12.pth")
    saved = read_checkpoint(checkpoint_path)
    assert set(saved["model"]) == TRAINABLE and saved["iters"] == 12  # LAVIS saved everything

    resumed = build_runner(cfg_path, "iters2", "run.valid_splits=[]", "run.test_splits=[]")
    resumed._load_checkpoint(checkpoint_path)
    assert resumed.start_iters == 12  # next iteration to run (LAVIS's: 13)
    assert resumed.train_loader.epoch == 12 // len(resumed.train_loader)


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


# ---------------------------------------------------------------------------------------------


def _subprocess_env(**extra):
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([REPO_ROOT, TESTS_DIR, env.get("PYTHONPATH", "")]),
        LAVIS_MMICT_EXTRA_IMPORTS="_toy_plugin",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _run(command, env, cwd):
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_two_process_torchrun_train_then_evaluate(tmp_path):
    dump_dir = tmp_path / "dumps"
    dump_dir.mkdir()
    cfg_path = write_config(tmp_path, "out")  # relative: under the subprocess's cwd
    env = _subprocess_env(TOY_PARAM_DUMP_DIR=str(dump_dir), TOY_SKEW_JOB_ID="1")
    _run(
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
    _run(
        [sys.executable, os.path.join(REPO_ROOT, "evaluate.py"), "--cfg-path", str(cfg_path),
         "--options", "run.output_dir=eval_out", "run.job_id=eval",
         f"run.eval_ckpt_path={output_dir / 'checkpoint_best.pth'}"],
        _subprocess_env(), cwd=tmp_path,
    )
    eval_records = read_log(tmp_path / "eval_out" / "eval")
    test_logs = [r for r in eval_records if "test_agg_metrics" in r]
    assert len(test_logs) == 1
    trained_test = [r for r in records if "test_agg_metrics" in r][0]
    assert test_logs[0]["test_agg_metrics"] == pytest.approx(trained_test["test_agg_metrics"])
