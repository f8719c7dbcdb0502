"""Checkpoint files: written atomically, so a kill while saving leaves the previous one intact;
read weights-only, so a checkpoint carrying code is refused and nothing runs; a checkpoint of another
model, shape or run is refused naming the file and the keys, with nothing half-loaded."""
import glob
import os
import signal

import pytest
import torch

import lavis_mmict
from _jobs import TRAINABLE, build_runner, trainable_params, write_config
from lavis_mmict.checkpoints import (
    CheckpointError,
    atomic_torch_save,
    find_latest_checkpoint,
    read_checkpoint,
    remove_stale_temp_files,
)


# --- checkpoints of another model ------------------------------------------------------------


@pytest.fixture
def toy_checkpoint(tmp_path, fresh_registry_paths):
    runner = build_runner(write_config(tmp_path, tmp_path / "out"), "ckpt", "run.max_epoch=1",
                          "run.valid_splits=[]", "run.test_splits=[]")
    runner.train()
    return str(tmp_path / "out" / "ckpt" / "checkpoint_0.pth")


def test_checkpoint_of_another_shape_is_refused_with_keys_and_shapes(tmp_path, toy_checkpoint, fresh_registry_paths):
    runner = build_runner(write_config(tmp_path, tmp_path / "out2"), "wide", "model.hidden=16")
    untouched = trainable_params(runner)
    with pytest.raises(CheckpointError) as excinfo:
        runner._load_checkpoint(toy_checkpoint)
    message = str(excinfo.value)
    assert toy_checkpoint in message
    assert "head.weight: checkpoint (1, 8) vs model (1, 16)" in message
    assert "Traceback" not in message
    for name, value in trainable_params(runner).items():
        assert torch.equal(value, untouched[name])  # nothing half-loaded


def test_checkpoint_of_another_architecture_into_load_model(toy_checkpoint):
    with pytest.raises(CheckpointError) as excinfo:
        lavis_mmict.load_model("mmict_blip2", "tiny", checkpoint=toy_checkpoint)
    message = str(excinfo.value)
    assert toy_checkpoint in message
    assert "unexpected keys" in message and "head.weight" in message
    assert "trainable parameters missing" in message and "llm_model.lm_head.weight" in message
    assert set(read_checkpoint(toy_checkpoint)["model"]) == TRAINABLE


def test_optimizer_state_of_another_run_is_a_checkpoint_error(tmp_path, toy_checkpoint, fresh_registry_paths):
    saved = read_checkpoint(toy_checkpoint)
    saved["optimizer"]["param_groups"] = saved["optimizer"]["param_groups"][:1]
    bad = tmp_path / "bad_optimizer.pth"
    torch.save(saved, bad)
    runner = build_runner(write_config(tmp_path, tmp_path / "out3"), "opt")
    with pytest.raises(CheckpointError, match=str(bad)):
        runner._load_checkpoint(str(bad))


# --- code hidden in a checkpoint ---------------------------------------------------------------


class _CreatesFileWhenUnpickled:
    marker = None

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_loading_is_weights_only(tmp_path):
    _CreatesFileWhenUnpickled.marker = str(tmp_path / "code_ran")
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _CreatesFileWhenUnpickled()}, path)
    with pytest.raises(CheckpointError, match="Refusing to load"):
        read_checkpoint(str(path))
    assert not os.path.exists(_CreatesFileWhenUnpickled.marker)


def test_pickle_with_code_is_refused_everywhere_and_nothing_runs(tmp_path, fresh_registry_paths):
    _CreatesFileWhenUnpickled.marker = str(tmp_path / "code_ran")
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"head.weight": torch.zeros(1, 8)}, "epoch": 0,
                "payload": _CreatesFileWhenUnpickled()}, evil)

    with pytest.raises(CheckpointError, match=f"Refusing to load checkpoint {evil}"):
        lavis_mmict.load_model("mmict_blip2", "tiny", checkpoint=str(evil))
    runner = build_runner(write_config(tmp_path, tmp_path / "out"), "evil")
    with pytest.raises(CheckpointError, match=f"Refusing to load checkpoint {evil}"):
        runner._load_checkpoint(str(evil))  # run.resume_ckpt_path
    with pytest.raises(CheckpointError, match=f"Refusing to load checkpoint {evil}"):
        runner.load_model_weights(str(evil))  # run.eval_ckpt_path
    assert not os.path.exists(_CreatesFileWhenUnpickled.marker)


# --- a kill while saving, a truncated file -----------------------------------------------------


def _save_then_die(path, where):
    """In a forked child: save epoch 0, then die by SIGKILL while saving epoch 1 at ``where``."""
    pid = os.fork()
    if pid:
        return os.waitpid(pid, 0)[1]
    try:
        atomic_torch_save({"model": {"w": torch.zeros(3)}, "epoch": 0}, path)
        die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
        if where == "mid_write":
            def half_save(obj, f):
                f.write(b"PK\x03\x04 the first bytes of a zip archive")
                f.flush()
                die()
            torch.save = half_save
        else:
            os.replace = die
        atomic_torch_save({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    finally:
        os._exit(0)  # only reached if the kill did not happen: the test then fails


@pytest.mark.parametrize("where", ["mid_write", "before_rename"])
def test_kill_while_saving_keeps_the_previous_checkpoint(tmp_path, where):
    job_dir = tmp_path / "out" / "job"
    job_dir.mkdir(parents=True)
    path = job_dir / "checkpoint_0.pth"
    status = _save_then_die(str(path), where)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    (temp_file,) = glob.glob(str(job_dir / ".checkpoint_0.pth.*.tmp"))  # what the kill left
    assert read_checkpoint(str(path))["epoch"] == 0  # the previous complete checkpoint, intact
    assert find_latest_checkpoint(tmp_path / "out", readable=True) == str(path)
    if where == "mid_write":
        with pytest.raises(CheckpointError, match="corrupt"):
            read_checkpoint(temp_file)
    remove_stale_temp_files(job_dir)  # the runner does this before its next save
    assert not os.path.exists(temp_file) and path.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    # <output root>/<job>/checkpoint_3.pth, the root private to this test (pytest's shared base
    # folder holds other tests' checkpoints)
    job_dir = tmp_path / "output" / "job"
    job_dir.mkdir(parents=True)
    path = job_dir / "checkpoint_3.pth"
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 3}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(str(path))
    assert find_latest_checkpoint(job_dir.parent, readable=True) is None
