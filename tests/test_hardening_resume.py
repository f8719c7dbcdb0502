"""Interrupted training: a 2-process run killed with SIGKILL mid-epoch and resumed with
``run.resume_ckpt_path=auto`` ends with exactly the parameters and optimizer state of an
uninterrupted run; checkpoints are written atomically, so a kill while saving leaves no corrupt
checkpoint for auto-resume to pick."""
import glob
import os
import signal
import subprocess
import time

import pytest
import torch

from _hardening import (
    REPO_ROOT,
    no_network_attempts,
    run_ok,
    subprocess_env,
    torchrun_command,
)
from lavis_mmict.checkpoints import (
    CheckpointError,
    atomic_torch_save,
    find_latest_checkpoint,
    read_checkpoint,
    remove_stale_temp_files,
)
from test_runners import TRAINABLE, read_log, write_config

# randomness in every part a resume must reproduce: dropout (model), noise augmentation (dataset,
# global RNG), the sampler's shuffle; plus batches that report skipped media (summed over ranks)
RANDOM_TRAINING = [
    "run.max_epoch=3", "run.test_splits=[]", "model.dropout=0.3",
    "datasets._toy_builder.build_info.augment_noise=0.5",
    "datasets._toy_builder.build_info.skipped_media_every=3",
]


def _params(dump_dir, rank):
    return torch.load(os.path.join(dump_dir, f"rank{rank}.pt"), weights_only=True)


def _wait_for(paths, proc, timeout):
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before reaching the kill point")
        if time.monotonic() > deadline:
            raise AssertionError(f"the run did not reach the kill point in {timeout} s")
        time.sleep(0.2)


