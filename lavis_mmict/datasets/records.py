"""LAVIS-format annotation records and the plain (demo-free) dataset over them.

Two kinds of annotation files are read, in the formats LAVIS's own builders use:

- ``qa`` (MSVD-QA, MSRVTT-QA, VQAv2, your own): a json list of records
  ``{"video" | "image": path, "question": str, "answer": str or [str], "question_id": id, ...}``.
  ``answer`` may be a list of annotator answers (VQAv2); it may be absent from *every* record of
  a non-training split (an unlabelled test split such as VQAv2 test-dev), never from some only.
- ``caption`` (MSVD/MSRVTT captions, COCO Karpathy): records
  ``{"video" | "image": path, "caption": str or [str], "image_id": id (optional)}``.
  Training splits get one item per caption; evaluation splits one item per ``image_id`` with all
  of its captions (records sharing an ``image_id`` are merged). A record without ``image_id``
  uses its media path as ``image_id``.

Extra fields (``question_type``, ``dataset``, ...) are kept and passed on. Every problem is a
:class:`~lavis_mmict.errors.DataError` (a ``ValueError``) naming the file, the record index and the
field. Ground truth must be usable: an empty answer (``""``; in an evaluation split also one empty
entry of an answer list) is an error, and so is a ``question_id`` repeated in an evaluation split
(each id is scored once, so repeats would silently not count).
"""
import json
import logging
import os
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from lavis.datasets.datasets.base_dataset import BaseDataset

from lavis_mmict.datasets.media import MediaError, load_visual
from lavis_mmict.errors import ConfigError, DataError, UserError

TASK_KINDS = ("qa", "caption")
# The record field naming the media file, per LAVIS `data_type`.
MEDIA_FIELD = {"videos": "video", "images": "image"}
QA_FIELDS = ("question", "answer", "question_id")
# Optional QA record fields passed on to the task: icl_vqa reports accuracy per question/answer
# type, and VizWiz's unanswerability from `answerable` (0/1).
ANSWER_BREAKDOWN_FIELDS = ("question_type", "answer_type", "answerable")
# Caption prompt of the query when none is configured.
DEFAULT_CAPTION_PROMPTS = {"videos": ["A short video caption:"], "images": ["A short image caption:"]}


def required_fields(data_type: str) -> tuple:
    """Fields every QA annotation record must have for ``data_type`` (videos | images)."""
    return (media_field_for(data_type),) + QA_FIELDS


def media_field_for(data_type: str) -> str:
    if data_type not in MEDIA_FIELD:
        raise ConfigError(f"Unknown data_type {data_type!r}; valid: {sorted(MEDIA_FIELD)}")
    return MEDIA_FIELD[data_type]


def read_annotation_files(ann_paths: Sequence[str]) -> List[tuple]:
    """[(file, index in file, record)] of LAVIS json annotation files (each a list of dicts)."""
    located = []
    for ann_path in ann_paths:
        if not os.path.isfile(ann_path):
            raise AnnotationFileNotFound(f"Annotation file not found: {ann_path}")
        try:
            with open(ann_path, "r") as file:
                file_records = json.load(file)
        except ValueError as error:
            raise DataError(f"Annotation file {ann_path} is not valid json: {error}") from None
        if not isinstance(file_records, list):
            raise DataError(f"Annotation file {ann_path} must hold a json list of records")
        for index, record in enumerate(file_records):
            if not isinstance(record, dict):
                raise DataError(f"Annotation file {ann_path}: record {index} is not a json object")
            located.append((ann_path, index, record))
    if not located:
        raise DataError(f"Empty split: no annotation records in {list(ann_paths)}")
    return located


class AnnotationFileNotFound(UserError, FileNotFoundError):
    """An annotation file of a split does not exist."""


def _missing_field_error(ann_path, index, record, missing):
    return DataError(
        f"Annotation file {ann_path}: record {index} ({_identity(record)}) is missing field(s) {missing}"
    )


def _identity(record: dict) -> str:
    """How a record is named in messages: its question_id, else image_id, else its media."""
    for key in ("question_id", "image_id", "video", "image"):
        if key in record:
            return f"{key}={record[key]!r}"
    return "no id"


def load_annotations(ann_paths: Sequence[str], fields: Sequence[str]) -> List[dict]:
    """Records of the files; each must have ``fields`` (ValueError naming file, record, field)."""
    return _records_with_fields(read_annotation_files(ann_paths), fields)


