"""Demo-aware datasets: a wrapper around any map-style LAVIS dataset, and its collater.

``ICLDataset(dataset, demonstrations)`` turns a LAVIS dataset whose items carry an image or a
video and text into one whose items also carry K demonstrations: the sampler (demonstrations.py)
picks pool records for each query, the wrapper loads their frames (eval processor) and writes
their text from the pool record with ``demonstrations.template``. The wrapped dataset needs:

- ``annotation``: its list of records (LAVIS's ``BaseDataset`` has it);
- items with the visual under ``image`` ((3,H,W) or (F,3,H,W)) or ``video`` ((3,T,H,W), LAVIS's
  video processors), and ``text_input``; ``text_output`` is taken from the item, else (captions)
  from ``text_input``, else (QA) from ``answers``/the record's ``answer``.

Our ``MediaRecordDataset`` (records.py) also offers ``load_frames(index, processor)``, which the
wrapper uses so demonstrations are read with the eval processor whatever the pool split.

Demo feature cache keys: each demonstration also carries ``demo_media_key``, a digest of what
decides its frames (media path, size and mtime, frames, frame sampling, decode size, and the eval
processor), which the model's ``demo_feature_cache`` uses to reuse the clip's frozen ViT output.
It is "" (not cacheable) when the frames are not read by the pool's ``load_frames`` with a
deterministic processor (any ``Random*``/``*Augment*`` transform, or no ``transform`` to describe).

Pool feature store (models/pool_store.py): ``stored_demo_keys`` is the set of keys whose frozen ViT
output the model reads from the store. A demonstration with such a key is not decoded: its slot
of ``demo_image`` holds zeros, and when every demo of an item (a batch) is stored, ``demo_image``
is (k, F, 3, 0, 0) ((B, K, F, 3, 0, 0)): no frames are made, pinned or copied to the GPU; the
model reads the stored features instead.

Bad media (``skip_bad_media``): by default an unreadable video/image raises ``MediaError`` naming
the split, record and file. With ``skip_bad_media: true`` it is logged (once per file) and skipped:
``__getitem__`` replaces an unreadable query by another readable item of the split (seeded draw)
and drops an unreadable demonstration, so it never returns None (LAVIS's ``ConcatDataset``
collater, around every training split, reads every sample first), and every item carries
``_num_skipped_media`` (LAVIS's collater keeps only the keys all samples have), summed by the
collater into ``batch["num_skipped_media"]``. :meth:`ICLDataset.exclude_bad_media` takes records
found bad by the media check (runners/media_check.py) out up front.
"""
import hashlib
import json
import logging
import os
from typing import Callable, List, Optional

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from lavis_mmict.datasets.demonstrations import DemonstrationConfig, build_demo_sampler, format_demo_text
from lavis_mmict.datasets.media import MediaError, media_stamp
from lavis_mmict.datasets.records import (  # noqa: F401  (re-exported: the old home of these)
    MEDIA_FIELD,
    MediaRecordDataset,
    load_annotations,
    most_common,
    required_fields,
)

SKIPPED_MEDIA_KEY = "num_skipped_media"
# Per-item count of bad media met building the item (a replaced query, failed replacement draws,
# dropped demos); in every item, so LAVIS's ConcatDataset collater keeps it; summed by the collater.
ITEM_SKIPPED_MEDIA_KEY = "_num_skipped_media"
# Replacement draws tried before giving up on a split whose media are (nearly) all unreadable.
MAX_REPLACEMENT_TRIES = 200
_reported_media = set()


def _report_bad_media(name: str, error: Exception):
    message = str(error)
    if message not in _reported_media:  # once per file and process: a bad clip is met every epoch
        _reported_media.add(message)
        logging.warning("%s: skipping unreadable media (skip_bad_media: true): %s", name, message)


def processor_signature(processor) -> Optional[str]:
    """A description of a deterministic LAVIS image processor (class and transform pipeline), or
    None when it augments (a ``Random*``/``*Augment*`` step) or has no ``transform`` to describe."""
    transform = getattr(processor, "transform", None)
    if transform is None:
        return None
    steps = getattr(transform, "transforms", [transform])
    if any("Random" in type(step).__name__ or "Augment" in type(step).__name__ for step in steps):
        return None
    return f"{type(processor).__module__}.{type(processor).__qualname__}:{transform!r}"


