"""A rank that fails in the middle of 2-process training takes the whole job down quickly, with
its error visible, instead of leaving the other rank waiting at a collective."""
import os
import socket
import subprocess
import sys
import time

import pytest

from _jobs import write_config
from _subprocesses import TRAIN_PY, subprocess_env, torchrun_command

FAIL_RANK1_MID_EPOCH = "1:0:2"  # rank 1 raises in epoch 0, step 2 of 4 (rank 0 is mid-allreduce)
MAX_EXIT_S = 60

pytestmark = pytest.mark.slow  # every test here runs torchrun or two train.py processes


def test_torchrun_exits_nonzero_soon_after_one_rank_fails(tmp_path):
    cfg_path = write_config(tmp_path, tmp_path / "out")
    start = time.monotonic()
    result = subprocess.run(
        torchrun_command(cfg_path),
        env=subprocess_env(TOY_FAIL_AT=FAIL_RANK1_MID_EPOCH), cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # the failing rank's own error, and torchrun's summary naming it as the root cause
    assert "ToyFailure: toy failure on rank 1 at epoch 0, step 2" in output
    root_cause = output[output.index("Root Cause"):]
    assert "rank      : 1" in root_cause and "toy failure on rank 1" in root_cause
    # bounded: most of the wall time is start-up (imports); the failure-to-exit part is short
    failed_at = _first_train_step_time(tmp_path / "out")
    assert failed_at is not None and time.time() - failed_at < MAX_EXIT_S, output[-3000:]
    assert time.monotonic() - start < 240


def _first_train_step_time(output_root):
    """When training started (log.txt's mtime is set as training begins: the config dump)."""
    logs = [os.path.join(d, "log.txt") for d, _, files in os.walk(output_root) if "log.txt" in files]
    return os.path.getmtime(logs[0]) if logs else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_surviving_rank_exits_on_its_own_without_torchrun(tmp_path):
    """No launcher to kill it: the rank left waiting in the all-reduce must fail by itself, long
    before run.dist_timeout_s (30 min by default)."""
    cfg_path = write_config(tmp_path, tmp_path / "out")
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = subprocess_env(TOY_FAIL_AT=FAIL_RANK1_MID_EPOCH)
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(
            [sys.executable, TRAIN_PY, "--cfg-path", str(cfg_path), "--options", "run.job_id=plain"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failed_at = _first_train_step_time(tmp_path / "out")
    assert time.time() - failed_at < MAX_EXIT_S + 30  # both ended soon after training began
    assert procs[1].returncode != 0 and "toy failure on rank 1" in outputs[1]
    assert procs[0].returncode != 0
    assert "Connection closed by peer" in outputs[0]  # gloo tells the survivor what happened


RANK_SCRIPT = '''
import os
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from lavis_mmict.dist import init_distributed
from lavis_mmict.cli import run_main

def gloo_threads():
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return sum(name.startswith("pt_gloo") for name in names)

def report(line):  # one write per line: the two ranks share torchrun's stdout
    os.write(1, (line + "\\n").encode())

class Runner:  # a reference cycle holding a DDP model, as LAVIS's runner is
    def __init__(self):
        self.me = self
        self.model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))

def work():
    runner = Runner()
    runner.model(torch.ones(2, 3)).sum().backward()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": dist.get_rank()})  # Python-owned tensors inside
    report(f"gloo threads during the run: {gloo_threads()}")

init_distributed(OmegaConf.create({"device": "cpu"}))
run_main("rank_script", work)
report(f"gloo threads after run_main: {gloo_threads()}")
'''


def test_successful_run_joins_the_gloo_threads_before_interpreter_exit(tmp_path):
    """Gloo's worker threads free finished collectives after the caller wakes up; one still doing
    so when the interpreter shuts down aborts the process (SIGABRT, "terminate called without an
    active exception"). After a successful run, ``run_main`` must have joined them, even while a
    reference cycle (the runner and its DDP model) still holds the process group."""
    if not os.path.isdir("/proc/self/task"):
        import pytest
        pytest.skip("needs /proc to list threads")
    script = tmp_path / "rank_script.py"
    script.write_text(RANK_SCRIPT)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script)],
        env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    during = [line for line in output.splitlines() if line.startswith("gloo threads during")]
    after = [line for line in output.splitlines() if line.startswith("gloo threads after")]
    assert len(during) == 2 and all(int(line.split(":")[1]) > 0 for line in during), output[-3000:]
    assert len(after) == 2 and all(int(line.split(":")[1]) == 0 for line in after), output[-3000:]
