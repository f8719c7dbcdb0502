"""Demo-aware QA dataset over LAVIS-format annotations, and its collater.

Each item is a query (frames + question + answer) plus the k demonstrations the sampler picks for
it (frames + template-formatted text). The collater pads demos to the batch's largest k and marks
real ones in ``demo_mask``; see ``collate_icl_samples`` for the batch layout.
"""
import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
from lavis.datasets.datasets.base_dataset import BaseDataset
from torch.nn.utils.rnn import pad_sequence

from lavis_mmict.datasets.demonstrations import DemonstrationConfig, build_demo_sampler, format_demo_text
from lavis_mmict.datasets.media import load_visual

# The record field naming the media file, per LAVIS `data_type`.
MEDIA_FIELD = {"videos": "video", "images": "image"}
QA_FIELDS = ("question", "answer", "question_id")


def required_fields(data_type: str) -> tuple:
    """Fields every QA annotation record must have for ``data_type`` (videos | images)."""
    if data_type not in MEDIA_FIELD:
        raise ValueError(f"Unknown data_type {data_type!r}; valid: {sorted(MEDIA_FIELD)}")
    return (MEDIA_FIELD[data_type],) + QA_FIELDS


def load_annotations(ann_paths: Sequence[str], fields: Sequence[str]) -> List[dict]:
    """Read LAVIS json annotation files (each a list of records) and check every record.

    Raises ValueError naming the file, the record (index and question_id) and the missing field,
    or naming the files when they hold no record at all.
    """
    records = []
    for ann_path in ann_paths:
        if not os.path.isfile(ann_path):
            raise FileNotFoundError(f"Annotation file not found: {ann_path}")
        with open(ann_path, "r") as file:
            file_records = json.load(file)
        if not isinstance(file_records, list):
            raise ValueError(f"Annotation file {ann_path} must hold a json list of records")
        for index, record in enumerate(file_records):
            missing = [field for field in fields if field not in record]
            if missing:
                raise ValueError(
                    f"Annotation file {ann_path}: record {index} "
                    f"(question_id={record.get('question_id')!r}) is missing field(s) {missing}"
                )
        records.extend(file_records)
    if not records:
        raise ValueError(f"Empty split: no annotation records in {list(ann_paths)}")
    return records


@dataclass
class DemoPool:
    """Where demonstrations come from: records of a split and the folder holding their media."""

    records: List[dict]
    vis_root: str
    name: str


def _as_text(value) -> str:
    """An answer as one string; list-valued answers (VQAv2) give their most frequent element."""
    if isinstance(value, list):
        return Counter(value).most_common(1)[0][0] if value else ""
    return str(value)