def _records_with_fields(located, fields: Sequence[str]) -> List[dict]:
    """The records of ``located`` (file, index, record) triples, each checked to carry ``fields``."""
    records = []
    for ann_path, index, record in located:
        missing = [field for field in fields if field not in record]
        if missing:
            raise _missing_field_error(ann_path, index, record, missing)
        records.append(record)
    return records


def load_qa_records(ann_paths: Sequence[str], data_type: str, is_train: bool) -> List[dict]:
    """QA records (see module docstring); ``answer`` is optional only as a whole eval split."""
    located = read_annotation_files(ann_paths)
    unlabelled = not is_train and not any("answer" in record for _, _, record in located)
    fields = [f for f in required_fields(data_type) if not (unlabelled and f == "answer")]
    if unlabelled:
        logging.warning("%s hold no `answer`: an unlabelled split, its answers are not scored.",
                        list(ann_paths))
    records = _records_with_fields(located, fields)
    _check_answers(located, is_train)
    if not is_train:
        _check_unique_question_ids(located)
    return records


def _check_answers(located, is_train):
    """No empty answer (it would score an empty or all-punctuation prediction as correct); in an
    evaluation split no empty entry of an answer list either."""
    for ann_path, index, record in located:
        if "answer" not in record:
            continue
        answers = record["answer"] if isinstance(record["answer"], list) else [record["answer"]]
        empty = [a for a in answers if not str(a).strip()]
        if not answers or (empty and (not is_train or len(empty) == len(answers))):
            raise DataError(f"Annotation file {ann_path}: record {index} ({_identity(record)}) has "
                            f"an empty answer {record['answer']!r}")


def _check_unique_question_ids(located):
    """An evaluation split's question ids are unique (results are kept once per id)."""
    where = {}
    for ann_path, index, record in located:
        where.setdefault(_hashable(record["question_id"]), []).append(f"{ann_path} record {index}")
    repeated = {qid: places for qid, places in where.items() if len(places) > 1}
    if repeated:
        shown = "; ".join(f"question_id {qid!r} in {', '.join(places)}"
                          for qid, places in list(repeated.items())[:5])
        more = f" (and {len(repeated) - 5} more ids)" if len(repeated) > 5 else ""
        raise DataError(f"Evaluation split with repeated question ids ({len(repeated)} ids; each "
                        f"question is scored once, so repeats would silently not count): {shown}{more}")


def _hashable(value):
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def load_caption_records(ann_paths: Sequence[str], data_type: str, is_train: bool) -> List[dict]:
    """Caption records: one per caption (training) or one per image_id with all captions (eval)."""
    media_field = media_field_for(data_type)
    by_image_id: Dict[object, dict] = {}
    records = []
    for ann_path, index, record in read_annotation_files(ann_paths):
        missing = [field for field in (media_field, "caption") if field not in record]
        if missing:
            raise _missing_field_error(ann_path, index, record, missing)
        captions = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
        if not captions or not all(isinstance(c, str) for c in captions):
            raise DataError(
                f"Annotation file {ann_path}: record {index} field 'caption' must be a string or a "
                f"non-empty list of strings, got {record['caption']!r}"
            )
        image_id = record.get("image_id", record[media_field])
        if is_train:
            records.extend(dict(record, caption=caption, image_id=image_id) for caption in captions)
        elif image_id in by_image_id:
            by_image_id[image_id]["caption"].extend(captions)
        else:
            merged = dict(record, caption=list(captions), image_id=image_id)
            by_image_id[image_id] = merged
            records.append(merged)
    return records


def most_common(value):
    """A list-valued field (VQAv2 answers) as its most frequent element (first one on ties)."""
    if isinstance(value, list):
        return Counter(value).most_common(1)[0][0] if value else ""
    return value


