"""Task ``icl_captioning``: in-context (image/video) captioning, scored with the COCO caption metrics.

``model.generate`` writes one caption per query; every rank's captions are gathered and each
``image_id`` kept once in ``result/<split>_epoch<epoch>.json`` (LAVIS's format:
``[{"image_id": ..., "caption": ...}]``); rank 0 scores them against the ground truth with
pycocoevalcap (see :mod:`lavis_mmict.tasks.caption_metrics` for what needs java).

Ground truth comes from the evaluated dataset itself, never from a download (LAVIS's captioning
task downloads the COCO Karpathy files). In order of preference:

1. ``run.caption_gt_files.<split>``: a COCO-style file (``{"annotations": [{"image_id",
   "caption"}], "images": [...]}``, e.g. LAVIS's ``coco_karpathy_test_gt.json``) or a LAVIS
   caption annotation file (``[{"image": ..., "caption": str or [str], "image_id": ...}]``);
2. the dataset's ``captions_by_image_id`` ({image_id: [captions]}), when it has one;
3. the dataset's ``annotation`` records (``caption`` + ``image_id``; the media path when a record
   has no ``image_id``), else the files in its ``annotation_paths``.

Run config keys (all optional): ``num_beams`` (5), ``max_len`` (30), ``min_len`` (8), ``prompt``
("" = the model's / dataset's prompt), ``caption_metrics`` (``auto`` = every available one, or a
list of ``BLEU``, ``METEOR``, ``ROUGE_L``, ``CIDEr``, ``SPICE``), ``caption_tokenizer`` (``auto`` |
``ptb`` (java) | ``python``), ``caption_gt_files`` ({split: path}), ``eval_log_freq`` (10).

Metrics: ``Bleu_1``..``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``, ``SPICE`` (those computed, as
pycocoevalcap reports them), ``num_images``, and ``agg_metrics`` = ``CIDEr + Bleu_4`` as LAVIS's
captioning task.
"""
import contextlib
import io
import json
import logging
import os

from lavis.common.registry import registry

from lavis_mmict.tasks.caption_metrics import (
    compute_caption_metrics,
    java_available,
    resolve_metrics,
)
from lavis_mmict.tasks.evaluation import ICLEvalTask, plain
from lavis_mmict.errors import ConfigError, DataError

__all__ = ["ICLCaptionTask", "aggregate_caption_score", "captions_from_records", "load_ground_truth_file", "dataset_ground_truth"]

TOKENIZERS = ("auto", "ptb", "python")


def _caption_list(value, where):
    captions = value if isinstance(value, list) else [value]
    if not captions or not all(isinstance(caption, str) for caption in captions):
        raise DataError(f"{where}: 'caption' must be a string or a non-empty list of strings, got {value!r}")
    return captions


def captions_from_records(records, where="annotation"):
    """{image_id: [captions]} of LAVIS caption records (the media path when there is no image_id)."""
    grouped = {}
    for index, record in enumerate(records):
        if "caption" not in record:
            raise DataError(f"{where}: record {index} has no 'caption' field")
        image_id = record.get("image_id", record.get("image", record.get("video")))
        if image_id is None:
            raise DataError(f"{where}: record {index} has no 'image_id' (nor an 'image'/'video' path)")
        grouped.setdefault(image_id, []).extend(_caption_list(record["caption"], f"{where}: record {index}"))
    return grouped


def load_ground_truth_file(path):
    """{image_id: [captions]} from a COCO-style gt json or a LAVIS caption annotation json."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Caption ground-truth file not found: {path}")
    with open(path) as f:
        try:
            content = json.load(f)
        except ValueError as error:
            raise DataError(f"Caption ground-truth file {path} is not valid json: {error}") from None
    if isinstance(content, dict):
        return _coco_captions(content, path)
    if isinstance(content, list):
        return captions_from_records(content, where=path)
    raise DataError(f"Caption ground-truth file {path} must hold a COCO-style object or a list of records")


def _coco_captions(content, path):
    """{image_id: [captions]} of a COCO-format caption file, indexed by pycocotools' ``COCO``."""
    from pycocotools.coco import COCO

    if "annotations" not in content:
        raise DataError(f"Caption ground-truth file {path}: a COCO-style file needs an 'annotations' list")
    for index, annotation in enumerate(content["annotations"]):  # COCO would stop at a bare KeyError
        missing = [key for key in ("image_id", "caption") if key not in annotation]
        if missing:
            raise DataError(f"Caption ground-truth file {path}: annotation {index} is missing {missing}")
        _caption_list(annotation["caption"], f"{path}: annotation {index}")
    coco = COCO()
    # annotation ids play no part in captions; numbered afresh, files without them are read too
    coco.dataset = dict(content, annotations=[dict(a, id=i) for i, a in enumerate(content["annotations"])])
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return {image_id: [caption for annotation in annotations
                       for caption in _caption_list(annotation["caption"], path)]
            for image_id, annotations in coco.imgToAnns.items()}


def _sub_datasets(dataset):
    """The datasets behind one split (LAVIS concatenates several datasets of the same split)."""
    if hasattr(dataset, "datasets"):
        return [d for sub in dataset.datasets for d in _sub_datasets(sub)]
    return [dataset]


