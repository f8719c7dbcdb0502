"""train.py, evaluate.py or a torchrun job in a child process: its environment, its command, a
check that it succeeded, and what the no-network guard logged. Tests using these are marked slow."""
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(REPO_ROOT, "tests")
NO_NETWORK_DIR = os.path.join(TESTS_DIR, "_no_network")  # holds the guard's sitecustomize.py
TRAIN_PY = os.path.join(REPO_ROOT, "train.py")
DEMO_CFG = os.path.join(REPO_ROOT, "projects", "mmict", "demo.yaml")


def subprocess_env(extra_imports="_toy_plugin", no_network_log=None, allow_loopback=False, **extra):
    """Environment for a train.py subprocess: repo + tests importable, offline, one thread.

    With ``no_network_log`` the no-network guard (tests/_no_network/sitecustomize.py) is active in
    the process and every child (torchrun's workers too) and logs any attempt to that file.
    """
    env = dict(os.environ)
    paths = [REPO_ROOT, TESTS_DIR]
    if no_network_log:
        paths.insert(0, NO_NETWORK_DIR)
        env["NO_NETWORK_LOG"] = str(no_network_log)
        env["NO_NETWORK_ALLOW_LOOPBACK"] = "1" if allow_loopback else "0"
    env.update(
        PYTHONPATH=os.pathsep.join(paths + [env.get("PYTHONPATH", "")]),
        LAVIS_MMICT_EXTRA_IMPORTS=extra_imports,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONWARNINGS="ignore",
    )
    env.update({k: str(v) for k, v in extra.items()})
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def torchrun_command(cfg_path, *options, nproc=2, script=TRAIN_PY):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", script, "--cfg-path", str(cfg_path)]
    return command + (["--options", *options] if options else [])


def run_ok(command, env, cwd, timeout=300):
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def torchrun(script, cfg, options, env_extra=None, nproc=2):
    """``script`` (train.py, evaluate.py: relative to the repository root, which is the working
    directory) under torchrun with ``nproc`` processes, offline; asserts that it succeeded."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(env_extra or {}))
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, TESTS_DIR, env.get("PYTHONPATH", "")])
    return run_ok(torchrun_command(cfg, *options, nproc=nproc, script=script), env, cwd=REPO_ROOT, timeout=600)


def no_network_attempts(log_path):
    """The attempts the guard logged (an empty list when there were none)."""
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        return [line for line in f if line.strip()]
