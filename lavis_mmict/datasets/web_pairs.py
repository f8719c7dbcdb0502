"""Image-text web corpora in webdataset shards, as in-context sequences (AIM's training data).

A shard is a tar of samples ``<key>.jpg`` (or .jpeg/.png/.webp) + ``<key>.txt`` and/or
``<key>.json`` (the text under ``text_field``, LAION's ``caption`` by default). Consecutive pairs
of a shard are grouped into sequences of K + 1: the first K are the query's demonstrations, the
last is the query, whose text is the target (an LM loss on the last pair's text). Items follow the
``*_icl`` batch layout (image, text_input, text_output, demo_image, demo_text, demo_mask), so every
ICL model trains on them unchanged.

Builder ``web_pairs_icl`` (train split only; evaluate on the ``*_icl`` task datasets): an endless
``wds.DataPipeline`` for LAVIS's iteration runner, as LAVIS's LAION builder, but deterministic:
each pass over the shards has an order drawn from (seed, pass, rank); shards are split between
ranks and loader workers when there are enough of them, and otherwise every rank/worker reads all
shards in its own order (LAVIS's resampling). ``generate_web_shards`` writes small shards for
tests and the demo.
"""
import io
import json
import logging
import os
import random
import tarfile
from typing import List, Optional, Sequence

import numpy as np
import torch
import webdataset as wds
from lavis.common.registry import registry
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from PIL import Image
from torch.utils.data import get_worker_info
from tqdm import tqdm

from lavis_mmict.atomic import atomic_output
from lavis_mmict.datasets.batching import collate_icl_samples
from lavis_mmict.errors import ConfigError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CONFIG_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class WebShardError(ValueError):
    """A shard or a sample in it cannot be used; the message names the shard and the key."""


# ---------------------------------------------------------------------------------------------
# batching




# ---------------------------------------------------------------------------------------------
# shards


def expand_shards(shards) -> List[str]:
    """Shard paths from a brace pattern (``dir/{00000..00009}.tar``), a list, or ``::``-joined
    patterns; local files must exist (the error names the first missing one)."""
    if isinstance(shards, str):
        urls = wds.shardlists.expand_urls(shards)
    else:
        urls = [url for item in shards for url in wds.shardlists.expand_urls(str(item))]
    urls = [url if "://" in url or url.startswith("pipe:") else os.path.abspath(os.path.expanduser(url))
            for url in urls]
    if not urls:
        raise WebShardError(f"build_info.shards {shards!r} names no shard")
    missing = [url for url in urls if "://" not in url and not url.startswith("pipe:") and not os.path.isfile(url)]
    if missing:
        raise WebShardError(f"build_info.shards: {len(missing)} shard(s) not found, e.g. {missing[0]}")
    return urls


class EpochShardSource(torch.utils.data.IterableDataset):
    """Yields ``{"url": shard}`` pass after pass (endless when ``endless``), seeded per pass.

    Shards are split between the ranks x loader workers when every one of them gets one;
    otherwise each rank/worker reads all shards in an order of its own.
    """

    def __init__(self, urls: Sequence[str], seed: int = 0, endless: bool = True):
        self.urls = list(urls)
        self.seed = int(seed)
        self.endless = endless

    def _my_shards(self, epoch):
        from lavis.common.dist_utils import get_rank, get_world_size

        rank, world = get_rank(), get_world_size()
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        slots, slot = world * num_workers, rank * num_workers + worker_id
        if len(self.urls) >= slots:
            order = list(self.urls)
            random.Random(f"{self.seed}/{epoch}").shuffle(order)  # same on every rank
            return order[slot::slots]
        order = list(self.urls)
        random.Random(f"{self.seed}/{epoch}/{slot}").shuffle(order)
        return order

    def __iter__(self):
        epoch = 0
        while True:
            for url in self._my_shards(epoch):
                yield {"url": url}
            epoch += 1
            if not self.endless:
                return


def group_consecutive(samples, size: int):
    """Runs of ``size`` consecutive samples of the same shard (a shard's remainder is dropped)."""
    run = []
    for sample in samples:
        if run and run[-1].get("__url__") != sample.get("__url__"):
            run = []
        run.append(sample)
        if len(run) == size:
            yield run
            run = []


# ---------------------------------------------------------------------------------------------
# dataset


