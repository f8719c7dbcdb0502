"""README.md's "Add a dataset" example, extracted and run as written: a builder module of the
user's, its default YAML, an experiment YAML, the launch command, from YAML to a trained model.

The files are written into ``<tmp>/my_code`` and the data (a few clips) under the data root
``<tmp>/data/cooking``. Changes to the command, none to the files: ``lavis-mmict-train`` is this
checkout's ``train.py`` when the console script is not installed, this checkout is put on
``PYTHONPATH`` (as an installed package would be), and options for a tiny CPU run are appended.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import _dataset_files as files
from conftest import REPO_ROOT

TINY = ["model.model_type=tiny", "model.image_size=32", "datasets.cooking_qa_icl.vis_processor.train.image_size=32",
        "datasets.cooking_qa_icl.vis_processor.eval.image_size=32", "run.device=cpu", "run.max_epoch=1",
        "run.batch_size_train=4", "run.batch_size_eval=4", "run.num_workers=0", "run.amp=False",
        "run.warmup_steps=2", "run.num_beams=1", "run.max_len=4"]


def readme_section_blocks():
    """{first line of the block: block} of the code blocks in README's "Add a dataset"."""
    readme = open(os.path.join(REPO_ROOT, "README.md")).read()
    section = readme[readme.index("### Add a dataset"):readme.index("## Layout")]
    return {block.splitlines()[0]: block for block in re.findall(r"```\w+\n(.*?)```", section, re.S)}


def write_cooking_data(root):
    """$LAVIS_CACHE_ROOT/cooking/{train.json,val.json,videos/}: 4 + 2 clips, 3 questions each."""
    question_id = 0
    for split, clips in (("train", range(4)), ("val", range(4, 6))):
        records = []
        for clip in clips:
            files.write_video(os.path.join(root, "cooking", "videos", f"clip{clip:03d}.mp4"), seed=clip)
            for question in ("what is cut?", "what is fried?", "what is served?"):
                records.append({"video": f"clip{clip:03d}.mp4", "question": question,
                                "answer": f"onion{clip}", "question_id": question_id})
                question_id += 1
        files.write_json(os.path.join(root, "cooking", f"{split}.json"), records)


@pytest.mark.slow
def test_readme_custom_builder_example_trains_a_model(tmp_path):
    blocks = readme_section_blocks()
    my_code = tmp_path / "my_code"
    my_code.mkdir()
    for header, block in blocks.items():
        match = re.match(r"# my_code/([\w.]+)", header)
        if match:
            (my_code / match.group(1)).write_text(block)
    assert sorted(os.listdir(my_code)) == ["cooking_qa_icl.py", "cooking_qa_icl.yaml", "my_cooking.yaml"]
    write_cooking_data(str(tmp_path / "data"))

    [script] = [block for header, block in blocks.items() if header.startswith("cd my_code")]
    command = [line for line in script.splitlines()[1:] if line.strip()]
    assert len(command) == 1 and "lavis-mmict-train" in command[0]
    command = command[0].replace("PYTHONPATH=.", f"PYTHONPATH=.:{shlex.quote(REPO_ROOT)}")
    # the console script of this environment (make does not put .venv/bin on PATH), else train.py
    installed = shutil.which("lavis-mmict-train", path=os.path.dirname(sys.executable))
    command = command.replace("lavis-mmict-train", shlex.quote(installed) if installed else (
        f"{shlex.quote(sys.executable)} {shlex.quote(os.path.join(REPO_ROOT, 'train.py'))}"))
    command += " --options " + " ".join(TINY)

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PYTHONPATH")}
    env.update(LAVIS_CACHE_ROOT=str(tmp_path / "data"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(["bash", "-c", command], cwd=my_code, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    [job] = os.listdir(my_code / "output" / "cooking")  # run.output_dir: relative to my_code
    assert (my_code / "output" / "cooking" / job / "checkpoint_best.pth").is_file()
    with open(my_code / "output" / "cooking" / job / "log.txt") as log:
        records = [json.loads(line) for line in log if line.startswith("{") and "agg_metrics" in line]
    assert any(r.get("val_num_questions") == 6 for r in records), records  # the builder's val split was read