class MediaRecordDataset(BaseDataset):
    """Map-style LAVIS dataset over QA or caption records (no demonstrations: ICLDataset adds them).

    Args:
        vis_processor: LAVIS image processor applied to every frame (``blip2_image_train`` ...).
        text_processor: applied to the question (qa) or to the target caption (caption).
        vis_root: folder the records' media paths are relative to.
        ann_paths: annotation json files of this split.
        task_kind: ``qa`` | ``caption``.
        data_type: ``videos`` | ``images``.
        num_frames: F frames per clip (images: F = 1); frame_sampling: uniform | headtail;
        decode_size: decode videos at this size (int or [h, w]; None = native).
        is_train: training split (captions: one item per caption; caption prompt drawn per epoch).
        caption_prompts: query prompts of captioning; training draws one per (seed, epoch, item),
            evaluation uses the first.
        name: "<dataset>/<split>" for messages.

    ``self[i]``: ``{"image": (F,3,H,W), "text_input": str, "text_output": str (or the answer list
    of an eval VQAv2 record, or None when unlabelled), ids...}``: ``question_id`` (+
    ``question_type`` when present) for qa; ``image_id`` for captions (and image QA); ``video``
    for videos.
    """

    def __init__(
        self,
        vis_processor: Callable,
        text_processor: Callable,
        vis_root: str,
        ann_paths: Sequence[str],
        task_kind: str = "qa",
        data_type: str = "videos",
        num_frames: int = 4,
        frame_sampling: str = "uniform",
        decode_size=None,
        is_train: bool = False,
        caption_prompts: Optional[Sequence[str]] = None,
        prompt_seed: int = 0,
        name: str = "dataset",
    ):
        super().__init__(vis_processor, text_processor, vis_root, ann_paths=[])
        if task_kind not in TASK_KINDS:
            raise ConfigError(f"{name}: unknown task kind {task_kind!r}; valid: {list(TASK_KINDS)}")
        self.task_kind = task_kind
        self.data_type = data_type
        self.media_field = media_field_for(data_type)
        self.annotation_paths = list(ann_paths)
        loader = load_qa_records if task_kind == "qa" else load_caption_records
        self.annotation = loader(self.annotation_paths, data_type, is_train)
        self._add_instance_ids()
        self.name = name
        self.num_frames = int(num_frames) if data_type == "videos" else 1
        self.frame_sampling = frame_sampling
        self.decode_size = decode_size
        self.is_train = is_train
        self.epoch = 0
        self.caption_prompts = list(caption_prompts or DEFAULT_CAPTION_PROMPTS[data_type])
        self.prompt_seed = int(prompt_seed)

    @property
    def labelled(self) -> bool:
        """Whether the split has ground truth (False: an unlabelled QA split, e.g. VQAv2 test-dev)."""
        return self.task_kind == "caption" or any("answer" in r for r in self.annotation)

    @property
    def captions_by_image_id(self) -> Dict[object, List[str]]:
        """Ground truth of a caption split: {image_id: all its captions} (eval and training)."""
        grouped: Dict[object, List[str]] = {}
        for record in self.annotation:
            captions = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
            grouped.setdefault(record["image_id"], []).extend(captions)
        return grouped

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def media_path(self, index: int) -> str:
        return os.path.join(self.vis_root, self.annotation[index][self.media_field])

    def load_frames(self, index: int, vis_processor: Optional[Callable] = None) -> torch.Tensor:
        """Processed frames (F,3,H,W) of record ``index``; MediaError names the record and file."""
        try:
            return load_visual(self.media_path(index), vis_processor or self.vis_processor,
                               self.num_frames, self.data_type == "videos", self.frame_sampling,
                               self.decode_size)
        except MediaError as error:
            raise MediaError(f"{self.name}: record {index} ({_identity(self.annotation[index])}): "
                             f"{error}") from error

    def caption_prompt(self, index: int) -> str:
        if not self.is_train or len(self.caption_prompts) == 1:
            return self.caption_prompts[0]
        rng = np.random.default_rng([self.prompt_seed, self.epoch, int(index)])
        return self.caption_prompts[int(rng.integers(len(self.caption_prompts)))]

    def text_fields(self, index: int) -> dict:
        """The query's text and ids (everything but the frames)."""
        record = self.annotation[index]
        if self.task_kind == "caption":
            caption = record["caption"] if isinstance(record["caption"], str) else record["caption"][0]
            item = {
                "text_input": self.caption_prompt(index),
                "text_output": self.text_processor(caption) if self.is_train else caption,
                "image_id": record["image_id"],
            }
        else:
            answer = record.get("answer")
            if isinstance(answer, list) and self.is_train:
                answer = most_common(answer)  # training target: the annotators' majority answer
            elif answer is not None and not isinstance(answer, list):
                answer = str(answer)
            # Evaluation keeps a VQAv2 answer list: icl_vqa scores it with the VQA formula.
            item = {
                "text_input": self.text_processor(record["question"]),
                "text_output": answer,
                "question_id": record["question_id"],
            }
            for field in ANSWER_BREAKDOWN_FIELDS:  # the task reports accuracy per type, answerability
                if field in record:
                    item[field] = record[field]
            if self.data_type == "images":
                item["image_id"] = record.get("image_id", record["image"])
        if self.data_type == "videos":
            item["video"] = record["video"]
        return item

    def __getitem__(self, index: int) -> dict:
        return {"image": self.load_frames(index), **self.text_fields(index)}