class WebPairsICLDataset:
    """Builds the pipeline of in-context sequences from webdataset shards.

    Args:
        shards: brace pattern or list of shard paths/URLs.
        vis_processor: processor for the query image (train); demo_vis_processor: for demo images
            (eval: deterministic, so the demo bank finds them again).
        text_processor: applied to every text (query target and demonstrations).
        num_demos: K, demonstrations per query (sequences have K + 1 pairs).
        text_field: json field holding the text when a sample has no ``.txt``.
        demo_text_field: json field holding a demonstration's text (None: ``text_field``), e.g. a
            short answer for demos while the query's target is the whole text.
        demo_template: demo text from the pair's text, ``{text}`` is replaced.
        shuffle_buffer: sequences mixed in a buffer of this size (0: shard order).
        seed: shard order and buffer seed.
        on_error: ``raise`` (a WebShardError naming shard and key) or ``skip`` (logged warning).
        endless: repeat passes forever (training with the iteration runner).
    """

    def __init__(self, shards, vis_processor, demo_vis_processor, text_processor, num_demos=4,
                 text_field="caption", demo_template="{text}", shuffle_buffer=100, seed=0,
                 on_error="skip", endless=True, demo_text_field=None):
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if int(num_demos) < 0:
            raise ConfigError(f"demonstrations.num must be >= 0, got {num_demos}")
        self.urls = expand_shards(shards)
        self.vis_processor = vis_processor
        self.demo_vis_processor = demo_vis_processor
        self.text_processor = text_processor
        self.num_demos = int(num_demos)
        self.text_field = text_field
        self.demo_text_field = demo_text_field or text_field
        self.demo_template = demo_template
        self.on_error = on_error
        handler = wds.reraise_exception if on_error == "raise" else wds.warn_and_continue
        stages = [
            EpochShardSource(self.urls, seed=seed, endless=endless),
            wds.tarfile_to_samples(handler=handler),
            wds.map(self.decode_pair, handler=handler),
            wds.select(lambda pair: pair is not None),
            lambda samples: group_consecutive(samples, self.num_demos + 1),
        ]
        if shuffle_buffer:
            stages.append(wds.shuffle(int(shuffle_buffer), initial=int(shuffle_buffer),
                                      rng=random.Random(f"{seed}/buffer")))
        stages.append(wds.map(self.to_item))
        self.pipeline = wds.DataPipeline(*stages)
        # the runner's DataLoader batches the pipeline's items with the *_icl collater
        self.pipeline.collater = collate_icl_samples

    def decode_pair(self, sample):
        """A shard sample -> {"image": PIL RGB, "text": str, ...}; a broken one raises or is None."""
        where = f"shard {sample.get('__url__')}, key {sample.get('__key__')!r}"
        try:
            image_key = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
            if image_key is None:
                raise WebShardError(f"{where}: no image ({'/'.join(IMAGE_EXTENSIONS)}); has {sorted(sample)}")
            try:
                image = Image.open(io.BytesIO(sample[image_key])).convert("RGB")
            except Exception as err:
                raise WebShardError(f"{where}: unreadable .{image_key} image ({err})") from None
            if "txt" in sample:
                text = demo_text = sample["txt"].decode("utf-8")
            elif "json" in sample:
                record = json.loads(sample["json"].decode("utf-8"))
                for field, key in ((self.text_field, "text_field"), (self.demo_text_field, "demo_text_field")):
                    if field not in record:
                        raise WebShardError(f"{where}: .json has no {field!r} field ({key})")
                text, demo_text = str(record[self.text_field]), str(record[self.demo_text_field])
            else:
                raise WebShardError(f"{where}: no text (.txt or .json)")
        except WebShardError:
            if self.on_error == "raise":
                raise
            logging.warning("web_pairs_icl: skipping a sample", exc_info=True)
            return None
        return {"image": image, "text": text.strip(), "demo_text": demo_text.strip(), "__key__": sample.get("__key__"),
                "__url__": sample.get("__url__")}

    def to_item(self, run):
        """K + 1 decoded pairs -> one ``*_icl`` item (images as one-frame clips)."""
        *demos, query = run
        image = self.vis_processor(query["image"]).unsqueeze(0)  # (1, 3, H, W)
        if demos:
            demo_image = torch.stack([self.demo_vis_processor(d["image"]) for d in demos]).unsqueeze(1)
        else:
            demo_image = image.new_zeros((0,) + tuple(image.shape))
        demo_text = list(self.demo_template.replace("{text}", self.text_processor(d["demo_text"])) for d in demos)
        return {
            "image": image,
            "text_input": "",
            "text_output": self.text_processor(query["text"]),
            "demo_image": demo_image,  # (K, 1, 3, H, W)
            "demo_text": demo_text,
            "demo_mask": torch.ones(len(demos), dtype=torch.bool),
            "image_id": f"{os.path.basename(query['__url__'])}/{query['__key__']}",
        }


