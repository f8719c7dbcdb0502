"""Bad inputs give clear errors naming the file / record / key; skip_bad_media skips and counts."""
import logging
import os

import numpy as np
import pytest
import torch
from lavis.common.registry import registry
from lavis.processors.blip_processors import BlipImageEvalProcessor, BlipQuestionProcessor
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

import _dataset_files as files
from lavis_mmict.datasets.demonstrations import DemonstrationConfig
from lavis_mmict.datasets.icl_dataset import ICLDataset
from lavis_mmict.datasets.media import MediaError, load_video_frames


def qa(video, question_id, **extra):
    return {"video": video, "question": "what?", "answer": "red", "question_id": question_id, **extra}


def videoqa_dataset(root, records, skip_bad_media=False, num=1, strategy="random", **kwargs):
    path = files.write_json(os.path.join(root, "ann.json"), records)
    return ICLDataset.from_annotations(
        BlipImageEvalProcessor(32), BlipQuestionProcessor(), str(root), [path],
        demo_config={"num": num, "strategy": strategy, "pool": "self"}, num_frames=2,
        skip_bad_media=skip_bad_media, name="mine/train", **kwargs)


@pytest.fixture
def media(tmp_path):
    """good0..good3.mp4, empty.mp4 (0 bytes), corrupt.mp4 (garbage), corrupt.jpg (truncated)."""
    for n in range(4):
        files.write_video(str(tmp_path / f"good{n}.mp4"), seed=n)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    files.write_image(str(tmp_path / "good.jpg"), seed=1)
    (tmp_path / "corrupt.jpg").write_bytes((tmp_path / "good.jpg").read_bytes()[:200])
    return tmp_path


@pytest.mark.parametrize("bad", ["missing.mp4", "empty.mp4", "corrupt.mp4"])
def test_bad_video_fails_fast_naming_split_record_and_file(media, bad):
    dataset = videoqa_dataset(media, [qa("good0.mp4", 0), qa(bad, 77), qa("good1.mp4", 2)])
    with pytest.raises(MediaError, match=rf"mine/train: record 1 \(question_id=77\).*{media / bad}"):
        dataset[1]
    with pytest.raises(MediaError):  # in a DataLoader too (the worker re-raises the message)
        list(DataLoader(dataset, batch_size=3, collate_fn=dataset.collater))


def test_a_media_error_from_a_dataloader_worker_keeps_its_one_line_message(media):
    dataset = videoqa_dataset(media, [qa("good0.mp4", 0), qa("missing.mp4", 77)], num=0)
    with pytest.raises(MediaError) as error:
        list(DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=dataset.collater))
    assert str(error.value) == (f"mine/train: record 1 (question_id=77): Video file not found: "
                                f"{media / 'missing.mp4'} (in DataLoader worker process 0)")


def test_unreadable_image_names_the_file(media):
    path = files.write_json(str(media / "img.json"), [
        {"image": "good.jpg", "question": "q", "answer": "a", "question_id": 1},
        {"image": "corrupt.jpg", "question": "q", "answer": "a", "question_id": 2}])
    dataset = ICLDataset.from_annotations(BlipImageEvalProcessor(32), BlipQuestionProcessor(), str(media),
                                          [path], data_type="images", name="img/val")
    assert dataset[0]["image"].shape == (1, 3, 32, 32)
    with pytest.raises(MediaError, match=rf"img/val: record 1 \(question_id=2\).*{media / 'corrupt.jpg'}"):
        dataset[1]


def test_clip_shorter_than_num_frames_repeats_frames_in_order(tmp_path):
    files.write_video(str(tmp_path / "short.mp4"), seed=3, num_frames=3)
    frames = [np.asarray(frame) for frame in load_video_frames(str(tmp_path / "short.mp4"), 7)]
    assert len(frames) == 7
    distinct = [frames[0]]
    for frame in frames[1:]:
        if not np.array_equal(frame, distinct[-1]):
            distinct.append(frame)
    assert len(distinct) == 3  # each of the 3 frames, repeated, in temporal order


def test_record_missing_a_field_names_file_record_and_field(tmp_path):
    path = files.write_json(str(tmp_path / "cap.json"), [{"video": "a.mp4", "caption": "x", "image_id": 1},
                                                         {"video": "b.mp4", "image_id": 2}])
    with pytest.raises(ValueError, match=rf"{path}: record 1 \(image_id=2\) is missing field\(s\) \['caption'\]"):
        ICLDataset.from_annotations(BlipImageEvalProcessor(32), BlipQuestionProcessor(), str(tmp_path), [path],
                                    task_kind="caption", is_train=True)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'ann.json'}: record 1 \(question_id=9\).*\['question'\]"):
        videoqa_dataset(tmp_path, [qa("a.mp4", 1), {"video": "a.mp4", "answer": "x", "question_id": 9}])


