"""web_pairs_icl: webdataset shards (jpg + txt/json) read as sequences of K + 1 consecutive pairs."""
import io
import os

import pytest
import torch
import webdataset as wds
from lavis.common.registry import registry
from lavis.processors.blip_processors import BlipImageEvalProcessor
from omegaconf import OmegaConf

from lavis_mmict.datasets import web_pairs
from lavis_mmict.datasets.web_pairs import (
    EpochShardSource,
    WebPairsICLDataset,
    WebShardError,
    generate_web_shards,
    read_shard_keys,
)

PROCESSOR = BlipImageEvalProcessor(image_size=32)


def pipeline(pattern, num_demos=3, shuffle_buffer=0, **kwargs):
    dataset = WebPairsICLDataset(pattern, PROCESSOR, PROCESSOR, lambda text: text, num_demos=num_demos,
                                 shuffle_buffer=shuffle_buffer, **kwargs)
    return dataset.pipeline


def shard_contents(path):
    import tarfile

    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_generated_shards_are_deterministic_pages_of_four(tmp_path):
    first = generate_web_shards(str(tmp_path / "a"), num_shards=2, pages_per_shard=3, seed=5)
    second = generate_web_shards(str(tmp_path / "b"), num_shards=2, pages_per_shard=3, seed=5)
    for a, b in zip(first, second):
        assert read_shard_keys(a) == read_shard_keys(b)
        assert shard_contents(a) == shard_contents(b)
    assert shard_contents(first[0]) != shard_contents(generate_web_shards(str(tmp_path / "c"), 1, 3, seed=6)[0])
    keys = read_shard_keys(first[0])
    assert len(keys) == 12 and keys[:4] == [f"00000_0000_{i}" for i in range(4)]


@pytest.mark.parametrize("text_format", ["json", "txt"])
def test_sequences_are_consecutive_pairs_of_one_shard_with_the_icl_batch_layout(tmp_path, text_format):
    generate_web_shards(str(tmp_path), num_shards=2, pages_per_shard=2, text_format=text_format)
    source = pipeline(str(tmp_path / "shard-{00000..00001}.tar"), endless=False)
    items = list(source)
    assert len(items) == 4  # 2 shards x 8 pairs / 4 per sequence
    for item in items:
        shard, key = item["image_id"].split("/")
        page = key.rsplit("_", 1)[0]
        assert key.endswith("_3")  # the query is the 4th pair of its page; the demos the 3 before
        assert len(item["demo_text"]) == 3 and item["demo_mask"].tolist() == [True] * 3
        code_words = {text.split("Short answer: ")[1] for text in item["demo_text"] + [item["text_output"]]
                      if "code" in text or "secret" in text}
        assert len(code_words) == 1  # all pairs of one page: the same hidden code word
        assert item["image"].shape == (1, 3, 32, 32) and item["demo_image"].shape == (3, 1, 3, 32, 32)
        assert item["text_input"] == "" and item["text_output"].startswith("Question: ")

    # the runner batches the pipeline with its collater (found through LAVIS's ChainDataset)
    web_pipeline = pipeline(str(tmp_path / "shard-{00000..00001}.tar"), endless=False)
    loader = torch.utils.data.DataLoader(web_pipeline, batch_size=2, collate_fn=web_pipeline.collater)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 1, 3, 32, 32) and batch["demo_image"].shape == (2, 3, 1, 3, 32, 32)
    assert len(batch["demo_text"]) == 2 and all(len(texts) == 3 for texts in batch["demo_text"])
    assert batch["demo_text"][0] == items[0]["demo_text"]
    assert batch["demo_mask"].shape == (2, 3) and batch["text_output"] == [items[0]["text_output"], items[1]["text_output"]]


