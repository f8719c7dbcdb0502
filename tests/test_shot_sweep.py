"""Shot sweeps: evaluate.py --shots (real tiny model, one process), the report files, and
run_scripts/mmict/shot_sweep.py merging several runs into one table and plot."""
import glob
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from lavis_mmict import sweep as shot_sweep
from lavis_mmict.cli import sweep_demo_formats
from lavis_mmict.reports import (
    INCOMPLETE_NOTE,
    TRANSDUCTIVE_NOTE,
    markdown_report,
    read_sweep_rows,
    shots_table,
    write_sweep_report,
)

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


def test_report_labels_transductive_rows_and_incomplete_sweeps(tmp_path):
    rows = [_row("mmict", 0, 25.0), dict(_row("mmict", 2, 62.5), transductive=True), _row("none", 2, 30.0)]
    paths = write_sweep_report(rows, str(tmp_path), complete=False)
    assert paths["table"].splitlines()[2:] == [
        "| mmict (transductive) | 25.0 | 62.5 |", "| none | - | 30.0 |", "", TRANSDUCTIVE_NOTE]
    markdown = open(paths["markdown"]).read()
    assert INCOMPLETE_NOTE in markdown and "| mmict (transductive) | test | 2 | 62.5 |" in markdown
    assert "| mmict | test | 0 | 25.0 |" in markdown  # K=0 has no demonstrations: not transductive
    assert json.load(open(paths["json"]))["complete"] is False
    assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md", "results.png"]  # no temporaries
    assert INCOMPLETE_NOTE not in open(write_sweep_report(rows, str(tmp_path))["markdown"]).read()


def test_shot_sweep_script_keeps_the_results_of_earlier_runs_when_one_fails(tmp_path, monkeypatch):
    stale = tmp_path / "sweep" / "broken" / "20200101000000"
    write_sweep_report([_row("from_config", 0, 99.0)], str(stale))  # an older sweep's file: not this run's
    os.utime(stale / "results.json", (1, 1))

    def fake_run(command, check):
        options = command[command.index("--options") + 1:]
        run_output = next(o for o in options if o.startswith("run.output_dir=")).split("=", 1)[1]
        if os.path.basename(run_output) == "broken":
            return subprocess.CompletedProcess(command, 1)  # stopped before writing anything
        write_sweep_report([_row("from_config", 0, 10.0)], os.path.join(run_output, "20240101000000"))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(shot_sweep.subprocess, "run", fake_run)
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit, match=r"--run broken \(b.yaml\) failed with exit status 1.*results so far"):
        shot_sweep.main(["--shots", "0", "--output-dir", str(out), "--run", "good", "a.yaml",
                         "--run", "broken", "b.yaml", "--run", "never", "c.yaml"])
    content = json.load(open(out / "results.json"))
    assert content["complete"] is False and [r["label"] for r in content["rows"]] == ["good"]


def test_sweep_formats_default_to_the_configs_then_the_models_first_demo_format():
    aim, mmict = OmegaConf.create({"arch": "aim_opt"}), OmegaConf.create({"arch": "mmict_blip2"})
    assert sweep_demo_formats(None, aim) == ["fused"] and sweep_demo_formats(None, mmict) == ["mmict"]
    assert sweep_demo_formats(None, OmegaConf.create({"arch": "aim_opt", "demo_format": "raw"})) == ["raw"]
    assert sweep_demo_formats(["none", "fused"], aim) == ["none", "fused"]


