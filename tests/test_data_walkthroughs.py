"""docs/data.md's walkthroughs, run as written on miniatures of each release (_release_files.py).

Each ``<!-- walkthrough: NAME -->`` block of docs/data.md is run command by command (bash, from
the repository root) with ``$LAVIS_CACHE_ROOT`` and ``$RAW`` in a temporary folder. Two changes
only, both to the torchrun lines: ``--nproc_per_node`` (2 for MSRVTT-QA, 1 elsewhere, for 2 CPU
cores) and options appended for a tiny CPU run (tiny model, 32 px, 1 epoch, output in tmp).
"""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

import _release_files as releases
from conftest import REPO_ROOT

DOC = os.path.join(REPO_ROOT, "docs", "data.md")
BUILDERS = {"msvd_qa": "msvd_qa_icl", "msrvtt_qa": "msrvtt_qa_icl", "coco_caption": "coco_caption_icl",
            "vqav2": "vqav2_icl"}
MAKE_RELEASE = {"msvd_qa": releases.make_msvd_release, "msrvtt_qa": releases.make_msrvtt_release,
                "coco_caption": releases.make_coco_karpathy_release, "vqav2": releases.make_vqav2_release}
NPROC = {"msrvtt_qa": 2}


def walkthrough_commands(name):
    """The commands of docs/data.md's block ``<!-- walkthrough: name -->``: continuation lines
    joined, comment lines dropped."""
    text = open(DOC).read()
    match = re.search(rf"<!-- walkthrough: {name} -->\n```bash\n(.*?)```", text, re.S)
    assert match, f"docs/data.md has no walkthrough block {name!r}"
    joined = match.group(1).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def tiny_options(name, output_dir):
    builder = BUILDERS[name]
    options = [
        "model.model_type=tiny", "model.image_size=32",
        f"datasets.{builder}.vis_processor.train.image_size=32", f"datasets.{builder}.vis_processor.eval.image_size=32",
        f"datasets.{builder}.demonstrations.num=2", "run.device=cpu", "run.max_epoch=1", "run.batch_size_train=4",
        "run.batch_size_eval=4", "run.num_workers=0", "run.amp=False", "run.warmup_steps=2", "run.num_beams=1",
        "run.max_len=4", "run.min_len=1", f"run.output_dir={output_dir}",
    ]
    if name == "coco_caption":
        options += ["run.caption_metrics=[BLEU,CIDEr]", "run.caption_tokenizer=python"]
    return options


def adapt(command, name, output_dir):
    """The doc's command for this machine: its python, fewer processes, tiny-run options appended."""
    if not command.startswith("python "):
        return command
    command = shlex.quote(sys.executable) + command[len("python"):]
    if " -m torch.distributed.run " in command:
        command = re.sub(r"--nproc_per_node=\d+", f"--nproc_per_node={NPROC.get(name, 1)}", command)
        options = tiny_options(name, output_dir)
        command += ("" if " --options " in command else " --options") + " " + " ".join(map(shlex.quote, options))
    return command