def as_frames(item: dict) -> torch.Tensor:
    """The item's visual as (F, 3, H, W): ``image`` (3,H,W) or (F,3,H,W), or ``video`` (3,T,H,W)."""
    image = item.get("image")
    if torch.is_tensor(image):
        return image.unsqueeze(0) if image.dim() == 3 else image
    video = item.get("video")
    if torch.is_tensor(video) and video.dim() == 4:
        return video.permute(1, 0, 2, 3)  # LAVIS video processors give channels first
    raise ValueError(f"Dataset item has no image/video tensor (keys: {sorted(item)})")


class ICLDataset(Dataset):
    """A LAVIS dataset whose items carry their in-context demonstrations.

    Args:
        dataset: the query split (map-style, see module docstring).
        demo_config: ``demonstrations`` block (dict / OmegaConf / DemonstrationConfig; None = K 0).
        pool: the dataset demonstrations come from; None = ``dataset`` itself (``pool: self``).
        demo_vis_processor: processor for demo frames (the eval one: deterministic, cacheable);
            used when the pool has ``load_frames``.
        is_train: demos (and caption prompts) are redrawn per epoch (``set_epoch``); else fixed.
        name: "<dataset>/<split>" for messages.
        skip_bad_media: see module docstring.
        task_kind: ``qa`` | ``caption``: how to find the target of a wrapped item without
            ``text_output`` (captions: ``text_input`` is the caption, the prompt becomes text_input).
        caption_prompt: the query prompt of wrapped caption items.

    ``self[i]``::

        {"image": (F,3,H,W), "text_input": str, "text_output": str, ids...,
         "demo_image": (k,F,3,H,W), "demo_text": k str, "demo_media_key": k str,
         "_num_skipped_media": int}

    Positions ``i`` run over the records kept after :meth:`exclude_bad_media` (all by default);
    ``demo_indices`` and the records keep the wrapped dataset's indices.
    """

    def __init__(
        self,
        dataset,
        demo_config=None,
        pool=None,
        demo_vis_processor: Optional[Callable] = None,
        is_train: bool = False,
        name: Optional[str] = None,
        skip_bad_media: bool = False,
        task_kind: str = "qa",
        caption_prompt: str = "A short caption:",
    ):
        self.dataset = dataset
        self.pool = dataset if pool is None else pool
        self.name = name or getattr(dataset, "name", type(dataset).__name__)
        self.is_train = is_train
        self.epoch = 0
        self.skip_bad_media = bool(skip_bad_media)
        self.task_kind = task_kind
        self.caption_prompt = caption_prompt
        self.demo_vis_processor = demo_vis_processor
        self._kept_indices = None  # dataset indices of the positions, after exclude_bad_media
        self._bad_pool_indices = frozenset()  # pool records whose media the media check found bad
        self._demo_key_base = self._demo_frame_reading()
        self.stored_demo_keys = frozenset()  # set by pool_store.attach_pool_store
        self.demo_config = (
            demo_config if isinstance(demo_config, DemonstrationConfig)
            else DemonstrationConfig.from_config(demo_config)
        )
        pool_is_query_split = pool is None or pool is dataset
        extra = self._similarity_features(pool_is_query_split) if (
            self.demo_config.strategy == "similar" and self.demo_config.num > 0) else {}
        self.demo_sampler = build_demo_sampler(
            self.demo_config, dataset.annotation, self.pool.annotation, pool_is_query_split, self.name,
            evaluation=not is_train, **extra
        )

    @classmethod
    def from_annotations(cls, vis_processor, text_processor, vis_root, ann_paths, demo_config=None,
                         task_kind="qa", data_type="videos", num_frames=4, is_train=False,
                         name="icl_dataset", skip_bad_media=False, **record_kwargs):
        """An ICLDataset over LAVIS-format annotation files with ``pool: self``."""
        records = MediaRecordDataset(vis_processor, text_processor, vis_root, ann_paths, task_kind=task_kind,
                                     data_type=data_type, num_frames=num_frames, is_train=is_train,
                                     name=name, **record_kwargs)
        return cls(records, demo_config, demo_vis_processor=vis_processor, is_train=is_train, name=name,
                   skip_bad_media=skip_bad_media, task_kind=task_kind)

    # LAVIS code and tasks read the wrapped dataset's attributes (annotation, annotation_paths,
    # vis_root, captions_by_image_id, ...) from the dataset they are given.
    def __getattr__(self, attribute):
        wrapped = self.__dict__.get("dataset")
        if wrapped is None or attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(wrapped, attribute)

    def __len__(self):
        return len(self.dataset) if self._kept_indices is None else len(self._kept_indices)

    def dataset_index(self, position: int) -> int:
        """The wrapped dataset's index of item ``position``."""
        return position if self._kept_indices is None else self._kept_indices[position]

    def set_epoch(self, epoch: int):
        """Training splits redraw demos each epoch; call before creating the epoch's iterator."""
        self.epoch = int(epoch)
        for dataset in {id(self.dataset): self.dataset, id(self.pool): self.pool}.values():
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    def demo_indices(self, index: int) -> List[int]:
        """Pool indices of item ``index``'s demos (fixed per item outside training)."""
        return self.demo_sampler.sample(index, self.epoch if self.is_train else None)

    # ------------------------------------------------------------------ loading
    def _media_keys(self, dataset) -> List[str]:
        if hasattr(dataset, "media_path"):
            return [dataset.media_path(i) for i in range(len(dataset.annotation))]
        vis_root = getattr(dataset, "vis_root", "")
        keys = []
        for record in dataset.annotation:
            field = next((f for f in ("video", "image") if f in record), None)
            keys.append(os.path.join(vis_root, str(record[field])) if field else repr(record))
        return keys

    def _similarity_features(self, pool_is_query_split: bool) -> dict:
        from lavis_mmict.datasets.similarity import compute_source_features

        def features_of(dataset, split_name):
            processor = self.demo_vis_processor or getattr(dataset, "vis_processor", None)
            reading = {
                "num_frames": getattr(dataset, "num_frames", None),
                "sampling": getattr(dataset, "frame_sampling", None),
                "decode_size": getattr(dataset, "decode_size", None),
                "processor": repr(getattr(processor, "transform", processor)),
            }
            return compute_source_features(
                self._media_keys(dataset), lambda index: self._demo_frames(dataset, index),
                self.demo_config.encoder, self.demo_config.feature_cache, split_name, reading,
                self.skip_bad_media,
            )

        queries = features_of(self.dataset, self.name)
        pool = queries if pool_is_query_split else features_of(self.pool, getattr(self.pool, "name", "pool"))
        return {"query_features": queries.features, "query_sources": queries.record_sources,
                "pool_features": pool.features, "pool_sources": pool.record_sources, "pool_valid": pool.valid}

    def _demo_frame_reading(self) -> Optional[dict]:
        """What decides a demo's frames besides its file, or None when they are not cacheable."""
        pool = self.pool
        signature = processor_signature(self.demo_vis_processor)
        if signature is None or not (hasattr(pool, "load_frames") and hasattr(pool, "media_path")):
            return None
        return {
            "processor": signature,
            "num_frames": getattr(pool, "num_frames", None),
            "sampling": getattr(pool, "frame_sampling", None),
            "decode_size": getattr(pool, "decode_size", None),
            "data_type": getattr(pool, "data_type", None),
        }

    def demo_media_key(self, pool_index: int) -> str:
        """Content key of demo ``pool_index``'s frames for the model's feature cache ("" = none)."""
        if self._demo_key_base is None:
            return ""
        path = os.path.abspath(self.pool.media_path(pool_index))
        stamp = media_stamp(path)
        if stamp is None:
            return ""
        reading = json.dumps([self._demo_key_base, path, stamp], sort_keys=True, default=str)
        return hashlib.sha256(reading.encode()).hexdigest()

    def _demo_frames(self, dataset, index: int) -> torch.Tensor:
        if hasattr(dataset, "load_frames"):
            return dataset.load_frames(index, self.demo_vis_processor)
        return as_frames(dataset[index])

    def _query(self, index: int) -> dict:
        item = dict(self.dataset[index])
        frames = as_frames(item)
        if torch.is_tensor(item.get("video")):
            del item["video"]
        item["image"] = frames
        if "text_output" not in item:
            if self.task_kind == "caption":
                item["text_output"], item["text_input"] = item["text_input"], self.caption_prompt
            else:
                answers = item.get("answers")
                if not (isinstance(answers, list) and answers and isinstance(answers[0], str)):
                    answers = self.dataset.annotation[index].get("answer")
                item["text_output"] = most_common(answers) if self.is_train else answers
        return item

    def __getitem__(self, position: int) -> dict:
        try:
            return self._load_item(self.dataset_index(position))
        except MediaError as error:  # the query's media (demos are dropped in _load_item)
            if not self.skip_bad_media:
                raise
            _report_bad_media(self.name, error)
            return self._replacement(position)

    def _load_item(self, index: int) -> dict:
        item = self._query(index)
        frames, texts, keys, skipped = [], [], [], 0
        for pool_index in self.demo_indices(index):
            if pool_index in self._bad_pool_indices:  # found bad by the media check: not read
                skipped += 1
                continue
            key = self.demo_media_key(pool_index)
            try:
                # a stored demo's features come from the pool feature store: no decoding
                frames.append(None if key in self.stored_demo_keys else self._demo_frames(self.pool, pool_index))
            except MediaError as error:
                if not self.skip_bad_media:
                    raise
                _report_bad_media(self.name, error)
                skipped += 1
                continue
            texts.append(format_demo_text(self.demo_config.template, self.pool.annotation[pool_index]))
            keys.append(key)
        item["demo_image"] = stack_demo_frames(frames, item["image"])
        item["demo_text"] = texts
        item["demo_media_key"] = keys
        item[ITEM_SKIPPED_MEDIA_KEY] = skipped
        return item

    def _replacement(self, position: int) -> dict:
        """A readable item drawn at random (seeded by seed, epoch and ``position``) to stand in for
        the unreadable item ``position``; its count includes the skipped query and failed draws."""
        rng = np.random.default_rng([self.demo_config.seed, 7, self.epoch, int(position)])
        failed = 1
        for candidate in rng.permutation(len(self))[:MAX_REPLACEMENT_TRIES].tolist():
            if candidate == position:
                continue
            try:
                item = self._load_item(self.dataset_index(candidate))
            except MediaError as error:
                _report_bad_media(self.name, error)
                failed += 1
                continue
            item[ITEM_SKIPPED_MEDIA_KEY] += failed
            return item
        raise MediaError(
            f"{self.name}: skip_bad_media could not find a readable item to replace an unreadable one "
            f"in {min(len(self), MAX_REPLACEMENT_TRIES)} tries; check the media folder "
            f"{getattr(self.dataset, 'vis_root', '?')}"
        )

    # ------------------------------------------------------------------ media check
    def media_records(self):
        """``(dataset, is_video)`` of the query split and the demo pool, those with ``media_path(i)``
        (how any other dataset reads its media is unknown)."""
        found = []
        for dataset in {id(self.dataset): self.dataset, id(self.pool): self.pool}.values():
            if hasattr(dataset, "media_path"):
                found.append((dataset, getattr(dataset, "data_type", "videos") == "videos"))
        return found

    def exclude_bad_media(self, bad_paths: set) -> dict:
        """Take the records whose media path is in ``bad_paths`` out: queries leave the split (its
        positions shrink), pool records are never read as demonstrations (dropped and counted
        when drawn). Returns ``{"queries": n excluded, "pool_records": n bad}``."""
        bad_queries = _records_using(self.dataset, bad_paths)
        if len(bad_queries) == len(self.dataset):
            raise MediaError(f"{self.name}: the media of every record are unreadable; check the media "
                             f"folder {getattr(self.dataset, 'vis_root', '?')}")
        self._kept_indices = [i for i in range(len(self.dataset)) if i not in bad_queries] if bad_queries else None
        self._bad_pool_indices = frozenset(_records_using(self.pool, bad_paths))
        return {"queries": len(bad_queries), "pool_records": len(self._bad_pool_indices)}

    # ------------------------------------------------------------------ batching
    def collater(self, samples: List[dict]) -> dict:
        """``collate_icl_samples``, plus ``num_skipped_media``: the sum of the items' counts."""
        skipped = sum(int(sample.pop(ITEM_SKIPPED_MEDIA_KEY, 0)) for sample in samples)
        batch = collate_icl_samples(samples)
        batch[SKIPPED_MEDIA_KEY] = skipped
        return batch


