"""Demo feature cache (models/feature_cache.py): hits are exact, anything that changes the frames
or the encoder is a miss, augmented (training) frames never enter it, ranks share it on disk."""
import os

import pytest
import torch
from lavis.processors.blip_processors import BlipImageEvalProcessor, Blip2ImageTrainProcessor, BlipQuestionProcessor
from omegaconf import OmegaConf

from _batches import make_batch
from _dataset_files import make_videoqa
from lavis_mmict.datasets.batching import collate_icl_samples
from lavis_mmict.datasets.icl_dataset import ICLDataset
from lavis_mmict.models.feature_cache import DemoFeatureCache
from lavis_mmict.models.mmict_blip2 import MMICTBlip2

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "lavis_mmict", "configs", "models", "mmict_blip2_tiny.yaml")


def build(seed=0, **overrides):
    cfg = OmegaConf.load(TINY).model
    for key, value in overrides.items():
        cfg[key] = value
    torch.manual_seed(seed)
    return MMICTBlip2.from_config(cfg).eval()


def batch(seed=0):
    """Two queries with 3 and 2 real demos, each demo clip named by its media key."""
    demos = [["q one a one", "q two a two", "q three a three"], ["q four a four", "q five a five", ""]]
    return make_batch(["what is it", "who is there"], demos, answers=["a dog", "a cat"], seed=seed,
                      demo_media_keys=[["clip0", "clip1", "clip2"], ["clip10", "clip11", ""]])


@torch.no_grad()
def test_a_hit_gives_bit_identical_loss_and_generation_to_no_cache(tmp_path):
    plain = build()
    cached = build(demo_feature_cache="disk", demo_feature_cache_dir=str(tmp_path))
    samples = batch()
    reference = plain(samples)["loss"]
    first = cached(samples)["loss"]  # misses: computed and stored
    assert cached.demo_feature_cache.misses == 5 and cached.demo_feature_cache.hits == 0
    second = cached(samples)["loss"]  # hits
    assert cached.demo_feature_cache.hits == 5
    assert torch.equal(reference, first) and torch.equal(reference, second)
    # the cached entries are the ViT's own outputs for those clips (not only the loss agrees)
    demo_frames = samples["demo_image"][0, :2]
    assert torch.equal(cached.vit_features(demo_frames, ["clip0", "clip1"]), plain.run_vit(demo_frames))
    settings = dict(num_beams=2, max_length=4, min_length=4)
    assert cached.generate(samples, **settings) == plain.generate(samples, **settings)


@torch.no_grad()
def test_hits_replace_the_demo_frames_and_queries_are_never_cached():
    model = build(demo_feature_cache="memory")
    samples = batch()
    model(samples)
    cache = model.demo_feature_cache
    assert len(cache._memory) == 5  # the 5 real demos; no query, no padding slot
    # with every demo cached, the ViT reads only the 2 query clips
    seen = []
    handle = model.visual_encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    other = dict(samples, demo_image=torch.zeros_like(samples["demo_image"]))  # frames unused on hits
    assert torch.equal(model(other)["loss"], model(samples)["loss"])
    handle.remove()
    assert seen == [2 * 2, 2 * 2]  # 2 queries x 2 frames, per call


@torch.no_grad()
def test_another_encoder_or_loaded_vit_weights_are_misses(tmp_path):
    first = build(seed=0, demo_feature_cache="disk", demo_feature_cache_dir=str(tmp_path))
    samples = batch()
    first(samples)
    other = build(seed=1, demo_feature_cache="disk", demo_feature_cache_dir=str(tmp_path))
    other(samples)
    assert other.demo_feature_cache.hits == 0 and other.demo_feature_cache.misses == 5
    # loading new ViT weights into a model forgets its fingerprint: its old entries are not used
    first.visual_encoder.load_state_dict(other.visual_encoder.state_dict())
    first.demo_feature_cache.hits = 0
    first.demo_feature_cache._memory.clear()
    first(samples)
    assert first.demo_feature_cache.hits == 5  # now other's entries: the same encoder weights
    demo_frames = samples["demo_image"][0, :2]
    assert torch.equal(first.vit_features(demo_frames, ["clip0", "clip1"]), other.run_vit(demo_frames))