def test_answer_missing_from_some_eval_records_is_an_error_from_all_is_an_unlabelled_split(tmp_path):
    partial = [qa("a.mp4", 1), {"video": "a.mp4", "question": "q", "question_id": 2}]
    with pytest.raises(ValueError, match=r"record 1 \(question_id=2\).*\['answer'\]"):
        videoqa_dataset(tmp_path, partial, num=0)
    from lavis_mmict.datasets.records import load_qa_records

    path = files.write_json(str(tmp_path / "test.json"), [{"video": "a.mp4", "question": "q", "question_id": 1}])
    assert load_qa_records([path], "videos", is_train=False)[0]["question_id"] == 1
    with pytest.raises(ValueError, match=r"\['answer'\]"):
        load_qa_records([path], "videos", is_train=True)


def test_empty_split_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=rf"Empty split.*{tmp_path / 'ann.json'}"):
        videoqa_dataset(tmp_path, [])


def test_k_larger_than_the_pool_is_an_error_for_random_and_similar(tmp_path):
    records = [qa("good0.mp4", i) for i in range(3)]
    with pytest.raises(ValueError, match=r"mine/train: demonstrations.num = 3 but the demo pool has only 2"):
        videoqa_dataset(tmp_path, records, num=3)


def test_unknown_strategy_and_unknown_keys_name_the_key():
    with pytest.raises(ValueError, match=r"Unknown demonstrations.strategy 'rices'.*'similar'"):
        DemonstrationConfig.from_config({"num": 2, "strategy": "rices"})
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['nmu'\] under `demonstrations:`"):
        DemonstrationConfig.from_config({"nmu": 2})
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['vit'\] under `demonstrations.encoder:`"):
        DemonstrationConfig.from_config({"strategy": "similar", "encoder": {"vit": "tiny"}})
    with pytest.raises(ValueError, match=r"demonstrations.fallback 'fill'"):
        DemonstrationConfig.from_config({"fallback": "fill"})


def test_typo_under_demonstrations_in_a_builder_config_fails_before_reading_data(tmp_path):
    made = files.make_imageqa(str(tmp_path))
    builder_cls = registry.get_builder_class("imageqa_icl")
    cfg = OmegaConf.load(builder_cls.default_config_path()).datasets.imageqa_icl
    cfg.build_info.annotations = {"train": {"storage": made["annotations"]["train"]}}
    cfg.build_info.images.storage = made["media"]
    cfg.demonstrations.stratgy = "similar"
    with pytest.raises(ValueError, match=r"\['stratgy'\] under `demonstrations:`"):
        builder_cls(cfg).build_datasets()


def test_missing_annotation_file_names_path_and_config_key(tmp_path):
    builder_cls = registry.get_builder_class("msvd_qa_icl")
    cfg = OmegaConf.load(builder_cls.default_config_path()).datasets.msvd_qa_icl
    cfg.build_info.root = str(tmp_path)  # LAVIS's relative paths, under a folder without the files
    with pytest.raises(FileNotFoundError, match=rf"msvd_qa_icl: annotation file of split 'train' not found: "
                                                rf"{tmp_path}/msvd/annotations/qa_train.json.*build_info"):
        builder_cls(cfg).build_datasets()  # HF_HUB_OFFLINE=1 in tests: nothing is downloaded


def test_same_source_without_siblings_warns_once_and_falls_back_as_configured(tmp_path, caplog):
    from lavis_mmict.datasets.demonstrations import build_demo_sampler

    pool = [qa(f"clip{c}.mp4", c * 2 + n) for c in range(4) for n in range(2)]
    queries = [qa("other.mp4", 100), qa("clip1.mp4", 101), qa("another.mp4", 102)]
    with caplog.at_level(logging.WARNING):
        none = build_demo_sampler({"num": 2, "strategy": "same_source", "pool": "train"}, queries, pool, False, "x/val")
    assert [r.getMessage() for r in caplog.records if "x/val" in r.getMessage()] == [
        "x/val: 2 of 3 queries have no other annotation of their video in the demo pool (same_source); they "
        "get no demonstrations (set demonstrations.fallback: random to fill them)."]
    assert none.sample(0) == [] and sorted(none.sample(1)) == [2, 3]
    filled = build_demo_sampler({"num": 3, "strategy": "same_source", "pool": "train", "fallback": "random"},
                                queries, pool, False, "x/val")
    for epoch in (None, 0, 1):
        demos = filled.sample(1, epoch)
        assert len(demos) == 3 and len(set(demos)) == 3 and {2, 3} <= set(demos)
        assert len(filled.sample(0, epoch)) == 3