def _records_using(dataset, paths: set) -> set:
    """Indices of ``dataset``'s records whose media path is in ``paths`` (none without media_path)."""
    if not hasattr(dataset, "media_path"):
        return set()
    return {i for i in range(len(dataset.annotation)) if dataset.media_path(i) in paths}


def stack_demo_frames(frames: List[Optional[torch.Tensor]], query: torch.Tensor) -> torch.Tensor:
    """k demo clips (None = stored, not decoded) -> (k, F, 3, H, W) shaped like ``query`` (F, 3, H, W),
    zeros for stored ones; (k, F, 3, 0, 0), no memory, when all k are stored."""
    if frames and all(clip is None for clip in frames):
        return query.new_zeros((len(frames),) + query.shape[:-2] + (0, 0))
    zeros = query.new_zeros(query.shape)
    return torch.stack([zeros if clip is None else clip for clip in frames]) if frames else query.new_zeros(
        (0,) + query.shape)


def pad_demo_images(images: List[torch.Tensor]) -> torch.Tensor:
    """Items' (k_i, F, 3, H, W) demo clips -> (B, K, F, 3, H, W), zero-padded. When no item holds a
    decoded clip but some hold stored ones (pool feature store), (B, K, F, 3, 0, 0): no frames travel."""
    stored = [image for image in images if len(image) and not image.numel()]
    if not stored:
        return pad_sequence(images, batch_first=True)
    decoded = [image for image in images if image.numel()]
    if not decoded:
        return stored[0].new_zeros((len(images), max(len(image) for image in images)) + stored[0].shape[1:])
    shape = decoded[0].shape[1:]
    return pad_sequence([image.new_zeros((len(image),) + shape) if not image.numel() else image
                         for image in images], batch_first=True)


