"""The nine *_icl builders on small generated files in their formats: splits, batches, training."""
import json
from types import SimpleNamespace

import pytest
import torch
from lavis.common.registry import registry
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

import _dataset_files as files
from lavis_mmict.cli import build_runner
from lavis_mmict.errors import ConfigError

F = 2  # frames per clip in these tests

# builder -> (maker of its files, data_type, kind)
BUILDERS = {
    "msvd_qa_icl": (lambda root: files.make_videoqa(root), "videos", "qa"),
    "msrvtt_qa_icl": (lambda root: files.make_videoqa(root, frame_folders=True), "videos", "qa"),
    "videoqa_icl": (lambda root: files.make_videoqa(root), "videos", "qa"),
    "vqav2_icl": (lambda root: files.make_vqav2(root), "images", "qa"),
    "imageqa_icl": (lambda root: files.make_imageqa(root), "images", "qa"),
    "msvd_caption_icl": (lambda root: files.make_captions(root, "videos"), "videos", "caption"),
    "msrvtt_caption_icl": (lambda root: files.make_captions(root, "videos"), "videos", "caption"),
    "coco_caption_icl": (lambda root: files.make_captions(root, "images", with_image_id=False), "images", "caption"),
    "caption_icl": (lambda root: files.make_captions(root, "images"), "images", "caption"),
}


def dataset_overrides(name, made, data_type, **demonstrations):
    """What a user writes under ``datasets: <name>:`` for files at ``made``'s paths."""
    return {
        "data_type": data_type,
        "build_info": {
            "annotations": {split: {"storage": path, "url": None} for split, path in made["annotations"].items()},
            data_type: {"storage": made["media"]},
        },
        "num_frames": F,
        "vis_processor": {"train": {"name": "blip_image_eval", "image_size": 32},
                          "eval": {"name": "blip_image_eval", "image_size": 32}},
        "demonstrations": {"num": 2, "strategy": "random", "pool": "train", "seed": 3, **demonstrations},
    }


def build(name, made, data_type, **demonstrations):
    builder_cls = registry.get_builder_class(name)
    cfg = OmegaConf.merge(
        OmegaConf.load(builder_cls.default_config_path()).datasets[name],
        dataset_overrides(name, made, data_type, **demonstrations),
    )
    return builder_cls(cfg).build_datasets()


@pytest.fixture(scope="module")
def made_files(tmp_path_factory):
    made = {}
    for name, (maker, _, _) in BUILDERS.items():
        made[name] = maker(str(tmp_path_factory.mktemp(name)))
    return made


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_builds_every_split_with_documented_batches(name, made_files):
    _, data_type, kind = BUILDERS[name]
    datasets = build(name, made_files[name], data_type)
    assert set(datasets) == {"train", "val", "test"}
    frames = F if data_type == "videos" else 1
    for split, dataset in datasets.items():
        assert dataset.annotation_paths == [made_files[name]["annotations"][split]]
        size = min(3, len(dataset))  # caption eval splits have one item per image (2 here)
        batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=dataset.collater)))
        assert batch["image"].shape == (size, frames, 3, 32, 32) and batch["image"].dtype == torch.float32
        assert batch["demo_image"].shape == (size, 2, frames, 3, 32, 32)
        assert batch["demo_mask"].shape == (size, 2) and batch["demo_mask"].all()
        assert [len(texts) for texts in batch["demo_text"]] == [2] * size
        assert batch["num_skipped_media"] == 0
        assert all(isinstance(text, str) for text in batch["text_input"])
        if kind == "caption":
            assert "image_id" in batch and "question_id" not in batch
            assert all(text.startswith("A short") for text in batch["demo_text"][0])
        else:
            assert "question_id" in batch
            assert all(text.startswith("Question: ") for text in batch["demo_text"][0])
        if data_type == "videos":
            assert all(video.endswith(".mp4") for video in batch["video"])
        # pool: train, so demonstrations come from the training split's records
        train_records = datasets["train"].annotation
        for index in range(len(dataset)):
            assert all(dataset.pool.annotation[d] is train_records[d] for d in dataset.demo_indices(index))


