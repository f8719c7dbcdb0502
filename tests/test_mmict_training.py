"""Every demo format trains and generates through train.py, for both LLM families (tiny OPT and
tiny FlanT5), on a few generated synthetic clips: one process, one epoch each."""
import glob
import importlib.util
import json
import os
import sys

import pytest
import torch

from _jobs import read_log
from conftest import REPO_ROOT
from lavis_mmict.models.mmict_blip2 import DEMO_FORMATS


@pytest.fixture(scope="module")
def train_script():
    spec = importlib.util.spec_from_file_location("mmict_train_script", os.path.join(REPO_ROOT, "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")  # generated once, shared by every run


@pytest.mark.parametrize("cfg", ["projects/mmict/demo.yaml", "projects/mmict/demo_t5.yaml"])
@pytest.mark.parametrize("demo_format", DEMO_FORMATS)
def test_train_py_trains_and_evaluates_every_format(train_script, data_dir, tmp_path, monkeypatch, cfg,
                                                    demo_format, fresh_registry_paths):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    output = tmp_path / "output"
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--cfg-path", os.path.join(REPO_ROOT, cfg), "--options",
        f"model.demo_format={demo_format}",
        f"datasets.synthetic_videoqa_icl.build_info.storage={data_dir}",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.train=4",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.val=1",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.test=1",
        "datasets.synthetic_videoqa_icl.num_frames=2",
        f"run.output_dir={output}", "run.max_epoch=1", "run.batch_size_train=8", "run.batch_size_eval=4",
        "run.num_workers=0", "run.warmup_steps=1", "run.num_beams=2", "run.max_len=3",
    ])
    train_script.main()

    (job_dir,) = glob.glob(str(output / "*"))
    records = read_log(job_dir)
    train = [r for r in records if "train_loss" in r]
    assert train and all(float(r["train_loss"]) == pytest.approx(float(r["train_loss"])) for r in train)
    for split in ("val", "test"):
        (metrics,) = [r for r in records if f"{split}_agg_metrics" in r]
        assert metrics[f"{split}_num_questions"] == 4
        (result_file,) = [p for p in glob.glob(os.path.join(job_dir, "result", f"{split}_*.json")) if "_rank" not in p]
        answers = json.load(open(result_file))
        assert len(answers) == 4 and all(isinstance(a["answer"], str) for a in answers)
    checkpoint = torch.load(os.path.join(job_dir, "checkpoint_best.pth"), weights_only=True)
    assert "llm_proj.weight" in checkpoint["model"]
    assert not any(key.startswith("visual_encoder.") for key in checkpoint["model"])
