"""Every user error ends train.py / evaluate.py with one `<script>: error: ...` line and status 1,
before the model is built where it can be; `--debug` shows the traceback instead."""
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

import _dataset_files as files
from _subprocesses import DEMO_CFG, REPO_ROOT, subprocess_env


def run_script(script, cfg_path, options, cwd, debug=False):
    command = [sys.executable, os.path.join(REPO_ROOT, script), "--cfg-path", str(cfg_path)]
    command += (["--debug"] if debug else []) + (["--options", *options] if options else [])
    return subprocess.run(command, env=subprocess_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(result, script, expected):
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{script}: error")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]


def videoqa_config(tmp_path, val_records=None, clips=None, **run):
    """A videoqa_icl experiment on generated clips, for the tiny model (32 px)."""
    made = files.make_videoqa(str(tmp_path / "data"), clips=clips or {"train": 2, "val": 1, "test": 1})
    if val_records is not None:
        files.write_json(made["annotations"]["val"], val_records)
    processor = {"name": "blip_image_eval", "image_size": 32}
    config = {
        "model": {"arch": "mmict_blip2", "model_type": "tiny"},
        "datasets": {"videoqa_icl": {
            "build_info": {"annotations": {s: {"storage": p} for s, p in made["annotations"].items()},
                           "videos": {"storage": made["media"]}},
            "num_frames": 2,
            "vis_processor": {"train": processor, "eval": processor},
            "demonstrations": {"num": 1, "strategy": "random", "pool": "train"}}},
        "run": {"task": "icl_vqa", "output_dir": str(tmp_path / "out"), "device": "cpu",
                "lr_sched": "constant_lr", "init_lr": 1e-4, "min_lr": 0, "weight_decay": 0.0,
                "max_epoch": 1, "batch_size_train": 2, "batch_size_eval": 2, "num_workers": 0,
                "train_splits": ["train"], "valid_splits": ["val"], "test_splits": ["test"], **run},
    }
    path = tmp_path / "cfg.yaml"
    OmegaConf.save(OmegaConf.create(config), path)
    return path


@pytest.mark.slow
def test_config_typo_is_one_line_and_debug_shows_the_traceback(tmp_path):
    options = ["run.resume_ckpt_pth=auto", f"run.output_dir={tmp_path / 'out'}"]
    result = run_script("train.py", DEMO_CFG, options, tmp_path)
    assert_one_line_error(result, "train.py", "unknown key run.resume_ckpt_pth; did you mean "
                                              "`run.resume_ckpt_path`?")
    assert not (tmp_path / "out").exists()
    result = run_script("train.py", DEMO_CFG, options, tmp_path, debug=True)
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


@pytest.mark.slow
def test_config_typo_under_torchrun_is_one_line_in_its_failure_summary(tmp_path):
    """torchrun prints each failed rank's error file: the one line, not our traceback."""
    from _subprocesses import torchrun_command

    command = torchrun_command(DEMO_CFG, "run.max_epochs=5", f"run.output_dir={tmp_path / 'out'}")
    result = subprocess.run(command, env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    summary = output[output.index("Root Cause"):]
    assert "traceback : train.py: error (rank " in summary and "did you mean `run.max_epoch`?" in summary
    assert "lavis_mmict" not in summary and 'File "' not in summary, summary  # no traceback of ours


@pytest.mark.slow
@pytest.mark.parametrize("case", ["duplicate_ids", "empty_answer", "small_train", "frame_size",
                                  "missing_checkpoint", "unlabelled_val"])
def test_user_errors_of_data_and_checkpoints_are_one_line(tmp_path, case):
    script, options = "train.py", []
    val = [{"video": "video2.mp4", "question": "q", "answer": "a", "question_id": 5}] * 2
    if case == "duplicate_ids":
        script, cfg = "evaluate.py", videoqa_config(tmp_path, val_records=val)
        expected = "repeated question ids (1 ids"
    elif case == "empty_answer":
        val = [dict(val[0], answer="")]
        cfg, expected = videoqa_config(tmp_path, val_records=val), "record 0 (question_id=5) has an empty answer ''"
    elif case == "small_train":
        cfg = videoqa_config(tmp_path, batch_size_train=16)
        expected = "Training split 'train' has 4 items (datasets.videoqa_icl: 4), fewer than one batch"
    elif case == "frame_size":
        cfg = videoqa_config(tmp_path)
        options = ["datasets.videoqa_icl.vis_processor.train.image_size=224"]
        expected = "gives 224 px frames but model mmict_blip2 tiny takes 32 px"
    elif case == "unlabelled_val":
        val = [{"video": "video2.mp4", "question": "q", "question_id": 5}]
        cfg = videoqa_config(tmp_path, val_records=val)
        expected = "datasets.videoqa_icl split 'val' has no answers (an unlabelled split) but is in run.valid_splits"
    else:
        script, cfg = "evaluate.py", videoqa_config(tmp_path)
        options = [f"run.eval_ckpt_path={tmp_path / 'nope.pth'}"]
        expected = "nope.pth"
    result = run_script(script, cfg, options, tmp_path)
    assert_one_line_error(result, script, expected)


def test_run_main_reports_user_errors_in_one_line_and_debug_reraises(capsys):
    from lavis_mmict.cli import run_main
    from lavis_mmict.errors import DiskFullError

    def full_disk():
        raise DiskFullError("Cannot write /x/checkpoint_3.pth: No space left on device (the previous file is kept)")

    with pytest.raises(SystemExit) as excinfo:
        run_main("train.py", full_disk)
    assert excinfo.value.code == 1
    assert capsys.readouterr().err == ("train.py: error: Cannot write /x/checkpoint_3.pth: No space left on "
                                       "device (the previous file is kept)\n")
    with pytest.raises(DiskFullError):
        run_main("train.py", full_disk, debug=True)

    def full_log():
        raise OSError(28, "No space left on device", "/x/log.txt")

    with pytest.raises(SystemExit):
        run_main("evaluate.py", full_log)
    assert capsys.readouterr().err == "evaluate.py: error: /x/log.txt: No space left on device\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_main("train.py", lambda: 1 / 0)
