"""One key for the demonstration format in both models (``model.demo_format``): the old AIM key is
a clear error, and ``evaluate.py --demo-formats`` sweeps AIM's formats (each row built with its own)."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from lavis_mmict.errors import ConfigError
from lavis_mmict.models.aim_opt import AIMOpt
from lavis_mmict.models.mmict_blip2 import MMICTBlip2
from lavis_mmict.reports import read_sweep_rows


@pytest.mark.parametrize("model_cls,valid", [(AIMOpt, "'fused', 'raw', 'none'"),
                                             (MMICTBlip2, "'mmict', 'vanilla_ict', 'text_only', 'none'")])
def test_the_old_demo_mode_key_is_a_clear_error(model_cls, valid):
    cfg = OmegaConf.load(model_cls.default_config_path("tiny")).model
    cfg.demo_mode = "raw"
    with pytest.raises(ConfigError, match=rf"model.demo_mode was renamed to model.demo_format \(valid for "
                                          rf"{model_cls.registered_name()}: \[{valid}\]\)"):
        model_cls.from_config(cfg)


def test_aim_reads_demo_format_and_rejects_unknown_values():
    cfg = OmegaConf.load(AIMOpt.default_config_path("tiny")).model
    assert cfg.demo_format == "fused" and "demo_mode" not in cfg
    cfg.demo_format = "raw"
    torch.manual_seed(0)
    assert AIMOpt.from_config(cfg).demo_format == "raw"
    cfg.demo_format = "vanilla"
    with pytest.raises(ValueError, match=r"Unknown model.demo_format 'vanilla'; valid: \['fused', 'raw', 'none'\]"):
        AIMOpt.from_config(cfg)


@pytest.mark.slow
def test_evaluate_demo_formats_sweep_on_an_aim_config(tmp_path):
    """evaluate.py --shots 2 --demo-formats fused raw none on projects/aim/demo_eval.yaml: one row per
    format, and every prediction of a row comes from a model built with that row's format."""
    output_dir = tmp_path / "out"
    options = [
        f"datasets.synthetic_videoqa_icl.build_info.storage={tmp_path / 'data'}",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.train=4",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.val=2",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.test=3",
        f"run.output_dir={output_dir}", "run.batch_size_eval=6", "run.num_workers=0",
        "run.task=icl_vqa_demo_probe",  # tests/_sweep_probe.py: records model.demo_format per answer
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LAVIS_MMICT_EXTRA_IMPORTS="_sweep_probe")
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, os.path.join(REPO_ROOT, "tests"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "evaluate.py", "--cfg-path", "projects/aim/demo_eval.yaml", "--shots", "2",
           "--demo-formats", "fused", "raw", "none", "--options", *options]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    (job_dir,) = glob.glob(str(output_dir / "*"))
    rows = read_sweep_rows(os.path.join(job_dir, "results.json"))
    assert [(r["demo_format"], r["shots"], r["split"]) for r in rows] == [
        ("fused", 2, "test"), ("raw", 2, "test"), ("none", 2, "test")]
    for row in rows:
        name = f"test_epoch{row['label']}_{row['shots']}shot.json"
        predictions = json.load(open(os.path.join(job_dir, "result", name)))
        assert len(predictions) == row["metrics"]["num_questions"] == 12  # 3 clips x 4 questions
        assert {p["num_demos"] for p in predictions} == {2}
        assert {p["demo_format"] for p in predictions} == {row["demo_format"]}  # the model's own attribute