def test_caption_splits_one_item_per_caption_in_training_and_per_image_in_evaluation(made_files):
    made = made_files["coco_caption_icl"]
    datasets = build("coco_caption_icl", made, "images")
    train, val = datasets["train"], datasets["val"]
    assert len(train) == 4 * 3 and len(val) == 2
    # COCO Karpathy val records have no image_id: the image path stands for it.
    with open(made["annotations"]["val"]) as file:
        raw_val = json.load(file)
    assert val.captions_by_image_id == {record["image"]: record["caption"] for record in raw_val}
    item = val[0]
    assert item["image_id"] == raw_val[0]["image"] and item["text_output"] == raw_val[0]["caption"][0]
    assert item["text_input"] == "A short image caption:"
    assert train[0]["text_output"] == "a picture of thing 0 seen 0 times"
    assert train.captions_by_image_id["id0"] == [f"a picture of thing 0 seen {c} times" for c in range(3)]


def test_caption_prompts_are_drawn_per_epoch_in_training_and_fixed_in_evaluation(made_files):
    datasets = build("msvd_caption_icl", made_files["msvd_caption_icl"], "videos")
    train = datasets["train"]
    prompts = set(OmegaConf.load(registry.get_builder_class("msvd_caption_icl").default_config_path())
                  .datasets.msvd_caption_icl.caption_prompts)
    drawn = set()
    for epoch in range(4):
        train.set_epoch(epoch)
        drawn |= {train.dataset.text_fields(i)["text_input"] for i in range(len(train))}
    assert drawn <= prompts and len(drawn) > 2
    assert {datasets["test"].dataset.text_fields(i)["text_input"] for i in range(2)} == {"A short video caption:"}


def test_vqav2_trains_on_the_majority_answer_and_scores_the_answer_list(made_files):
    datasets = build("vqav2_icl", made_files["vqav2_icl"], "images")
    assert datasets["train"][0]["text_output"] == "red0"
    val_item = datasets["val"][0]
    assert sorted(set(val_item["text_output"])) == ["blue4", "red4"] and len(val_item["text_output"]) == 10
    assert datasets["test"][0]["text_output"] is None  # unlabelled test-dev style split
    assert val_item["answer_type"] == "other"  # for icl_vqa's acc_answer_type_<type>
    assert "Short answer: red0" in datasets["val"][0]["demo_text"][0] or any(
        "Short answer: red" in text for text in datasets["val"][0]["demo_text"])


def test_frame_folders_and_video_files_give_the_same_frames(tmp_path):
    from lavis_mmict.datasets.media import load_video_frames

    files.write_frame_folder(str(tmp_path / "clip"), seed=5, num_frames=6)
    frames = load_video_frames(str(tmp_path / "clip.mp4"), 3)  # missing .mp4 -> folder clip/
    assert len(frames) == 3 and frames[0].size == (32, 32)
    resized = load_video_frames(str(tmp_path / "clip"), 2, decode_size=[16, 24])
    assert resized[0].size == (24, 16)
    files.write_video(str(tmp_path / "v.mp4"), seed=5)
    assert load_video_frames(str(tmp_path / "v.mp4"), 2, decode_size=16)[0].size == (16, 16)


def test_relative_paths_resolve_under_build_info_root(tmp_path, monkeypatch):
    made = files.make_imageqa(str(tmp_path / "mine"))
    monkeypatch.chdir(tmp_path)
    overrides = dataset_overrides("imageqa_icl", made, "images")
    overrides["build_info"] = {"root": "mine", "annotations": {"train": {"storage": "annotations/train.json"},
                                                               "val": {"storage": "annotations/val.json"}},
                               "images": {"storage": "images"}}
    builder_cls = registry.get_builder_class("imageqa_icl")
    cfg = OmegaConf.merge(OmegaConf.load(builder_cls.default_config_path()).datasets.imageqa_icl, overrides)
    datasets = builder_cls(cfg).build_datasets()
    assert set(datasets) == {"train", "val"}
    assert datasets["val"].vis_root == str(tmp_path / "mine" / "images")
    assert datasets["val"][0]["image"].shape == (1, 3, 32, 32)


# --- one epoch of training through train.py for every builder ---------------------------------

