"""run_scripts/mmict/launch.sh with any experiment config, and slurm.sh (SLURM faked on PATH)."""
import os
import shlex
import subprocess

import pytest

from conftest import REPO_ROOT

LAUNCH = os.path.join(REPO_ROOT, "run_scripts", "mmict", "launch.sh")
SLURM = os.path.join(REPO_ROOT, "run_scripts", "mmict", "slurm.sh")

pytestmark = pytest.mark.slow  # bash subprocesses


def dry_run(command, cwd=REPO_ROOT, **env):
    result = subprocess.run(command, env={**os.environ, "DRY_RUN": "1", "NPROC_PER_NODE": "4", **env}, cwd=cwd,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def test_an_aim_config_keeps_its_own_model_type_and_output_dir():
    [words] = dry_run([LAUNCH, "projects/aim/vqav2.yaml", "model.demo_format=raw"])
    assert words[words.index("--cfg-path") + 1] == "projects/aim/vqav2.yaml"
    assert words[words.index("--options") + 1:] == ["model.demo_format=raw"]  # no pretrain_flant5xl for aim_opt
    [plain] = dry_run([LAUNCH, "projects/aim/msvd_qa.yaml"])
    assert "--options" not in plain and plain[-2:] == ["--cfg-path", "projects/aim/msvd_qa.yaml"]
    [with_llm] = dry_run([LAUNCH, "projects/aim/coco_caption.yaml", "opt6.7b"])
    assert with_llm[with_llm.index("--options") + 1:] == [
        "model.model_type=pretrain_opt6.7b", "run.output_dir=output/aim/coco_caption_opt6.7b"]


def test_a_config_relative_to_the_callers_directory(tmp_path):
    (tmp_path / "mine.yaml").write_text("model: {arch: mmict_blip2}\n")
    [words] = dry_run([LAUNCH, "mine.yaml"], cwd=tmp_path)
    assert words[words.index("--cfg-path") + 1] == str(tmp_path / "mine.yaml")


def test_slurm_runs_launch_on_every_node_with_its_rank_and_node_0_as_master(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\n[[ "$*" == "show hostnames gpu[07-08]" ]] && '
                                      'printf "gpu07\\ngpu08\\n"\n')
    # srun: run the task once per node, as SLURM would on each (here one after the other)
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\n'
                                  'for node in 0 1; do SLURM_NODEID=$node "$@"; done\n')
    for tool in ("scontrol", "srun"):
        os.chmod(bin_dir / tool, 0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2",
           "SLURM_SUBMIT_DIR": REPO_ROOT, "SLURM_GPUS_ON_NODE": "8", "NPROC_PER_NODE": ""}
    commands = dry_run([SLURM, "projects/mmict/msvd_qa.yaml", "opt2.7b", "run.max_epoch=1"], cwd=tmp_path, **env)
    assert len(commands) == 2
    for node_rank, words in enumerate(commands):
        assert {"--nnodes=2", f"--node_rank={node_rank}", "--nproc_per_node=8", "--master_addr=gpu07",
                "--master_port=29500"} <= set(words)
        assert words[words.index("--options") + 1:] == [
            "model.model_type=pretrain_opt2.7b", "run.output_dir=output/mmict/msvd_qa_opt2.7b", "run.max_epoch=1"]
    outside = subprocess.run([SLURM, "projects/mmict/msvd_qa.yaml"], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    assert outside.returncode != 0 and "not inside a SLURM allocation" in outside.stderr
