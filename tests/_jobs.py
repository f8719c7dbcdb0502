"""A training job in-process on the toy plugin (tests/_toy_plugin.py: a linear model on generated
features), as train.py builds it, and what any job leaves in its output dir (log.txt records)."""
import glob
import json
import os
from types import SimpleNamespace

from lavis import tasks
from lavis.common.config import Config
from lavis.common.registry import registry

import _toy_plugin  # noqa: F401  (registers _toy_linear_model and _toy_builder)
from lavis_mmict.dist import init_distributed, shared_job_id

TRAINABLE = {"head.weight", "head.bias"}  # the toy model's trainable parameters

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


def read_job_metrics(output_root):
    """The only job dir under ``output_root`` and the metrics its log.txt holds, merged into one dict."""
    (log_path,) = glob.glob(os.path.join(output_root, "*", "log.txt"))
    metrics = {}
    with open(log_path) as f:
        for line in f:
            if line.startswith("{") and line.rstrip().endswith("}") and "_agg_metrics" in line:
                metrics.update(json.loads(line))
    return os.path.dirname(log_path), metrics


def trainable_params(runner):
    model = runner.unwrap_dist_model(runner.model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
