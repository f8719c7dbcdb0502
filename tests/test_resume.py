"""Resuming training: a checkpoint restores the epoch (or iteration), the trainable parameters and
the optimizer state; a 2-process run killed with SIGKILL mid-epoch and resumed with
``run.resume_ckpt_path=auto`` ends with exactly the parameters and optimizer state of an
uninterrupted run, skipping the partial files a kill while saving leaves."""
import glob
import os
import signal
import subprocess
import time

import pytest
import torch

from _jobs import TRAINABLE, build_runner, read_log, trainable_params, write_config
from _subprocesses import no_network_attempts, run_ok, subprocess_env, torchrun_command
from lavis_mmict.checkpoints import CheckpointError, read_checkpoint


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


def test_iteration_runner_resumes_mid_data_epoch_exactly(tmp_path, monkeypatch, fresh_registry_paths):
    """Inner epochs of 6 iterations over 8 batches per data epoch: the checkpoint at iteration 6
    sits mid-data-epoch; the resumed run continues with batch 7 of that epoch, not batch 1."""
    import _toy_plugin

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


# --- killed mid-epoch, 2 processes ------------------------------------------------------------


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


@pytest.mark.slow
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