class ICLDataset(BaseDataset):
    """QA dataset whose items carry their in-context demonstrations.

    Args:
        vis_processor: LAVIS image processor for the query frames (train or eval).
        text_processor: LAVIS text processor for the query question (e.g. ``blip_question``).
        vis_root: folder the records' media paths are relative to.
        ann_paths: LAVIS json annotation files (lists of records).
        demo_config: ``demonstrations`` block (dict / OmegaConf / DemonstrationConfig; None = none).
        demo_vis_processor: processor for demo frames; the eval one, even for training, so demo
            inputs are deterministic (and their features cacheable).
        demo_pool: DemoPool of another split; None = this split (``pool: self``).
        num_frames: frames per video clip (F); images always give F = 1.
        data_type: ``videos`` or ``images`` (LAVIS builder's data_type).
        is_train: training split: demos are redrawn per epoch (``set_epoch``); otherwise fixed.
        name: "<dataset>/<split>", used in error messages.

    ``__getitem__(i)`` returns::

        {"image": (F,3,H,W) float, "text_input": str, "text_output": str,
         "question_id": ..., "video" (videos) or "image_id" (images): ...,
         "demo_image": (k,F,3,H,W) float, "demo_text": list of k str}
    """

    def __init__(
        self,
        vis_processor: Callable,
        text_processor: Callable,
        vis_root: str,
        ann_paths: Sequence[str],
        demo_config=None,
        demo_vis_processor: Optional[Callable] = None,
        demo_pool: Optional[DemoPool] = None,
        num_frames: int = 4,
        data_type: str = "videos",
        is_train: bool = False,
        name: str = "icl_dataset",
        frame_sampling: str = "uniform",
    ):
        super().__init__(vis_processor, text_processor, vis_root, ann_paths=[])
        self.data_type = data_type
        self.media_field = MEDIA_FIELD.get(data_type)
        self.annotation = load_annotations(ann_paths, required_fields(data_type))
        self._add_instance_ids()
        self.name = name
        self.num_frames = num_frames if data_type == "videos" else 1
        self.frame_sampling = frame_sampling
        self.is_train = is_train
        self.epoch = 0

        self.demo_config = (
            demo_config if isinstance(demo_config, DemonstrationConfig)
            else DemonstrationConfig.from_config(demo_config)
        )
        self.demo_vis_processor = demo_vis_processor or vis_processor
        pool_is_query_split = demo_pool is None
        self.demo_pool = demo_pool or DemoPool(self.annotation, vis_root, name)
        self.demo_sampler = build_demo_sampler(
            self.demo_config, self.annotation, self.demo_pool.records, pool_is_query_split, name
        )

    def set_epoch(self, epoch: int):
        """Training splits redraw demos each epoch; call before creating the epoch's iterator."""
        self.epoch = int(epoch)

    def demo_indices(self, index: int) -> List[int]:
        """Pool indices of item ``index``'s demos (fixed per item outside training)."""
        return self.demo_sampler.sample(index, self.epoch if self.is_train else None)

    def _load_frames(self, record: dict, vis_root: str, vis_processor: Callable) -> torch.Tensor:
        path = os.path.join(vis_root, record[self.media_field])
        return load_visual(path, vis_processor, self.num_frames, self.data_type == "videos",
                           self.frame_sampling)

    def __getitem__(self, index: int) -> dict:
        record = self.annotation[index]
        image = self._load_frames(record, self.vis_root, self.vis_processor)  # (F,3,H,W)

        demo_records = [self.demo_pool.records[i] for i in self.demo_indices(index)]
        demo_frames = [
            self._load_frames(demo, self.demo_pool.vis_root, self.demo_vis_processor)
            for demo in demo_records
        ]
        demo_image = torch.stack(demo_frames) if demo_frames else image.new_zeros((0,) + image.shape)
        demo_text = [format_demo_text(self.demo_config.template, demo) for demo in demo_records]

        item = {
            "image": image,
            "text_input": self.text_processor(record["question"]),
            "text_output": _as_text(record["answer"]),
            "question_id": record["question_id"],
            "demo_image": demo_image,  # (k,F,3,H,W)
            "demo_text": demo_text,
        }
        if "question_type" in record:  # lets the task report accuracy per question type
            item["question_type"] = record["question_type"]
        if self.data_type == "videos":
            item["video"] = record["video"]
        else:
            item["image_id"] = record.get("image_id", record["image"])
        return item

    def collater(self, samples: List[dict]) -> dict:
        return collate_icl_samples(samples)


# Per-sample values passed through as lists, when the samples carry them.
PASS_THROUGH_KEYS = ("question_id", "question_type", "video", "image_id")


def collate_icl_samples(samples: List[dict]) -> dict:
    """Batch ICLDataset items; demos padded to the batch's largest demo count K.

    Returns::

        {"image": (B,F,3,H,W), "text_input": [B] str, "text_output": [B] str,
         "demo_image": (B,K,F,3,H,W), zeros where no demo,
         "demo_text": [B][K] str, "" where no demo,
         "demo_mask": (B,K) bool, True = real demo,
         "question_id": [B], "video": [B] (or "image_id": [B] for images)}

    K = 0 for the whole batch gives demo_image (B,0,F,3,H,W) and demo_mask (B,0).
    """
    demo_counts = torch.tensor([len(sample["demo_text"]) for sample in samples], dtype=torch.long)
    demo_image = pad_sequence([sample["demo_image"] for sample in samples], batch_first=True)
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
    for key in PASS_THROUGH_KEYS:
        if all(key in sample for sample in samples):
            batch[key] = [sample[key] for sample in samples]
    return batch