TRAIN_RUN = {
    "task": "icl_vqa", "runner": "icl_runner_base", "device": "cpu", "seed": 1,
    "lr_sched": "linear_warmup_cosine_lr", "init_lr": 1e-3, "min_lr": 1e-5, "warmup_lr": 1e-5,
    "warmup_steps": 1, "weight_decay": 0.05, "max_epoch": 1, "batch_size_train": 4,
    "batch_size_eval": 4, "num_workers": 0, "amp": False, "num_beams": 1, "max_len": 3, "min_len": 1,
    "train_splits": ["train"], "evaluate": False,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_each_builder_trains_the_tiny_model_for_one_epoch_through_train_py(
        name, made_files, tmp_path, fresh_registry_paths):
    _, data_type, kind = BUILDERS[name]
    # Captions: training only (the captioning task is another module); QA also validates.
    valid = ["val"] if kind == "qa" else []
    config = {
        "model": {"arch": "mmict_blip2", "model_type": "tiny", "max_txt_len": 24},
        "datasets": {name: dataset_overrides(name, made_files[name], data_type)},
        "run": dict(TRAIN_RUN, output_dir=str(tmp_path / "out"), valid_splits=valid, test_splits=[],
                    job_id="job"),
    }
    if kind == "caption":
        config["model"]["prompt"] = "{}"  # the dataset's caption prompt is the LLM prompt
    cfg_path = tmp_path / "cfg.yaml"
    OmegaConf.save(OmegaConf.create(config), cfg_path)
    registry.mapping["paths"].pop("output_dir", None)
    registry.mapping["paths"].pop("result_dir", None)

    runner = build_runner(SimpleNamespace(cfg_path=str(cfg_path), options=None))  # train.py's set-up
    before = {n: p.detach().clone() for n, p in runner.model.named_parameters() if p.requires_grad}
    runner.train()
    after = dict(runner.unwrap_dist_model(runner.model).named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)  # it trained
    with open(tmp_path / "out" / "job" / "log.txt") as file:
        logged = [json.loads(line) for line in file if line.startswith("{") and line.rstrip().endswith("}")]
    assert any("train_loss" in record for record in logged)
    if valid:
        assert any("val_agg_metrics" in record for record in logged)


def test_any_lavis_dataset_can_be_wrapped(tmp_path):
    """LAVIS's own CaptionDataset (items: image (3,H,W), text_input = caption) becomes demo-aware."""
    from lavis.datasets.datasets.caption_datasets import CaptionDataset
    from lavis.processors.blip_processors import BlipCaptionProcessor, BlipImageEvalProcessor

    from lavis_mmict.datasets import ICLDataset

    made = files.make_captions(str(tmp_path), "images")
    lavis_train = CaptionDataset(BlipImageEvalProcessor(32), BlipCaptionProcessor(), made["media"],
                                 [made["annotations"]["train"]])
    train = ICLDataset(lavis_train, {"num": 2, "strategy": "same_source", "template": "Caption: {caption}"},
                       is_train=True, task_kind="caption", caption_prompt="Describe:")
    item = train[0]
    assert item["image"].shape == (1, 3, 32, 32) and item["text_input"] == "Describe:"
    assert item["text_output"] == "a picture of thing 0 seen 0 times"
    assert sorted(item["demo_text"]) == ["Caption: a picture of thing 0 seen 1 times",
                                         "Caption: a picture of thing 0 seen 2 times"]
    assert item["demo_image"].shape == (2, 1, 3, 32, 32)
    batch = train.collater([train[i] for i in range(3)])
    assert batch["demo_mask"].all() and batch["image"].shape == (3, 1, 3, 32, 32)
    assert train.annotation is lavis_train.annotation  # LAVIS attributes reach through the wrapper


def test_same_source_from_the_train_pool_for_test_clips_is_an_error_naming_strategy_and_pool(made_files):
    """Test clips are not train clips: every test query would get no demo, so building stops."""
    with pytest.raises(ConfigError, match=r"msvd_qa_icl/(val|test): 4 of 4 evaluation queries .*"
                                          r"`same_source` and pool `train`"):
        build("msvd_qa_icl", made_files["msvd_qa_icl"], "videos", strategy="same_source")
    splits = build("msvd_qa_icl", made_files["msvd_qa_icl"], "videos", strategy="same_source", fallback="random")
    assert all(len(splits[split].demo_indices(i)) == 2 for split in ("val", "test") for i in range(4))