# Per-sample values passed through as lists, when the samples carry them.
PASS_THROUGH_KEYS = ("question_id", "question_type", "answer_type", "answerable", "video", "image_id")


def collate_icl_samples(samples: List[dict]) -> dict:
    """Batch ICLDataset items; demos padded to the batch's largest demo count K.

    Returns::

        {"image": (B,F,3,H,W), "text_input": [B] str, "text_output": [B] str,
         "demo_image": (B,K,F,3,H,W), zeros where no demo,
         "demo_text": [B][K] str, "" where no demo,
         "demo_mask": (B,K) bool, True = real demo,
         "demo_media_key": [B][K] str, "" where no demo (when every item has keys),
         "question_id": [B], "video": [B] and/or "image_id": [B]}

    K = 0 for the whole batch gives demo_image (B,0,F,3,H,W) and demo_mask (B,0).
    """
    demo_counts = torch.tensor([len(sample["demo_text"]) for sample in samples], dtype=torch.long)
    demo_image = pad_demo_images([sample["demo_image"] for sample in samples])
    max_demos = demo_image.shape[1]
    batch = {
        "image": torch.stack([sample["image"] for sample in samples]),
        "text_input": [sample["text_input"] for sample in samples],
        "text_output": [sample["text_output"] for sample in samples],
        "demo_image": demo_image,
        "demo_text": [
            list(sample["demo_text"]) + [""] * (max_demos - len(sample["demo_text"]))
            for sample in samples
        ],
        "demo_mask": torch.arange(max_demos)[None, :] < demo_counts[:, None],
    }
    if all("demo_media_key" in sample for sample in samples):
        batch["demo_media_key"] = [
            list(sample["demo_media_key"]) + [""] * (max_demos - len(sample["demo_media_key"]))
            for sample in samples
        ]
    for key in PASS_THROUGH_KEYS:
        if all(key in sample for sample in samples):
            batch[key] = [sample[key] for sample in samples]
    return batch
