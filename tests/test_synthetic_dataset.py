"""Synthetic video-QA data, media loading, the demo-aware dataset, its collater and builder."""
import json
import os

import decord
import pytest
import torch
from lavis.common.registry import registry
from lavis.processors.blip_processors import BlipImageEvalProcessor, BlipQuestionProcessor
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from lavis_mmict.datasets.builders import SyntheticVideoQAICLBuilder
from lavis_mmict.datasets.batching import collate_icl_samples
from lavis_mmict.datasets.icl_dataset import ICLDataset
from lavis_mmict.datasets.media import MediaError, load_video_frames
from lavis_mmict.datasets.synthetic import CODE_WORDS, SYNTHETIC_VOCABULARY, generate_synthetic_videoqa

SMALL = {"train": 6, "val": 3, "test": 3}
FRAMES, SIZE = 8, 32


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    generate_synthetic_videoqa(root, seed=0, num_clips=SMALL, num_frames=FRAMES, size=SIZE)
    return root


def read_split(root, split):
    with open(os.path.join(root, "annotations", f"{split}.json")) as file:
        return json.load(file)


def dataset_config(storage, **demonstrations):
    """The builder's default config with storage moved and a small data set."""
    cfg = OmegaConf.load(SyntheticVideoQAICLBuilder.default_config_path()).datasets.synthetic_videoqa_icl
    cfg.build_info.storage = str(storage)
    cfg.build_info.num_clips = SMALL
    cfg.build_info.video_frames = FRAMES
    cfg.demonstrations = OmegaConf.merge(cfg.demonstrations, demonstrations)
    return cfg


def build(storage, **demonstrations):
    builder_cls = registry.get_builder_class("synthetic_videoqa_icl")
    return builder_cls(dataset_config(storage, **demonstrations)).build_datasets()


# --- generator -------------------------------------------------------------------------------


def test_clips_decode_with_decord_to_expected_frames_and_size(synthetic_root):
    videos = sorted(os.listdir(os.path.join(synthetic_root, "videos")))
    assert len(videos) == sum(SMALL.values())
    for name in videos[:3]:
        reader = decord.VideoReader(os.path.join(synthetic_root, "videos", name))
        assert len(reader) == FRAMES
        assert tuple(reader[0].shape) == (SIZE, SIZE, 3)


def test_annotations_have_lavis_fields_four_questions_per_clip_and_unique_ids(synthetic_root):
    all_ids = []
    for split, clips in SMALL.items():
        records = read_split(synthetic_root, split)
        assert len(records) == 4 * clips
        for record in records:
            assert set(record) == {"video", "question", "answer", "question_id", "question_type"}
            words = record["question"].rstrip("?").split() + [record["answer"]]
            assert set(words) <= set(SYNTHETIC_VOCABULARY)
        by_clip = {}
        for record in records:
            by_clip.setdefault(record["video"], []).append(record)
        for clip_records in by_clip.values():
            assert [r["question_type"] for r in clip_records] == ["color", "shape", "code", "code"]
            assert clip_records[2]["answer"] == clip_records[3]["answer"] in CODE_WORDS
        all_ids += [record["question_id"] for record in records]
    assert len(all_ids) == len(set(all_ids))


def test_second_call_is_a_no_op_and_a_new_seed_regenerates(tmp_path):
    root = str(tmp_path)
    params = dict(num_clips={"train": 4, "val": 2}, num_frames=4, size=SIZE)
    generate_synthetic_videoqa(root, seed=0, **params)
    watched = [os.path.join(root, "manifest.json"), os.path.join(root, "annotations", "train.json"),
               os.path.join(root, "videos", "clip_0000.mp4")]
    before = [os.stat(path).st_mtime_ns for path in watched]
    answers_seed0 = [r["answer"] for r in read_split(root, "train")]

    generate_synthetic_videoqa(root, seed=0, **params)
    assert [os.stat(path).st_mtime_ns for path in watched] == before

    generate_synthetic_videoqa(root, seed=1, **params)
    assert all(os.stat(p).st_mtime_ns != t for p, t in zip(watched, before))
    with open(watched[0]) as file:
        assert json.load(file)["seed"] == 1
    assert [r["answer"] for r in read_split(root, "train")] != answers_seed0
    assert not any(name.startswith(".tmp") for name in os.listdir(os.path.join(root, "videos")))


# --- builder, dataset, collater --------------------------------------------------------------


def test_builder_resolves_relative_storage_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    datasets = build("relative/data")
    assert set(datasets) == {"train", "val", "test"}
    assert os.path.isfile(tmp_path / "relative" / "data" / "manifest.json")
    assert datasets["val"].vis_root == str(tmp_path / "relative" / "data" / "videos")


