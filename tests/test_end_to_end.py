"""MMICT through train.py/evaluate.py with 2 processes (torchrun, gloo) on the tiny model and
generated synthetic video-QA files: trains, validates, checkpoints, tests, evaluates again."""
import glob
import json
import os

import pytest
import torch

from _jobs import read_job_metrics
from _subprocesses import torchrun

SMALL_DATA = [
    "datasets.synthetic_videoqa_icl.build_info.num_clips.train=12",
    "datasets.synthetic_videoqa_icl.build_info.num_clips.val=3",
    "datasets.synthetic_videoqa_icl.build_info.num_clips.test=3",
]


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["projects/mmict/demo.yaml", "projects/mmict/demo_none.yaml"])
def test_two_process_training_and_evaluation(tmp_path, cfg):
    output_root = tmp_path / "output"
    options = SMALL_DATA + [
        f"datasets.synthetic_videoqa_icl.build_info.storage={tmp_path / 'data'}",
        f"run.output_dir={output_root}",
        "run.max_epoch=2", "run.batch_size_train=4", "run.batch_size_eval=5", "run.num_workers=0",
        "run.warmup_steps=2",
    ]
    torchrun("train.py", cfg, options,
             env_extra={"LAVIS_MMICT_EXTRA_IMPORTS": "_rank_probe", "RANK_PARAM_DUMP_DIR": str(tmp_path / "ranks")})

    job_dir, metrics = read_job_metrics(str(output_root))
    assert os.path.isfile(os.path.join(job_dir, "checkpoint_best.pth"))
    for split in ("val", "test"):
        assert 0.0 <= metrics[f"{split}_agg_metrics"] <= 100.0
        assert metrics[f"{split}_num_questions"] == 12  # 3 clips x 4 questions, each scored once
        merged = [p for p in glob.glob(os.path.join(job_dir, "result", f"{split}_*.json")) if "_rank" not in p]
        for path in merged:  # one result file per evaluation, merged over ranks
            results = json.load(open(path))
            assert len({r["question_id"] for r in results}) == len(results) == 12

    rank0 = torch.load(tmp_path / "ranks" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ranks" / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    checkpoint = torch.load(os.path.join(job_dir, "checkpoint_best.pth"), weights_only=True)
    assert set(checkpoint["model"]) == set(rank0)  # checkpoints hold exactly the trainable parameters
    assert not any(key.startswith("visual_encoder.") for key in checkpoint["model"])

    # evaluate-only from the checkpoint, 2 processes: the same test accuracy as the training run
    eval_root = tmp_path / "eval_output"
    torchrun("evaluate.py", cfg, options[:-5] + [f"run.output_dir={eval_root}", "run.batch_size_eval=5",
                                                  f"run.eval_ckpt_path={job_dir}/checkpoint_best.pth"])
    _, eval_metrics = read_job_metrics(str(eval_root))
    assert eval_metrics["test_agg_metrics"] == pytest.approx(metrics["test_agg_metrics"])