def dataset_ground_truth(dataset):
    """{image_id: [captions]} of an evaluated dataset (see the module docstring for the order)."""
    grouped = {}
    for sub in _sub_datasets(dataset):
        name = getattr(sub, "name", type(sub).__name__)
        if hasattr(sub, "captions_by_image_id"):
            part = sub.captions_by_image_id
        elif getattr(sub, "annotation", None) is not None:
            part = captions_from_records(sub.annotation, where=f"{name} annotation")
        elif getattr(sub, "annotation_paths", None):
            part = {}
            for path in sub.annotation_paths:
                for key, captions in load_ground_truth_file(path).items():
                    part.setdefault(key, []).extend(captions)
        else:
            raise ConfigError(
                f"Dataset {name} exposes no caption ground truth (captions_by_image_id, annotation "
                f"or annotation_paths); set run.caption_gt_files.<split>"
            )
        for key, captions in part.items():
            grouped.setdefault(key, []).extend(captions)
    return grouped


def aggregate_caption_score(metrics):
    """LAVIS's model-selection score: CIDEr + BLEU-4 (whichever of them was computed; if neither,
    the first metric computed)."""
    chosen = [metrics[name] for name in ("CIDEr", "Bleu_4") if name in metrics]
    if chosen:
        return sum(chosen)
    return next(value for name, value in metrics.items() if name != "num_images")


def _id_key(image_id):
    """Ids compare as strings: json and datasets may disagree on 123 vs "123"."""
    return str(image_id)


@registry.register_task("icl_captioning")
class ICLCaptionTask(ICLEvalTask):
    """Captioning with in-context demonstrations; ``model.generate`` gives one caption per query."""

    result_id_key = "image_id"

    def __init__(self, num_beams=5, max_len=30, min_len=8, prompt="", caption_metrics="auto",
                 caption_tokenizer="auto", caption_gt_files=None, eval_log_freq=10):
        super().__init__(eval_log_freq=eval_log_freq)
        self.num_beams = num_beams
        self.max_len = max_len
        self.min_len = min_len
        self.prompt = prompt
        if caption_tokenizer not in TOKENIZERS:
            raise ConfigError(f"run.caption_tokenizer must be one of {TOKENIZERS}, got {caption_tokenizer!r}")
        if caption_tokenizer == "ptb" and not java_available():
            raise ConfigError("run.caption_tokenizer = ptb needs java (e.g. apt-get install default-jre-headless)")
        self.use_java = {"auto": None, "ptb": True, "python": False}[caption_tokenizer]
        if self.use_java is None and not java_available():
            logging.warning(
                "java not found: captions are tokenised with the pure-Python PTB approximation "
                "and METEOR/SPICE are skipped; scores may differ slightly from published ones."
            )
        self.metrics = resolve_metrics(caption_metrics)  # fails early when a named one cannot run
        self.caption_gt_files = dict(caption_gt_files or {})

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        run_cfg = cfg.run_cfg
        metrics = run_cfg.get("caption_metrics", "auto")
        if metrics is not None and not isinstance(metrics, str):
            metrics = list(metrics)
        gt_files = run_cfg.get("caption_gt_files", None)
        return cls(
            num_beams=int(run_cfg.get("num_beams", 5)),
            max_len=int(run_cfg.get("max_len", 30)),
            min_len=int(run_cfg.get("min_len", 8)),
            prompt=run_cfg.get("prompt", "") or "",
            caption_metrics=metrics,
            caption_tokenizer=str(run_cfg.get("caption_tokenizer", "auto")),
            caption_gt_files={str(k): str(v) for k, v in gt_files.items()} if gt_files else None,
            eval_log_freq=int(run_cfg.get("eval_log_freq", 10)),
        )

    def valid_step(self, model, samples):
        generate_kwargs = dict(
            use_nucleus_sampling=False,
            num_beams=self.num_beams,
            max_length=self.max_len,
            min_length=self.min_len,
        )
        if self.prompt:
            generate_kwargs["prompt"] = self.prompt
        captions = model.generate(samples, **generate_kwargs)
        image_ids = samples["image_id"]
        if len(captions) != len(image_ids):
            raise ValueError(f"generate returned {len(captions)} captions for {len(image_ids)} queries")
        return [{"image_id": plain(image_id), "caption": caption}
                for caption, image_id in zip(captions, image_ids)]

    def ground_truth(self, split_name):
        """{image_id: [captions]} of ``split_name``: the configured file, else the dataset's own."""
        if split_name in self.caption_gt_files:
            return load_ground_truth_file(self.caption_gt_files[split_name]), self.caption_gt_files[split_name]
        if self.eval_dataset is None:
            raise ConfigError(
                f"No ground truth for split {split_name!r}: no dataset was evaluated "
                f"(before_evaluation) and run.caption_gt_files.{split_name} is not set"
            )
        name = getattr(self.eval_dataset, "name", split_name)
        return dataset_ground_truth(self.eval_dataset), f"dataset {name}"

    def score(self, results, split_name):
        ground_truth, source = self.ground_truth(split_name)
        references = {_id_key(key): captions for key, captions in ground_truth.items()}
        predictions = {_id_key(r["image_id"]): str(r["caption"]) for r in results}
        unknown = [key for key in predictions if key not in references]
        if unknown:
            raise DataError(
                f"{split_name}: {len(unknown)} predicted image_id(s) have no ground-truth caption in "
                f"{source}, e.g. {unknown[:5]}"
            )
        unpredicted = len(references) - len(predictions)
        if unpredicted > 0:
            logging.warning("%s: %d of %d images in %s have no prediction; scoring the %d predicted.",
                            split_name, unpredicted, len(references), source, len(predictions))
        metrics = compute_caption_metrics(references, predictions, self.metrics, self.use_java)
        metrics["num_images"] = len(predictions)
        metrics["agg_metrics"] = aggregate_caption_score(metrics)
        return metrics