def _gone(pid, timeout=20):
    """True once ``pid`` no longer runs (absent, or a zombie its new parent has yet to reap)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.2)
    return False


def test_sigkill_mid_epoch_then_auto_resume_equals_uninterrupted_run(tmp_path):
    cfg_path = write_config(tmp_path, "unused")
    net_log = tmp_path / "network_attempts.log"
    env = dict(extra_imports="_toy_plugin,_rank_probe", no_network_log=net_log, allow_loopback=True)

    # the uninterrupted reference and the run to be killed, side by side
    full = subprocess.Popen(
        torchrun_command(cfg_path, *RANDOM_TRAINING, f"run.output_dir={tmp_path / 'full'}", "run.job_id=full"),
        env=subprocess_env(**env, RANK_PARAM_DUMP_DIR=tmp_path / "dump_full"),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    stalled = [tmp_path / "rank0.pid", tmp_path / "rank1.pid"]
    crash_root = tmp_path / "crash"
    victim = subprocess.Popen(
        torchrun_command(cfg_path, *RANDOM_TRAINING, f"run.output_dir={crash_root}"),
        env=subprocess_env(**env, TOY_STALL_AT=f"1:2:{tmp_path}"),  # epoch 1, step 2 of 4
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(stalled, victim, timeout=240)
    finally:
        # a crash of the whole job: torchrun and both workers (each in its own session), mid-epoch 1
        worker_pids = [int(p.read_text()) for p in stalled if p.exists()]
        for pid in [victim.pid] + worker_pids:
            os.kill(pid, signal.SIGKILL)
        victim.wait()
    assert all(_gone(pid) for pid in worker_pids)
    full_output, _ = full.communicate(timeout=300)
    assert full.returncode == 0, full_output[-5000:]

    (crash_dir,) = glob.glob(str(crash_root / "*"))
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(crash_dir, "checkpoint_*.pth"))) == [
        "checkpoint_0.pth", "checkpoint_best.pth"]  # epoch 1 never finished
    # what a kill during a save leaves: a partial hidden temp file (and, from a non-atomic copy,
    # a newer truncated checkpoint elsewhere); auto-resume must take neither
    with open(os.path.join(crash_dir, ".checkpoint_1.pth.4242.tmp"), "wb") as f:
        f.write(b"PK\x03\x04 half a checkpoint")
    os.makedirs(crash_root / "zz_copied")
    complete = open(os.path.join(crash_dir, "checkpoint_0.pth"), "rb").read()
    (crash_root / "zz_copied" / "checkpoint_9.pth").write_bytes(complete[: len(complete) // 2])

    resumed = run_ok(
        torchrun_command(cfg_path, *RANDOM_TRAINING, f"run.output_dir={crash_root}",
                         "run.job_id=resumed", "run.resume_ckpt_path=auto"),
        subprocess_env(**env, RANK_PARAM_DUMP_DIR=tmp_path / "dump_resumed"), cwd=tmp_path,
    )
    output = resumed.stdout + resumed.stderr
    assert f"Resume checkpoint from {os.path.join(crash_dir, 'checkpoint_0.pth')}" in output
    assert "Skipping" in output and "checkpoint_9.pth" in output

    # it completed the planned epochs (1 and 2) ...
    resumed_dir = crash_root / "resumed"
    train_logs = [r for r in read_log(resumed_dir) if "train_loss" in r]
    assert len(train_logs) == 2
    assert read_checkpoint(str(resumed_dir / "checkpoint_2.pth"))["epoch"] == 2
    # ... counted the skipped media of each epoch over both ranks (11 of 32 indices are = 0 mod 3) ...
    assert [r["train_num_skipped_media"] for r in train_logs] == [11, 11]
    # ... and ends where the uninterrupted run ends, on both ranks, to the bit
    reference = _params(tmp_path / "dump_full", 0)
    assert set(reference) == TRAINABLE
    for rank in (0, 1):
        assert all(torch.equal(_params(tmp_path / "dump_full", rank)[k], reference[k]) for k in TRAINABLE)
        final = _params(tmp_path / "dump_resumed", rank)
        for name in TRAINABLE:
            assert torch.equal(final[name], reference[name]), (rank, name, final[name] - reference[name])
    full_optimizer = read_checkpoint(str(tmp_path / "full" / "full" / "checkpoint_2.pth"))["optimizer"]
    resumed_optimizer = read_checkpoint(str(resumed_dir / "checkpoint_2.pth"))["optimizer"]
    assert full_optimizer["state"].keys() == resumed_optimizer["state"].keys()
    for index, state in full_optimizer["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed_optimizer["state"][index][key])), key
    # nothing in either run reached for the network (loopback is allowed for the process group)
    assert no_network_attempts(net_log) == []


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
    path = tmp_path / "checkpoint_3.pth"
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 3}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(str(path))
    assert find_latest_checkpoint(tmp_path.parent, readable=True) is None


def test_iteration_runner_resumes_mid_data_epoch_exactly(tmp_path, monkeypatch, fresh_registry_paths):
    """Inner epochs of 6 iterations over 8 batches per data epoch: the checkpoint at iteration 6
    sits mid-data-epoch; the resumed run continues with batch 7 of that epoch, not batch 1."""
    import _toy_plugin
    from test_runners import build_runner, trainable_params

    cfg_path = write_config(tmp_path, tmp_path / "out", runner="icl_runner_iter")
    options = ["run.valid_splits=[]", "run.test_splits=[]", "model.dropout=0.3",
               "datasets._toy_builder.build_info.augment_noise=0.5"]

    def run(job_id, *extra):
        torch.manual_seed(0)  # the same frozen initialisation, as train.py's setup_seeds gives
        runner = build_runner(cfg_path, job_id, *options, *extra)
        runner.train()
        return runner

    full = trainable_params(run("full"))  # 12 iterations
    monkeypatch.setenv("TOY_FAIL_AT", "0:1:0")  # dies at the first step of inner epoch 1
    with pytest.raises(_toy_plugin.ToyFailure):
        run("interrupted")
    monkeypatch.delenv("TOY_FAIL_AT")
    checkpoint = str(tmp_path / "out" / "interrupted" / "checkpoint_6.pth")
    assert read_checkpoint(checkpoint)["loader_states"] == [[{"epoch": 0, "position": 6}]]
    resumed = run("resumed", f"run.resume_ckpt_path={checkpoint}")
    assert resumed.train_loader.state == {"epoch": 1, "position": 4}  # 12 = 8 + 4 batches drawn
    for name, value in trainable_params(resumed).items():
        assert torch.equal(value, full[name]), name
