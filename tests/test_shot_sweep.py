"""Shot sweeps: evaluate.py --shots (real tiny model, one process), the report files, and
run_scripts/mmict/shot_sweep.py merging several runs into one table and plot."""
import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from lavis_mmict import sweep as shot_sweep
from lavis_mmict.reports import markdown_report, read_sweep_rows, shots_table, write_sweep_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(label, shots, acc, split="test"):
    return {"label": label, "demo_format": label, "shots": shots, "split": split,
            "metrics": {"agg_metrics": acc, "acc": acc, "num_questions": 20}, "checkpoint": None,
            "cfg_path": "x.yaml"}


ROWS = [_row("mmict", 0, 25.0), _row("mmict", 2, 62.5), _row("none", 0, 30.0), _row("none", 2, 30.0)]


def test_report_files(tmp_path):
    paths = write_sweep_report(ROWS, str(tmp_path / "out"), title="Demo")
    assert paths["table"] == shots_table(ROWS, "test") == "\n".join([
        "| demo_format | K=0 | K=2 |",
        "|---|---|---|",
        "| mmict | 25.0 | 62.5 |",
        "| none | 30.0 | 30.0 |",
    ])
    markdown = open(paths["markdown"]).read()
    assert markdown == markdown_report(ROWS, title="Demo")
    assert markdown.startswith("# Demo\n\n## test: agg_metrics by number of demonstrations K")
    assert "| mmict | test | 2 | 62.5 | 62.5 | 20 |" in markdown  # all-metrics table
    assert read_sweep_rows(paths["json"]) == ROWS
    with open(paths["png"], "rb") as f:
        assert f.read(8) == PNG_MAGIC

    caption_row = {"label": "mmict", "shots": 1, "split": "test", "metrics": {"CIDEr": 0.51234, "agg_metrics": 0.6}}
    assert "| mmict | 0.5123 |" in shots_table([caption_row], "test", "CIDEr")  # fractions: 4 decimals
    assert "| mmict | - |" in shots_table([caption_row], "test", "SPICE")  # missing metric
    with pytest.raises(ValueError, match="No sweep results"):
        write_sweep_report([], str(tmp_path))
    (tmp_path / "bad.json").write_text(json.dumps({"rows": [{"label": "x"}]}))
    with pytest.raises(ValueError, match=r"row 0 is missing \['shots', 'split', 'metrics'\]"):
        read_sweep_rows(str(tmp_path / "bad.json"))


@pytest.mark.slow
def test_evaluate_shot_sweep_end_to_end(tmp_path):
    """evaluate.py --shots 0 2 --demo-formats mmict none: K demos really reach the model."""
    output_dir = tmp_path / "out"
    options = [
        f"datasets.synthetic_videoqa_icl.build_info.storage={tmp_path / 'data'}",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.train=6",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.val=2",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.test=3",
        # training's varying K must not leak into the sweep, nor clash with K = 0 < num_min
        "datasets.synthetic_videoqa_icl.demonstrations.num_min=2",
        f"run.output_dir={output_dir}", "run.batch_size_eval=6", "run.num_workers=0", "run.task=icl_vqa_demo_probe",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LAVIS_MMICT_EXTRA_IMPORTS="_sweep_probe")
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, os.path.join(REPO_ROOT, "tests"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "evaluate.py", "--cfg-path", "projects/mmict/demo.yaml", "--shots", "0", "2",
           "--demo-formats", "mmict", "none", "--options", *options]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "| demo_format (question in Q-Former) | K=0 | K=2 |" in result.stdout
    assert "| mmict (yes) |" in result.stdout and "| none (no) |" in result.stdout
    assert "eta:" in result.stdout  # progress with ETA

    (job_dir,) = glob.glob(str(output_dir / "*"))
    rows = read_sweep_rows(os.path.join(job_dir, "results.json"))
    assert [(r["label"], r["shots"], r["split"]) for r in rows] == [
        ("mmict", 0, "test"), ("mmict", 2, "test"), ("none", 0, "test"), ("none", 2, "test")]
    for row in rows:
        predictions = json.load(open(os.path.join(job_dir, "result", f"test_epoch{row['label']}_{row['shots']}shot.json")))
        assert len(predictions) == row["metrics"]["num_questions"] == 12  # 3 clips x 4 questions
        assert {p["num_demos"] for p in predictions} == {row["shots"]}  # same_source demos: 3 per clip
        assert {p["demo_format"] for p in predictions} == {row["label"]}
    for name in ("results.md", "results.png"):
        assert os.path.getsize(os.path.join(job_dir, name)) > 0

    sweep_lines = [json.loads(line) for line in open(os.path.join(job_dir, "log.txt"))
                   if line.startswith('{"demo_format"')]
    assert [(line["demo_format"], line["shots"]) for line in sweep_lines] == [
        ("mmict", 0), ("mmict", 2), ("none", 0), ("none", 2)]
    assert all("test_agg_metrics" in line for line in sweep_lines)


def test_shot_sweep_script_merges_runs(tmp_path, monkeypatch):
    """Each --run is one evaluate.py --shots call with its own checkpoint; rows merge by label."""
    commands = []

    def fake_run(command, check):
        commands.append(command)
        options = command[command.index("--options") + 1:]
        run_output = next(o for o in options if o.startswith("run.output_dir=")).split("=", 1)[1]
        label = os.path.basename(run_output)
        shots = [int(k) for k in command[command.index("--shots") + 1: command.index("--metric")]]
        rows = [_row("from_config", k, 10.0 * k + (5 if label == "mmict" else 0)) for k in shots]
        write_sweep_report(rows, os.path.join(run_output, "20240101000000"))

    monkeypatch.setattr(shot_sweep.subprocess, "run", fake_run)
    out = tmp_path / "sweep"
    paths = shot_sweep.main(["--shots", "0", "1", "--output-dir", str(out), "--nproc", "2",
                             "--run", "mmict", "a.yaml", "ckpt_a.pth", "--run", "none", "b.yaml",
                             "--options", "run.batch_size_eval=4"])
    assert paths["table"].splitlines()[2:] == ["| mmict | 5.0 | 15.0 |", "| none | 0.0 | 10.0 |"]
    assert [r["label"] for r in read_sweep_rows(str(out / "results.json"))] == ["mmict"] * 2 + ["none"] * 2
    first, second = commands
    assert first[first.index("--nproc_per_node=2")] and first[first.index("--cfg-path") + 1] == "a.yaml"
    assert "run.eval_ckpt_path=ckpt_a.pth" in first and "run.batch_size_eval=4" in first
    assert not any(o.startswith("run.eval_ckpt_path") for o in second)  # no checkpoint: config weights

    with pytest.raises(SystemExit):
        shot_sweep.parse_args(["--shots", "0", "--output-dir", "x", "--run", "a"])
    with pytest.raises(SystemExit):
        shot_sweep.parse_args(["--shots", "0", "--output-dir", "x", "--run", "a", "c.yaml", "--run", "a", "d.yaml"])