def test_dataloader_batches_have_the_documented_layout(synthetic_root):
    dataset = build(synthetic_root)["train"]
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=dataset.collater)))
    frames = 4  # the config's num_frames
    assert batch["image"].shape == (4, frames, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["demo_image"].shape == (4, 3, frames, 3, 32, 32)
    assert batch["demo_mask"].dtype == torch.bool and batch["demo_mask"].all()
    assert len(batch["demo_text"]) == 4 and all(len(texts) == 3 for texts in batch["demo_text"])
    assert all(isinstance(t, str) for t in batch["text_input"] + batch["text_output"])
    assert batch["question_id"] == [0, 1, 2, 3]
    assert batch["video"] == ["clip_0000.mp4"] * 4
    assert batch["demo_text"][0][0].startswith("Question: ")


def test_collater_pads_varying_demo_counts_and_handles_no_demos(synthetic_root):
    dataset = build(synthetic_root)["val"]
    samples = [dataset[i] for i in range(3)]
    for sample, k in zip(samples, (2, 0, 1)):
        sample["demo_image"], sample["demo_text"] = sample["demo_image"][:k], sample["demo_text"][:k]
    batch = collate_icl_samples(samples)
    assert batch["demo_image"].shape[:2] == (3, 2)
    assert batch["demo_mask"].tolist() == [[True, True], [False, False], [True, False]]
    assert batch["demo_text"][1] == ["", ""] and batch["demo_text"][2][1] == ""
    assert torch.equal(batch["demo_image"][2, 0], samples[2]["demo_image"][0])
    assert not batch["demo_image"][1].any() and not batch["demo_image"][2, 1].any()

    for sample in samples:
        sample["demo_image"], sample["demo_text"] = sample["demo_image"][:0], []
    empty = collate_icl_samples(samples)
    assert empty["demo_image"].shape == (3, 0, 4, 3, 32, 32)
    assert empty["demo_mask"].shape == (3, 0) and empty["demo_text"] == [[], [], []]


def test_code_word_queries_see_the_code_word_in_a_same_clip_demo(synthetic_root):
    dataset = build(synthetic_root, strategy="same_source", num=3)["test"]
    code_queries = [i for i, r in enumerate(dataset.annotation) if r["question_type"] == "code"]
    for index in code_queries:
        item = dataset[index]
        assert any(item["text_output"] in text for text in item["demo_text"])


def test_training_redraws_demos_per_epoch_while_evaluation_keeps_them(synthetic_root):
    datasets = build(synthetic_root, strategy="random", num=3)
    train, val = datasets["train"], datasets["val"]
    epoch0 = [train.demo_indices(i) for i in range(len(train))]
    train.set_epoch(1)
    assert [train.demo_indices(i) for i in range(len(train))] != epoch0
    val_demos = [val.demo_indices(i) for i in range(len(val))]
    val.set_epoch(3)
    assert [val.demo_indices(i) for i in range(len(val))] == val_demos


def test_pool_train_gives_val_queries_demos_from_the_train_split(synthetic_root):
    val = build(synthetic_root, strategy="random", num=2, pool="train")["val"]
    train_videos = {r["video"] for r in read_split(synthetic_root, "train")}
    for index in range(len(val)):
        assert all(val.pool.annotation[d]["video"] in train_videos for d in val.demo_indices(index))
    assert val[0]["demo_image"].shape == (2, 4, 3, 32, 32)


def test_unknown_demonstrations_key_in_dataset_config_is_rejected(synthetic_root):
    with pytest.raises(ValueError, match=r"\['shots'\].*valid keys"):
        build(synthetic_root, shots=2)


# --- errors ----------------------------------------------------------------------------------


def write_split(folder, records):
    path = os.path.join(folder, "split.json")
    with open(path, "w") as file:
        json.dump(records, file)
    return path


def make_dataset(vis_root, ann_path, **kwargs):
    return ICLDataset.from_annotations(BlipImageEvalProcessor(32), BlipQuestionProcessor(), str(vis_root),
                                       [ann_path], demo_config={"num": 1, "strategy": "random"},
                                       num_frames=2, **kwargs)


def record(video, question_id):
    return {"video": video, "question": "what?", "answer": "red", "question_id": question_id}


def test_missing_and_zero_byte_videos_raise_media_error_naming_the_path(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(b"not a video" * 20)
    dataset = make_dataset(tmp_path, write_split(
        tmp_path, [record("missing.mp4", 1), record("empty.mp4", 2), record("garbage.mp4", 3)]))
    for index, name in enumerate(["missing.mp4", "empty.mp4", "garbage.mp4"]):
        with pytest.raises(MediaError, match=str(tmp_path / name)):
            dataset[index]
    with pytest.raises(MediaError, match="missing.mp4"):
        load_video_frames(str(tmp_path / "missing.mp4"), 4)


def test_record_missing_answer_names_the_file_record_and_key(tmp_path):
    records = [record("a.mp4", 10), {"video": "a.mp4", "question": "what?", "question_id": 11}]
    path = write_split(tmp_path, records)
    with pytest.raises(ValueError, match=rf"{path}.*record 1.*question_id=11.*\['answer'\]"):
        make_dataset(tmp_path, path)


def test_empty_split_names_the_annotation_file(tmp_path):
    path = write_split(tmp_path, [])
    with pytest.raises(ValueError, match=rf"Empty split.*{path}"):
        make_dataset(tmp_path, path)


def test_short_clips_repeat_frames_to_the_requested_count(synthetic_root):
    frames = load_video_frames(os.path.join(synthetic_root, "videos", "clip_0000.mp4"), 12)
    assert len(frames) == 12 and frames[0].size == (SIZE, SIZE)