# --- skip_bad_media --------------------------------------------------------------------------

def lavis_train_concat(dataset):
    """What LAVIS's runner makes of a training split: its ConcatDataset (whose collater reads every
    sample's keys, keeps the shared ones, then calls ours)."""
    from lavis.datasets.data_utils import concat_datasets

    return concat_datasets({"train": [dataset]})["train"]


def test_skip_bad_media_replaces_an_unreadable_query_through_lavis_concat_collater(media, caplog):
    records = [qa("good0.mp4", 0), qa("missing.mp4", 1), qa("corrupt.mp4", 2), qa("good1.mp4", 3),
               qa("good2.mp4", 4), qa("good3.mp4", 5)]
    concat = lavis_train_concat(videoqa_dataset(media, records, skip_bad_media=True, num=0))
    with caplog.at_level(logging.WARNING):
        batch = concat.collater([concat[i] for i in range(4)])  # TypeError on None items before
    assert any("missing.mp4" in r.getMessage() for r in caplog.records)
    assert batch["image"].shape[0] == 4 and batch["num_skipped_media"] >= 2
    assert set(batch["question_id"]) <= {0, 3, 4, 5} and batch["question_id"][0] == 0
    assert batch["question_id"][3] == 3
    again = concat.collater([concat[i] for i in range(4)])  # the same replacements (seeded)
    assert again["question_id"] == batch["question_id"]
    assert again["num_skipped_media"] == batch["num_skipped_media"]
    # through a DataLoader as the runner builds it
    loader = DataLoader(concat, batch_size=3, collate_fn=concat.collater)
    assert [b["image"].shape[0] for b in loader] == [3, 3]


def test_skip_bad_media_counts_every_dropped_demonstration_through_lavis_concat_collater(media):
    records = [qa(f"good{n % 4}.mp4", n) for n in range(7)] + [qa("empty.mp4", 7)]
    dataset = videoqa_dataset(media, records, skip_bad_media=True, num=1, strategy="random")
    with_bad_demo = [i for i in range(7) if 7 in dataset.demo_indices(i)]
    assert 0 < len(with_bad_demo) < 7  # some items drop a demo, others do not
    concat = lavis_train_concat(dataset)
    batch = concat.collater([concat[i] for i in range(7)])
    assert batch["num_skipped_media"] == len(with_bad_demo)  # 0 before: the key was dropped
    assert batch["demo_mask"][:, 0].tolist() == [i not in with_bad_demo for i in range(7)]


def test_all_media_bad_is_a_clear_error_not_a_hang(media):
    dataset = videoqa_dataset(media, [qa("missing.mp4", 0), qa("empty.mp4", 1)], skip_bad_media=True, num=0)
    with pytest.raises(MediaError, match="could not find a readable item"):
        dataset[0]


def test_excluded_bad_media_leave_the_split_and_are_never_read_as_demonstrations(media, monkeypatch):
    records = [qa("good0.mp4", 0), qa("empty.mp4", 1), qa("good1.mp4", 2), qa("good2.mp4", 3)]
    dataset = videoqa_dataset(media, records, skip_bad_media=True, num=3)
    assert dataset.exclude_bad_media({str(media / "empty.mp4")}) == {"queries": 1, "pool_records": 1}
    assert len(dataset) == 3
    read = []
    original = dataset.pool.load_frames
    monkeypatch.setattr(dataset.pool, "load_frames", lambda i, p=None: read.append(i) or original(i, p))
    batch = dataset.collater([dataset[i] for i in range(3)])
    assert batch["question_id"] == [0, 2, 3] and 1 not in read
    assert batch["num_skipped_media"] == 3  # record 1 was drawn as a demo by all three queries
    assert batch["demo_mask"].sum(1).tolist() == [2, 2, 2]


def test_model_forward_ignores_the_num_skipped_media_key(media):
    from lavis.models import load_model

    model = load_model("mmict_blip2", "tiny")
    dataset = videoqa_dataset(media, [qa(f"good{n}.mp4", n) for n in range(4)], skip_bad_media=True, num=1)
    batch = dataset.collater([dataset[0], dataset[1]])
    assert batch["num_skipped_media"] == 0
    loss = model(batch)["loss"]
    assert torch.isfinite(loss)