def run_commands(name, data_root, raw, adapted, timeout=600):
    """Run the walkthrough ``name``'s commands, each as ``adapted(command)``, with ``$LAVIS_CACHE_ROOT``
    = data_root and ``$RAW`` = raw, offline; every one must succeed. Returns [(command, result)]."""
    env = dict(os.environ, LAVIS_CACHE_ROOT=str(data_root), RAW=str(raw), PYTHONPATH=REPO_ROOT,
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for name_ in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LAVIS_MMICT_EXTRA_IMPORTS"):
        env.pop(name_, None)
    outputs = []
    for command in walkthrough_commands(name):
        result = subprocess.run(["bash", "-c", adapted(command)], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        outputs.append((command, result))
    return outputs


def run_walkthrough(name, tmp_path):
    data_root, raw, output_dir = tmp_path / "lavis", tmp_path / "downloads", tmp_path / "output" / name
    expected = MAKE_RELEASE[name](str(raw))
    outputs = run_commands(name, data_root, raw, lambda command: adapt(command, name, output_dir))
    return data_root, output_dir, expected, outputs


def job_logs(output_dir):
    """{job folder: [log.txt json records]} of the run's jobs (train.py's, then evaluate.py's)."""
    jobs = {}
    for job in sorted(os.listdir(output_dir)):
        with open(os.path.join(output_dir, job, "log.txt")) as f:
            jobs[job] = [json.loads(line) for line in f if line.startswith("{") and "agg_metrics" in line]
    return jobs


def check_train_and_evaluate(output_dir, outputs, test_scored=True):
    train_job, evaluate_job = sorted(os.listdir(output_dir))
    assert os.path.isfile(os.path.join(output_dir, train_job, "checkpoint_best.pth"))
    logs = job_logs(output_dir)
    assert any("val_agg_metrics" in record for record in logs[train_job])
    if test_scored:
        assert any("test_agg_metrics" in record for record in logs[evaluate_job])
        evaluate_stdout = outputs[-1][1].stdout
        assert "test metrics" in evaluate_stdout and "agg_metrics" in evaluate_stdout
    results = os.listdir(os.path.join(output_dir, evaluate_job, "result"))
    assert any(r.startswith("test") for r in results), results
    return train_job, evaluate_job


def converted(path):
    with open(path) as f:
        return json.load(f)


def converter_showed_progress(outputs):
    """Every converter/extractor printed a tqdm bar with the elapsed<remaining time."""
    for command, result in outputs:
        if "run_scripts/data/" in command:
            assert re.search(r"100%\|.*\| \d+/\d+ \[\d\d:\d\d<\d\d:\d\d", result.stderr), (command, result.stderr)


@pytest.mark.slow
def test_msvd_qa_walkthrough_with_frames(tmp_path):
    data_root, output_dir, expected, outputs = run_walkthrough("msvd_qa", tmp_path)
    for split, count in expected.items():
        records = converted(data_root / "msvd" / "annotations" / f"qa_{split}.json")
        assert len(records) == count and records[0]["video"].endswith(".avi")
        assert all(os.path.isfile(data_root / "msvd" / "videos" / r["video"]) for r in records)
    assert len(os.listdir(data_root / "msvd" / "frames")) == 8  # one folder per clip
    converter_showed_progress(outputs)
    check_train_and_evaluate(output_dir, outputs)


@pytest.mark.slow
def test_msrvtt_qa_walkthrough_on_two_processes(tmp_path):
    data_root, output_dir, expected, outputs = run_walkthrough("msrvtt_qa", tmp_path)
    for split, count in expected.items():
        records = converted(data_root / "msrvtt" / "annotations" / f"qa_{split}.json")
        assert len(records) == count and "category_id" in records[0]
    converter_showed_progress(outputs)
    train_job, evaluate_job = check_train_and_evaluate(output_dir, outputs)
    predictions = converted(os.path.join(output_dir, evaluate_job, "result", sorted(
        r for r in os.listdir(os.path.join(output_dir, evaluate_job, "result")) if r.startswith("test"))[0]))
    assert sorted(p["question_id"] for p in predictions) == [200, 201, 202, 203]  # both ranks' halves, once


@pytest.mark.slow
def test_coco_caption_walkthrough(tmp_path):
    data_root, output_dir, expected, outputs = run_walkthrough("coco_caption", tmp_path)
    for split, count in expected.items():
        assert len(converted(data_root / "coco" / "annotations" / f"coco_karpathy_{split}.json")) == count
    converter_showed_progress(outputs)
    train_job, evaluate_job = check_train_and_evaluate(output_dir, outputs)
    test_record = [r for r in job_logs(output_dir)[evaluate_job] if "test_agg_metrics" in r][-1]
    assert {"test_CIDEr", "test_Bleu_4"} <= set(test_record), test_record


@pytest.mark.slow
def test_vqav2_walkthrough_scores_val_and_writes_test_dev_predictions(tmp_path):
    data_root, output_dir, expected, outputs = run_walkthrough("vqav2", tmp_path)
    for split, file in (("train", "vqa_train"), ("val", "vqa_val_eval"), ("test", "vqa_test")):
        records = converted(data_root / "coco" / "annotations" / f"{file}.json")
        assert len(records) == expected[split] and ("answer" in records[0]) == (split != "test")
        assert os.path.isfile(data_root / "coco" / "images" / records[0]["image"])
    converter_showed_progress(outputs)
    check_train_and_evaluate(output_dir, outputs, test_scored=False)
