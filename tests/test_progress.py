"""Long data commands show a progress bar with the time left (tqdm's ``elapsed<remaining``)."""
import importlib.util
import os
import re

import _dataset_files as files
import _release_files as releases
from conftest import REPO_ROOT
from lavis_mmict.datasets.web_pairs import generate_web_shards

BAR_WITH_ETA = r"{desc}: 100%\|.*\| {total}/{total} \[\d\d:\d\d<\d\d:\d\d"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "run_scripts", "data", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frame_extraction_shows_clips_done_and_time_left(tmp_path, capsys):
    for clip in range(3):
        files.write_video(str(tmp_path / "videos" / f"video{clip}.mp4"), seed=clip)
    load_script("extract_frames").extract_all(str(tmp_path / "videos"), str(tmp_path / "frames"), num_frames=2, size=0)
    assert re.search(BAR_WITH_ETA.format(desc="extracting frames", total=3), capsys.readouterr().err)


def test_converters_show_records_done_and_time_left(tmp_path, capsys):
    raw = str(tmp_path / "raw")
    releases.make_msrvtt_release(raw)
    load_script("convert_msrvtt_qa").convert(os.path.join(raw, "MSRVTT-QA"), str(tmp_path / "ann"))
    assert re.search(BAR_WITH_ETA.format(desc="test_qa.json", total=4), capsys.readouterr().err)
    releases.make_coco_karpathy_release(raw)
    load_script("convert_coco_karpathy").convert(os.path.join(raw, "dataset_coco.json"), str(tmp_path / "ann"))
    assert re.search(BAR_WITH_ETA.format(desc="images", total=8), capsys.readouterr().err)
    releases.make_vqav2_release(raw)
    vqa = os.path.join(raw, "vqav2")
    load_script("convert_vqav2").convert(os.path.join(vqa, "v2_OpenEnded_mscoco_val2014_questions.json"),
                                         os.path.join(vqa, "v2_mscoco_val2014_annotations.json"),
                                         str(tmp_path / "ann" / "vqa_val.json"))
    assert re.search(BAR_WITH_ETA.format(desc="val2014", total=4), capsys.readouterr().err)


def test_web_shard_generation_shows_pages_done_and_time_left(tmp_path, capsys):
    generate_web_shards(str(tmp_path / "shards"), num_shards=2, pages_per_shard=3, progress=True)
    assert re.search(BAR_WITH_ETA.format(desc="web shards", total=6), capsys.readouterr().err)
    generate_web_shards(str(tmp_path / "quiet"), num_shards=1, pages_per_shard=1)
    assert capsys.readouterr().err == ""  # library use (make demo's driver) stays quiet unless asked
