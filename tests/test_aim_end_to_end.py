"""aim_opt through train.py (iteration runner, web shards) and evaluate.py (few-shot), 2 processes."""
import glob
import os

import pytest
import torch

from _aim_model import build
from _jobs import read_job_metrics
from _subprocesses import torchrun
from lavis_mmict.datasets.web_pairs import generate_web_shards


@pytest.mark.slow
def test_aim_trains_on_web_shards_then_evaluates_few_shot(tmp_path):
    shards = generate_web_shards(str(tmp_path / "shards"), num_shards=4, pages_per_shard=4)
    output_root = tmp_path / "train"
    options = [
        f"datasets.web_pairs_icl.build_info.shards={os.path.dirname(shards[0])}/shard-{{00000..00003}}.tar",
        f"run.output_dir={output_root}", "run.max_iters=4", "run.iters_per_inner_epoch=2",
        "run.batch_size_train=4", "run.warmup_steps=1",
        f"model.demo_bank.disk_dir={tmp_path / 'bank'}",
    ]
    torchrun("train.py", "projects/aim/pretrain_webdataset.yaml", options,
             env_extra={"LAVIS_MMICT_EXTRA_IMPORTS": "_rank_probe", "RANK_PARAM_DUMP_DIR": str(tmp_path / "ranks")})

    (job_dir,) = glob.glob(str(output_root / "*"))
    checkpoint = torch.load(os.path.join(job_dir, "checkpoint_4.pth"), weights_only=True)
    assert set(checkpoint["model"]) == {"projection.weight", "projection.bias", "separator_embed"}
    assert checkpoint["iters"] == 4
    untrained = build(seed=0)
    assert not torch.equal(checkpoint["model"]["projection.weight"], untrained.projection.weight)
    rank0, rank1 = (torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # DDP kept the ranks in step
    assert glob.glob(str(tmp_path / "bank" / "*" / "*" / "*.safetensors"))

    small_data = [
        f"datasets.synthetic_videoqa_icl.build_info.storage={tmp_path / 'data'}",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.train=4",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.val=2",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.test=3",
        "run.batch_size_eval=5", "run.num_workers=0",
    ]
    # the fused model with the trained projection; raw/none use the same code path and frozen
    # weights (test_aim_model.py checks what each mode feeds the LLM)
    eval_root = tmp_path / "eval"
    options = small_data + [f"run.output_dir={eval_root}", "model.demo_format=fused",
                            f"run.eval_ckpt_path={job_dir}/checkpoint_4.pth"]
    torchrun("evaluate.py", "projects/aim/demo_eval.yaml", options)
    _, metrics = read_job_metrics(str(eval_root))
    assert metrics["test_num_questions"] == 12  # 3 clips x 4 questions, each scored once
    assert 0.0 <= metrics["test_agg_metrics"] <= 100.0