def run_sweep(tmp_path, shots, *extra_options, demo_formats=(), env_extra=None):
    """evaluate.py --shots on the tiny model and 3 generated test clips (4 questions each)."""
    options = [
        f"datasets.synthetic_videoqa_icl.build_info.storage={tmp_path / 'data'}",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.train=6",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.val=2",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.test=3",
        f"run.output_dir={tmp_path / 'out'}", "run.batch_size_eval=6", "run.num_workers=0",
        "run.task=icl_vqa_demo_probe", *extra_options,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LAVIS_MMICT_EXTRA_IMPORTS="_sweep_probe",
               **(env_extra or {}))
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, os.path.join(REPO_ROOT, "tests"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "evaluate.py", "--cfg-path", "projects/mmict/demo.yaml", "--shots", *map(str, shots)]
    if demo_formats:
        cmd += ["--demo-formats", *demo_formats]
    return subprocess.run(cmd + ["--options", *options], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def predictions(job_dir, label, shots):
    return json.load(open(os.path.join(job_dir, "result", f"test_epoch{label}_{shots}shot.json")))


@pytest.mark.slow
def test_evaluate_shot_sweep_end_to_end(tmp_path):
    """evaluate.py --shots 0 2 --demo-formats mmict none: K demos really reach the model; the
    demo.yaml pool is the test split itself, so the K=2 scores are labelled transductive."""
    output_dir = tmp_path / "out"
    # training's varying K must not leak into the sweep, nor clash with K = 0 < num_min
    result = run_sweep(tmp_path, [0, 2], "datasets.synthetic_videoqa_icl.demonstrations.num_min=2",
                       demo_formats=["mmict", "none"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "| demo_format (question in Q-Former) | K=0 | K=2 |" in result.stdout
    assert "| mmict (yes) (transductive) |" in result.stdout and "| none (no)" in result.stdout
    assert "(transductive): the demonstrations come" in result.stdout
    assert "eta:" in result.stdout  # progress with ETA

    (job_dir,) = glob.glob(str(output_dir / "*"))
    rows = read_sweep_rows(os.path.join(job_dir, "results.json"))
    assert json.load(open(os.path.join(job_dir, "results.json")))["complete"] is True
    assert [(r["label"], r["shots"], r["split"], r["transductive"]) for r in rows] == [
        ("mmict", 0, "test", False), ("mmict", 2, "test", True), ("none", 0, "test", False),
        ("none", 2, "test", True)]
    for row in rows:
        records = predictions(job_dir, row["label"], row["shots"])
        assert len(records) == row["metrics"]["num_questions"] == 12  # 3 clips x 4 questions
        assert {p["num_demos"] for p in records} == {row["shots"]}  # same_source demos: 3 per clip
        assert {p["demo_format"] for p in records} == {row["label"]}
    for name in ("results.md", "results.png"):
        assert os.path.getsize(os.path.join(job_dir, name)) > 0

    log = [json.loads(line) for line in open(os.path.join(job_dir, "log.txt")) if line.startswith("{")]
    sweep_lines = [line for line in log if "demo_format" in line]
    assert [(line["demo_format"], line["shots"]) for line in sweep_lines] == [
        ("mmict", 0), ("mmict", 2), ("none", 0), ("none", 2)]
    assert all("test_agg_metrics" in line for line in sweep_lines)
    assert [line.get("test_transductive", False) for line in sweep_lines] == [False, True, False, True]


@pytest.mark.slow
def test_shot_sweep_checks_every_k_before_evaluating_any(tmp_path):
    """K=99 exceeds the demo pool: one error line before K=1 or K=2 is evaluated."""
    result = run_sweep(tmp_path, [1, 2, 99], "datasets.synthetic_videoqa_icl.demonstrations.strategy=random")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-5000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("evaluate.py: error")]
    assert len(errors) == 1 and "--shots 99:" in errors[0] and "num = 99" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not glob.glob(str(tmp_path / "out" / "*" / "result" / "*.json"))  # nothing was evaluated


@pytest.mark.slow
def test_shot_sweep_draws_nested_demo_sets_and_keeps_the_results_of_a_sweep_that_stops(tmp_path):
    """Same seed: the K=1 demos are the K=2 demos' last one; a failure at K=3 keeps K=1 and K=2."""
    result = run_sweep(tmp_path, [1, 2, 3], "datasets.synthetic_videoqa_icl.demonstrations.strategy=random",
                       env_extra={"SWEEP_PROBE_FAIL_AT_K": "3"})
    assert result.returncode != 0 and "failing at K=3" in result.stderr, result.stderr[-3000:]
    (job_dir,) = glob.glob(str(tmp_path / "out" / "*"))
    content = json.load(open(os.path.join(job_dir, "results.json")))
    assert content["complete"] is False and [r["shots"] for r in content["rows"]] == [1, 2]
    assert "Incomplete" in open(os.path.join(job_dir, "results.md")).read()
    one, two = ({p["question_id"]: p["demo_text"] for p in predictions(job_dir, "mmict", k)} for k in (1, 2))
    assert one.keys() == two.keys() and len(one) == 12
    assert all(len(two[q]) == 2 and two[q][1:] == one[q] for q in one)


def test_shot_sweep_script_merges_runs(tmp_path, monkeypatch):
    """Each --run is one evaluate.py --shots call with its own checkpoint; rows merge by label."""
    commands = []

    def fake_run(command, check):
        commands.append(command)
        assert check is False  # a failed run's rows are still merged
        options = command[command.index("--options") + 1:]
        run_output = next(o for o in options if o.startswith("run.output_dir=")).split("=", 1)[1]
        label = os.path.basename(run_output)
        shots = [int(k) for k in command[command.index("--shots") + 1: command.index("--metric")]]
        rows = [_row("from_config", k, 10.0 * k + (5 if label == "mmict" else 0)) for k in shots]
        write_sweep_report(rows, os.path.join(run_output, "20240101000000"))
        return subprocess.CompletedProcess(command, 0)

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