@registry.register_builder("web_pairs_icl")
class WebPairsICLBuilder(BaseDatasetBuilder):
    """Image-text web shards as in-context sequences (train split); see the module docstring.

    Config keys: ``build_info.shards``, ``demonstrations.num`` (K), ``text_field``, ``demo_text_field``,
    ``demo_template``, ``shuffle_buffer``, ``seed``, ``on_error``, processors.
    """

    dataset_name = "web_pairs_icl"
    DATASET_CONFIG_DICT = {"default": os.path.join(CONFIG_ROOT, "datasets", "web_pairs_icl", "defaults.yaml")}

    def _download_data(self):
        """Nothing to download: shards are read where ``build_info.shards`` says."""

    def build(self):
        self.build_processors()
        demo_cfg = dict(self.config.get("demonstrations") or {})
        unknown = sorted(set(demo_cfg) - {"num"})
        if unknown:
            raise ConfigError(f"{self.dataset_name}: unknown key(s) under demonstrations: {unknown}; "
                             f"valid: ['num'] (demos are the K pairs before the query in a shard)")
        shards = self.config.build_info.get("shards")
        if shards is None:
            raise ConfigError(f"{self.dataset_name}: build_info.shards is not set")
        dataset = WebPairsICLDataset(
            shards=shards if isinstance(shards, str) else list(shards),
            vis_processor=self.vis_processors["train"],
            demo_vis_processor=self.vis_processors["eval"],
            text_processor=self.text_processors["train"],
            num_demos=int(demo_cfg.get("num", 4)),
            text_field=self.config.get("text_field", "caption"),
            demo_text_field=self.config.get("demo_text_field", None),
            demo_template=self.config.get("demo_template", "{text}"),
            shuffle_buffer=int(self.config.get("shuffle_buffer", 100)),
            seed=int(self.config.get("seed", 0)),
            on_error=self.config.get("on_error", "skip"),
        )
        # LAVIS's runners recognise a wds.DataPipeline (no len(); batched by the DataLoader)
        return {"train": dataset.pipeline}


# ---------------------------------------------------------------------------------------------
# generator of small shards


def generate_web_shards(root: str, num_shards: int = 4, pages_per_shard: int = 16, seed: int = 0,
                        size: int = 32, text_format: str = "json", progress: bool = False) -> List[str]:
    """Write ``root/shard-{i:05d}.tar``: "web pages" of 4 consecutive image-text pairs each.

    Every page is one synthetic scene (see datasets/synthetic.py: a coloured shape and a hidden
    code word); its 4 pairs are frames of the scene with its 4 QA texts, in the demo-text format
    of ``synthetic_videoqa_icl`` ("Question: ... Short answer: ..."), in a random order. So a
    query's code word can only be read from the pairs before it, as in AIM's interleaved data.
    ``text_format``: ``json`` (``{"caption": ..., "answer": <the answer alone>}``), ``txt``, or ``both``. Deterministic in its
    arguments; returns the shard paths (a finished shard with the same content is rewritten).
    ``progress``: a progress bar (pages, with the time left) on stderr.
    """
    import cv2

    from lavis_mmict.datasets.synthetic import QUESTIONS, _random_clip, render_clip_frames

    if text_format not in ("json", "txt", "both"):
        raise ConfigError(f"text_format must be json, txt or both, got {text_format!r}")
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    bar = tqdm(total=num_shards * pages_per_shard, desc="web shards", unit="page", disable=not progress)
    for shard_index in range(num_shards):
        path = os.path.join(root, f"shard-{shard_index:05d}.tar")
        with atomic_output(path) as temp_path, wds.TarWriter(temp_path) as writer:
            for page_index in range(pages_per_shard):
                scene = _random_clip(rng)
                frames = render_clip_frames(scene, len(QUESTIONS), size)  # BGR
                for pair_index, question_index in enumerate(rng.permutation(len(QUESTIONS))):
                    question, _, field = QUESTIONS[question_index]
                    text = f"Question: {question} Short answer: {scene[field]}"
                    ok, jpg = cv2.imencode(".jpg", frames[pair_index], [cv2.IMWRITE_JPEG_QUALITY, 95])
                    sample = {"__key__": f"{shard_index:05d}_{page_index:04d}_{pair_index}", "jpg": jpg.tobytes()}
                    if text_format in ("txt", "both"):
                        sample["txt"] = text
                    if text_format in ("json", "both"):
                        sample["json"] = {"caption": text, "answer": str(scene[field]), "page": page_index}
                    writer.write(sample)
                bar.update()
        paths.append(path)
    bar.close()
    return paths


def read_shard_keys(path: str) -> List[str]:
    """Sample keys of a shard in order (for tests and inspection)."""
    with tarfile.open(path) as tar:
        keys = []
        for name in tar.getnames():
            key = name.rsplit(".", 1)[0]
            if not keys or keys[-1] != key:
                keys.append(key)
    return keys
