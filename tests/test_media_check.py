"""Reading media: the OpenCV fallback for files decord cannot decode, the cheap probe, and the
runner's media check before training (all bad files in one error; skip_bad_media excludes them)."""
import json
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from lavis.processors.blip_processors import BlipImageEvalProcessor, BlipQuestionProcessor
from omegaconf import OmegaConf

import _dataset_files as files
from lavis_mmict.datasets.icl_dataset import ICLDataset
from lavis_mmict.datasets.media import MediaError, load_video_frames, probe_media
from lavis_mmict.runners.media_check import MediaCheckMixin


def write_opencv_clip(path, size=48, num_frames=6):
    """An mp4v clip as cv2.VideoWriter writes it; frame n is uniformly grey 40 * n."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (size, size))
    assert writer.isOpened()
    for n in range(num_frames):
        writer.write(np.full((size, size, 3), 40 * n, dtype=np.uint8))
    writer.release()


def test_a_clip_decord_cannot_decode_is_read_with_opencv(tmp_path):
    import decord

    path = tmp_path / "clip48.mp4"
    write_opencv_clip(path)
    with pytest.raises(Exception, match="size must exactly match"):  # why this file is the test case
        decord.VideoReader(str(path), num_threads=1).get_batch([0]).asnumpy()
    frames = load_video_frames(str(path), 3)  # frames 1, 3, 5 of 6
    assert [frame.size for frame in frames] == [(48, 48)] * 3
    assert [round(float(np.asarray(frame).mean()) / 40) for frame in frames] == [1, 3, 5]
    probe_media(str(path))  # readable: not reported by the media check


def test_probe_reads_the_first_frame_and_names_the_file(tmp_path):
    files.write_video(str(tmp_path / "good.mp4"), seed=1)
    files.write_frame_folder(str(tmp_path / "folder"), seed=2)
    files.write_image(str(tmp_path / "good.jpg"), seed=3)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    probe_media(str(tmp_path / "good.mp4"))
    probe_media(str(tmp_path / "folder.mp4"))  # the frame folder standing for the clip
    probe_media(str(tmp_path / "good.jpg"), is_video=False)
    for name, reason in [("empty.mp4", "empty"), ("corrupt.mp4", "Cannot decode"), ("missing.mp4", "not found")]:
        with pytest.raises(MediaError, match=rf"{reason}.*{tmp_path / name}"):
            probe_media(str(tmp_path / name))


# --- the runner's media check ------------------------------------------------------------------

class CheckingRunner(MediaCheckMixin):
    """What MediaCheckMixin needs of a runner: config.run_cfg, datasets, output_dir, log_stats."""

    def __init__(self, datasets, output_dir, **run):
        self.config = SimpleNamespace(run_cfg=OmegaConf.create({"num_workers": 2, **run}))
        self.datasets = datasets
        self.output_dir = str(output_dir)
        self.stats = []

    def log_stats(self, stats, split_name):
        self.stats.append((split_name, stats))


def qa(video, question_id):
    return {"video": video, "question": "what?", "answer": "red", "question_id": question_id}


@pytest.fixture
def splits(tmp_path):
    """train: 6 records over good0-2, empty.mp4 (twice), missing.mp4; val: good0, corrupt.mp4;
    each split is its own demo pool. Returns a function skip_bad_media -> {"mine": {"train": ..., "val": ...}}."""
    for n in range(3):
        files.write_video(str(tmp_path / f"good{n}.mp4"), seed=n)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    train = [qa("good0.mp4", 0), qa("empty.mp4", 1), qa("good1.mp4", 2), qa("empty.mp4", 3),
             qa("missing.mp4", 4), qa("good2.mp4", 5)]
    val = [qa("good0.mp4", 10), qa("corrupt.mp4", 11)]

    def build(skip_bad_media):
        datasets = {}
        for split, records in (("train", train), ("val", val)):
            path = files.write_json(str(tmp_path / f"{split}.json"), records)
            datasets[split] = ICLDataset.from_annotations(
                BlipImageEvalProcessor(32), BlipQuestionProcessor(), str(tmp_path), [path],
                demo_config={"num": 1, "strategy": "random"}, num_frames=2, name=f"mine/{split}",
                skip_bad_media=skip_bad_media, is_train=split == "train")
        return {"mine": datasets}

    return build


def test_every_bad_file_is_reported_at_once_naming_split_record_and_reason(splits, tmp_path):
    runner = CheckingRunner(splits(False), tmp_path / "out")
    os.makedirs(runner.output_dir)
    with pytest.raises(MediaError) as error:
        runner.check_media(["train", "val"])
    message = str(error.value)
    assert message.startswith("media check: 3 unreadable media file(s), before training")
    lines = message.splitlines()[1:]
    assert len(lines) == 3
    assert lines[0].startswith("  mine/train record 1 (question_id=1) and 1 more: Video file is empty")
    assert lines[0].endswith(str(tmp_path / "empty.mp4"))
    assert lines[1].startswith("  mine/train record 4 (question_id=4): Video file not found")
    assert lines[2].startswith(f"  mine/val record 1 (question_id=11): Cannot decode video {tmp_path / 'corrupt.mp4'}")
    report = json.load(open(os.path.join(runner.output_dir, "media_check.json")))
    assert [entry["path"] for entry in report] == [str(tmp_path / n) for n in ("empty.mp4", "missing.mp4", "corrupt.mp4")]


def test_skip_bad_media_excludes_bad_records_up_front_and_counts_them(splits, tmp_path):
    datasets = splits(True)
    runner = CheckingRunner(datasets, tmp_path / "out")
    os.makedirs(runner.output_dir)
    runner.check_media(["train", "val"])
    train, val = datasets["mine"]["train"], datasets["mine"]["val"]
    assert len(train) == 3 and len(val) == 1
    assert [train[i]["question_id"] for i in range(3)] == [0, 2, 5]
    assert runner.stats == [("media_check", {"num_bad_files": 3, "num_excluded_queries": 4})]
    assert train._bad_pool_indices == {1, 3, 4}  # never read as demonstrations


def test_only_the_splits_asked_for_are_checked_and_the_check_can_be_turned_off(splits, tmp_path):
    runner = CheckingRunner(splits(False), tmp_path / "out")
    os.makedirs(runner.output_dir)
    with pytest.raises(MediaError, match=r"media check: 1 unreadable.*\n  mine/val record 1"):
        runner.check_media(["val"])  # val's own records; its demo pool is val itself
    runner.check_media(["val"])  # checked once per runner
    CheckingRunner(splits(False), tmp_path / "out", check_media=False).check_media(["train", "val"])