@torch.no_grad()
def test_ranks_share_entries_on_disk(tmp_path):
    rank0 = build(demo_feature_cache="disk", demo_feature_cache_dir=str(tmp_path))
    rank1 = build(demo_feature_cache="disk", demo_feature_cache_dir=str(tmp_path))
    samples = batch()
    rank0(samples)
    files = [os.path.join(d, f) for d, _, names in os.walk(tmp_path) for f in names]
    assert len(files) == 5 and all(f.endswith(".safetensors") for f in files)  # no temporary left
    assert torch.equal(rank1(samples)["loss"], rank0(samples)["loss"])
    assert rank1.demo_feature_cache.hits == 5 and rank1.demo_feature_cache.misses == 0


def test_memory_layer_is_bounded_and_modes_are_checked():
    cache = DemoFeatureCache("memory", memory_items=2)
    cache.store("fp", ["a", "b", "c", ""], torch.zeros(4, 1, 2, 3))
    assert [x is not None for x in cache.lookup("fp", ["a", "b", "c", ""])] == [False, True, True, False]
    with pytest.raises(ValueError, match="demo_feature_cache"):
        DemoFeatureCache("sometimes")
    with pytest.raises(ValueError, match="freeze_vit"):
        build(demo_feature_cache="memory", freeze_vit=False)


# ---------------------------------------------------------------------- keys from the dataset
def dataset(data, processor=None, num_frames=2, sampling="uniform"):
    return ICLDataset.from_annotations(
        processor or BlipImageEvalProcessor(32), BlipQuestionProcessor(), data["media"],
        [data["annotations"]["train"]], demo_config={"num": 2, "seed": 0}, num_frames=num_frames,
        frame_sampling=sampling,
    )


def test_dataset_keys_follow_file_frames_and_processor(tmp_path):
    data = make_videoqa(str(tmp_path), clips={"train": 4, "val": 1, "test": 1})
    base = dataset(data)
    item = base[0]
    assert len(item["demo_media_key"]) == len(item["demo_text"]) == 2
    assert all(len(key) == 64 for key in item["demo_media_key"])
    pool_index = base.demo_indices(0)[0]
    key = base.demo_media_key(pool_index)
    assert key == item["demo_media_key"][0]
    # records of the same clip share a key (2 questions per clip)
    same_clip = [i for i, r in enumerate(base.annotation) if r["video"] == base.annotation[pool_index]["video"]]
    assert {base.demo_media_key(i) for i in same_clip} == {key}
    assert dataset(data, num_frames=3).demo_media_key(pool_index) != key
    assert dataset(data, sampling="headtail").demo_media_key(pool_index) != key
    assert dataset(data, processor=BlipImageEvalProcessor(48)).demo_media_key(pool_index) != key
    # a rewritten file (new size/mtime) is another key
    path = base.pool.media_path(pool_index)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert base.demo_media_key(pool_index) != key


def test_augmented_demo_frames_get_no_key_and_collate_pads_keys(tmp_path):
    data = make_videoqa(str(tmp_path), clips={"train": 4, "val": 1, "test": 1})
    augmented = dataset(data, processor=Blip2ImageTrainProcessor(image_size=32))
    assert augmented[0]["demo_media_key"] == ["", ""]  # random crops/flips: never cached
    items = [dict(dataset(data)[0]), dict(dataset(data)[1])]
    items[1]["demo_text"], items[1]["demo_media_key"] = items[1]["demo_text"][:1], items[1]["demo_media_key"][:1]
    items[1]["demo_image"] = items[1]["demo_image"][:1]
    collated = collate_icl_samples(items)
    assert collated["demo_media_key"][1][1] == "" and collated["demo_mask"].tolist() == [[True, True], [True, False]]