def write_bad_shard(path):
    with wds.TarWriter(str(path)) as writer:
        writer.write({"__key__": "good0", "jpg": _jpeg(), "txt": "a"})
        writer.write({"__key__": "notext", "jpg": _jpeg()})
        writer.write({"__key__": "good1", "jpg": _jpeg(), "txt": "b"})
        writer.write({"__key__": "badjpg", "jpg": b"garbage", "txt": "c"})
        writer.write({"__key__": "good2", "jpg": _jpeg(), "txt": "d"})


def _jpeg():
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_demo_text_field_gives_demos_their_own_text_and_the_query_keeps_the_whole_text(tmp_path):
    """make demo's AIM step: demos read as the eval set's ("{answer}"), the target is the whole pair text."""
    generate_web_shards(str(tmp_path), num_shards=1, pages_per_shard=2)
    (first, *_) = list(pipeline(str(tmp_path / "shard-00000.tar"), endless=False, demo_text_field="answer"))
    assert first["demo_text"] and all(" " not in text and "Question" not in text for text in first["demo_text"])
    assert first["text_output"].startswith("Question: ") and first["text_output"].split("Short answer: ")[1]
    (plain, *_) = list(pipeline(str(tmp_path / "shard-00000.tar"), endless=False))
    assert [text.split("Short answer: ")[1] for text in plain["demo_text"]] == first["demo_text"]
    assert plain["text_output"] == first["text_output"]


def test_broken_samples_raise_naming_shard_and_key_or_are_skipped(tmp_path):
    path = tmp_path / "bad.tar"
    write_bad_shard(path)
    with pytest.raises(WebShardError, match=r"bad\.tar, key 'notext': no text"):
        list(pipeline(str(path), num_demos=1, on_error="raise", endless=False))
    items = list(pipeline(str(path), num_demos=1, on_error="skip", endless=False))
    assert [item["demo_text"] + [item["text_output"]] for item in items] == [["a", "b"]]  # "d" is a remainder
    with pytest.raises(WebShardError, match="not found"):
        pipeline(str(tmp_path / "missing-{0..1}.tar"))


def test_shards_are_split_between_ranks_and_workers_or_resampled(monkeypatch):
    import lavis.common.dist_utils as dist_utils

    urls = [f"s{i}.tar" for i in range(4)]
    seen = {}
    for rank in range(2):
        monkeypatch.setattr(dist_utils, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(dist_utils, "get_world_size", lambda: 2)
        seen[rank] = [s["url"] for s in EpochShardSource(urls, seed=1, endless=False)]
    assert sorted(seen[0] + seen[1]) == urls and not set(seen[0]) & set(seen[1])
    # fewer shards than ranks: every rank reads all of them, in its own order
    monkeypatch.setattr(dist_utils, "get_world_size", lambda: 8)
    assert sorted(s["url"] for s in EpochShardSource(urls, seed=1, endless=False)) == urls
    endless = iter(EpochShardSource(urls[:1], seed=1))
    assert [next(endless)["url"] for _ in range(3)] == ["s0.tar"] * 3


def test_builder_from_lavis_config_returns_a_train_pipeline(tmp_path):
    generate_web_shards(str(tmp_path), num_shards=1, pages_per_shard=2)
    builder_cls = registry.get_builder_class("web_pairs_icl")
    cfg = OmegaConf.load(builder_cls.default_config_path()).datasets.web_pairs_icl
    cfg.build_info.shards = str(tmp_path / "shard-00000.tar")
    cfg.vis_processor = {"train": {"name": "blip_image_eval", "image_size": 32},
                         "eval": {"name": "blip_image_eval", "image_size": 32}}
    cfg.demonstrations.num = 1
    datasets = builder_cls(cfg).build_datasets()
    assert set(datasets) == {"train"} and isinstance(datasets["train"], wds.DataPipeline)
    item = next(iter(datasets["train"]))
    assert len(item["demo_text"]) == 1
    cfg.demonstrations.strategy = "random"
    with pytest.raises(ValueError, match="unknown key"):
        builder_cls(cfg).build_datasets()
