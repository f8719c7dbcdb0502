"""Registered LAVIS dataset builders for demo-aware (``*_icl``) datasets.

``ICLDatasetBuilder`` turns a LAVIS dataset config (``build_info``, ``vis_processor``,
``text_processor``) plus a ``demonstrations`` block into one ``ICLDataset`` per split:

- ``videoqa_icl`` / ``imageqa_icl``: any QA file in LAVIS's format (records.py);
  ``msvd_qa_icl``, ``msrvtt_qa_icl`` (videos) and ``vqav2_icl`` (images, answer lists) are the
  same with default paths where LAVIS's own configs put those datasets;
- ``caption_icl``: any caption file (``data_type: videos | images``); ``msvd_caption_icl``,
  ``msrvtt_caption_icl`` (videos) and ``coco_caption_icl`` (Karpathy split, images) likewise;
- ``synthetic_videoqa_icl``: the embedded generated video-QA set;
- AIM's evaluation sets: ``okvqa_icl``, ``vizwiz_icl`` (image QA, 10 answers each; VizWiz's
  records carry ``answerable``), ``hateful_memes_icl`` (image + meme text, answer yes/no, scored by
  ``icl_classification``) and ``flickr30k_caption_icl`` (Karpathy split captions).

Paths (``build_info.annotations.<split>.storage``, ``build_info.<videos|images>.storage``):
absolute paths are used as given; relative ones are relative to ``build_info.root`` when set (a
relative root is relative to the current directory), else to the data root (LAVIS's
``cache_root``: ``env.cache_root`` / ``$LAVIS_CACHE_ROOT``, see data_root.py). A missing file or
folder is a :class:`~lavis_mmict.data_root.DataFileNotFoundError` naming the root it resolved
against. A missing annotation file with a ``url`` is downloaded (main process, as LAVIS does)
unless ``HF_HUB_OFFLINE=1``; an existing one is never touched. Videos and images are never
downloaded (docs/data.md).
"""
import logging
import os
from typing import Dict, List

from lavis.common.registry import registry
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from omegaconf import OmegaConf

from lavis_mmict.data_root import DataFileNotFoundError, data_root, describe_data_root
from lavis_mmict.datasets.demonstrations import DemonstrationConfig
from lavis_mmict.datasets.icl_dataset import ICLDataset
from lavis_mmict.datasets.records import DEFAULT_CAPTION_PROMPTS, MediaRecordDataset, TASK_KINDS
from lavis_mmict.datasets.synthetic import generate_synthetic_videoqa

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
SPLITS = ("train", "val", "test")


def resolve_from_cwd(path: str) -> str:
    """A config path made absolute against the current directory (LAVIS uses its cache root)."""
    return os.path.abspath(os.path.expanduser(str(path)))


def _as_list(value) -> List:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _config_path(name: str) -> str:
    return os.path.join(CONFIG_ROOT, "datasets", name, "defaults.yaml")


class ICLDatasetBuilder(BaseDatasetBuilder):
    """Builds an ``ICLDataset`` for each split of ``split_annotation_paths``.

    Dataset config keys besides LAVIS's usual ones (all documented in docs/configuration.md):
    ``task_kind`` (qa | caption; fixed by each builder), ``num_frames`` (F, default 4),
    ``frame_sampling`` (uniform | headtail), ``decode_size`` (decode videos at this size; int or
    [h, w]), ``skip_bad_media`` (default false), ``caption_prompts`` (captions) and
    ``demonstrations`` (demonstrations.py). Demonstrations always use the eval visual processor.
    """

    dataset_name = "icl"
    task_kind = "qa"

    # ------------------------------------------------------------------ paths
    def resolve(self, path: str) -> str:
        """A config path made absolute (see the module docstring)."""
        return self._resolve(path)[0]

    def _resolve(self, path: str):
        """(absolute path, what a relative path was resolved against, or None for an absolute one)."""
        path = os.path.expanduser(str(path))
        if os.path.isabs(path):
            return path, None
        root = self.config.build_info.get("root", None)
        if root:
            root = resolve_from_cwd(root)
            return os.path.join(root, path), f"datasets.{self.dataset_name}.build_info.root {root}"
        return os.path.join(data_root(), path), describe_data_root()

    def _missing(self, what: str, storage: str, hint: str) -> DataFileNotFoundError:
        """The error for a missing file/folder: its path and, if relative, the root it resolved against."""
        path, against = self._resolve(storage)
        where = f" ('{storage}' resolved against {against})" if against else ""
        return DataFileNotFoundError(f"{self.dataset_name}: {what} not found: {path}{where}. {hint}")

    def _annotation_entries(self) -> Dict[str, List[tuple]]:
        """{split: [(absolute path, url or None, path as configured)]} from ``build_info.annotations``."""
        annotations = self.config.build_info.get("annotations", None) or {}
        entries = {}
        for split, info in annotations.items():
            if info is None:  # `test: null` removes a default split
                continue
            if split not in SPLITS:
                raise ValueError(f"{self.dataset_name}: unknown split {split!r} under "
                                 f"build_info.annotations; valid: {list(SPLITS)}")
            storages, urls = _as_list(info.get("storage")), _as_list(info.get("url"))
            if not storages:
                raise ValueError(f"{self.dataset_name}: build_info.annotations.{split}.storage is not set")
            urls = urls + [None] * (len(storages) - len(urls))
            entries[split] = [(self.resolve(s), u, s) for s, u in zip(storages, urls)]
        if not entries:
            raise ValueError(
                f"{self.dataset_name}: no annotation files configured; set "
                f"datasets.{self.dataset_name}.build_info.annotations.<train|val|test>.storage"
            )
        return entries

    def split_annotation_paths(self) -> Dict[str, List[str]]:
        """{split: [absolute annotation paths]}; a missing file is an error naming it (and its url)."""
        found = {}
        for split, entries in self._annotation_entries().items():
            for path, url, storage in entries:
                if not os.path.isfile(path):
                    download = f"It was not downloaded from {url} (see the log). " if url else ""
                    raise self._missing(
                        f"annotation file of split {split!r}", storage,
                        f"{download}Set datasets.{self.dataset_name}.build_info.annotations.{split}.storage, "
                        f"or convert the official files with run_scripts/data/ (docs/data.md)")
            found[split] = [path for path, _, _ in entries]
        return found

    def media_root(self) -> str:
        """Absolute folder the records' media paths are relative to."""
        media = self.config.build_info.get(self.data_type, None)
        if media is None or media.get("storage") is None:
            raise ValueError(f"{self.dataset_name}: set build_info.{self.data_type}.storage (the media folder)")
        root = self.resolve(media.storage)
        if not os.path.isdir(root):
            raise self._missing(f"{self.data_type} folder", media.storage,
                                f"Set datasets.{self.dataset_name}.build_info.{self.data_type}.storage (docs/data.md)")
        return root

    def _download_data(self):
        """Download missing annotation files that have a url (main process); never media."""
        from lavis.common.utils import download_url

        for split, entries in self._annotation_entries().items():
            for path, url, _ in entries:
                if os.path.isfile(path) or not url:
                    continue
                if os.environ.get("HF_HUB_OFFLINE") == "1":
                    logging.error("%s: %s is missing and HF_HUB_OFFLINE=1 forbids downloading %s",
                                  self.dataset_name, path, url)
                    continue
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    download_url(url=url, root=os.path.dirname(path), filename=os.path.basename(path))
                except Exception as error:  # reported by split_annotation_paths on every rank
                    logging.error("%s: downloading %s failed: %s", self.dataset_name, url, error)

    # ------------------------------------------------------------------ build
    def _record_dataset(self, split: str, ann_paths: List[str], vis_root: str, seed: int):
        is_train = split == "train"
        mode = "train" if is_train else "eval"
        prompts = self.config.get("caption_prompts", None)
        return MediaRecordDataset(
            vis_processor=self.vis_processors[mode],
            text_processor=self.text_processors[mode],
            vis_root=vis_root,
            ann_paths=ann_paths,
            task_kind=self.task_kind,
            data_type=self.data_type,
            num_frames=int(self.config.get("num_frames", 4)),
            frame_sampling=self.config.get("frame_sampling", "uniform"),
            decode_size=_plain(self.config.get("decode_size", None)),
            is_train=is_train,
            caption_prompts=list(prompts) if prompts else DEFAULT_CAPTION_PROMPTS[self.data_type],
            prompt_seed=seed,
            name=f"{self.dataset_name}/{split}",
        )

    def build(self):
        if self.task_kind not in TASK_KINDS:
            raise ValueError(f"{self.dataset_name}: task_kind must be one of {list(TASK_KINDS)}")
        self.build_processors()
        demo_config = DemonstrationConfig.from_config(self.config.get("demonstrations"))
        ann_paths = self.split_annotation_paths()
        vis_root = self.media_root()
        skip_bad_media = bool(self.config.get("skip_bad_media", False))

        pool_split = demo_config.pool
        if pool_split != "self" and pool_split not in ann_paths:
            raise ValueError(
                f"{self.dataset_name}: demonstrations.pool = {pool_split!r} but that split has no "
                f"annotations; available splits: {sorted(ann_paths)}"
            )
        records = {split: self._record_dataset(split, ann_paths[split], vis_root, demo_config.seed)
                   for split in SPLITS if split in ann_paths}
        datasets = {}
        for split, dataset in records.items():
            shares_pool = pool_split in ("self", split)
            datasets[split] = ICLDataset(
                dataset,
                demo_config,
                pool=None if shares_pool else records[pool_split],
                demo_vis_processor=self.vis_processors["eval"],
                is_train=split == "train",
                name=dataset.name,
                skip_bad_media=skip_bad_media,
                task_kind=self.task_kind,
            )
        return datasets


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


@registry.register_builder("videoqa_icl")
class VideoQAICLBuilder(ICLDatasetBuilder):
    """Any video-QA json in LAVIS's format (records.py); set build_info."""

    dataset_name = "videoqa_icl"
    task_kind = "qa"
    DATASET_CONFIG_DICT = {"default": _config_path("videoqa_icl")}


@registry.register_builder("imageqa_icl")
class ImageQAICLBuilder(ICLDatasetBuilder):
    """Any image-QA json in LAVIS's format (answer or answer list); set build_info."""

    dataset_name = "imageqa_icl"
    task_kind = "qa"
    DATASET_CONFIG_DICT = {"default": _config_path("imageqa_icl")}


@registry.register_builder("caption_icl")
class CaptionICLBuilder(ICLDatasetBuilder):
    """Any caption json in LAVIS's format, ``data_type: videos | images``; set build_info."""

    dataset_name = "caption_icl"
    task_kind = "caption"
    DATASET_CONFIG_DICT = {"default": _config_path("caption_icl")}


@registry.register_builder("msvd_qa_icl")
class MSVDQAICLBuilder(ICLDatasetBuilder):
    """MSVD-QA in LAVIS's json (LAVIS's files, or run_scripts/data/convert_msvd_qa.py)."""

    dataset_name = "msvd_qa_icl"
    task_kind = "qa"
    DATASET_CONFIG_DICT = {"default": _config_path("msvd_qa_icl")}


@registry.register_builder("msrvtt_qa_icl")
class MSRVTTQAICLBuilder(ICLDatasetBuilder):
    """MSRVTT-QA in LAVIS's json (LAVIS's files, or run_scripts/data/convert_msrvtt_qa.py)."""

    dataset_name = "msrvtt_qa_icl"
    task_kind = "qa"
    DATASET_CONFIG_DICT = {"default": _config_path("msrvtt_qa_icl")}


@registry.register_builder("msvd_caption_icl")
class MSVDCaptionICLBuilder(ICLDatasetBuilder):
    """MSVD captions in LAVIS's json (LAVIS's cap_*.json files)."""

    dataset_name = "msvd_caption_icl"
    task_kind = "caption"
    DATASET_CONFIG_DICT = {"default": _config_path("msvd_caption_icl")}


@registry.register_builder("msrvtt_caption_icl")
class MSRVTTCaptionICLBuilder(ICLDatasetBuilder):
    """MSRVTT captions in LAVIS's json (LAVIS's cap_*.json files)."""

    dataset_name = "msrvtt_caption_icl"
    task_kind = "caption"
    DATASET_CONFIG_DICT = {"default": _config_path("msrvtt_caption_icl")}


@registry.register_builder("coco_caption_icl")
class COCOCaptionICLBuilder(ICLDatasetBuilder):
    """COCO captions, Karpathy split (LAVIS's files, or run_scripts/data/convert_coco_karpathy.py)."""

    dataset_name = "coco_caption_icl"
    task_kind = "caption"
    DATASET_CONFIG_DICT = {"default": _config_path("coco_caption_icl")}


@registry.register_builder("vqav2_icl")
class VQAv2ICLBuilder(ICLDatasetBuilder):
    """VQAv2 with annotator answer lists (LAVIS's files, or run_scripts/data/convert_vqav2.py)."""

    dataset_name = "vqav2_icl"
    task_kind = "qa"
    DATASET_CONFIG_DICT = {"default": _config_path("vqav2_icl")}


@registry.register_builder("okvqa_icl")
class OKVQAICLBuilder(ICLDatasetBuilder):
    """OK-VQA (COCO images, 10 answers; LAVIS's files, or run_scripts/data/convert_vqav2.py)."""

    dataset_name = "okvqa_icl"
    task_kind = "qa"
    DATASET_CONFIG_DICT = {"default": _config_path("okvqa_icl")}


@registry.register_builder("vizwiz_icl")
class VizWizICLBuilder(ICLDatasetBuilder):
    """VizWiz-VQA (10 answers incl. "unanswerable", ``answerable``; run_scripts/data/convert_vizwiz.py)."""

    dataset_name = "vizwiz_icl"
    task_kind = "qa"
    DATASET_CONFIG_DICT = {"default": _config_path("vizwiz_icl")}


@registry.register_builder("hateful_memes_icl")
class HatefulMemesICLBuilder(ICLDatasetBuilder):
    """Hateful Memes as yes/no QA on the meme text (run_scripts/data/convert_hateful_memes.py)."""

    dataset_name = "hateful_memes_icl"
    task_kind = "qa"
    DATASET_CONFIG_DICT = {"default": _config_path("hateful_memes_icl")}


@registry.register_builder("flickr30k_caption_icl")
class Flickr30kCaptionICLBuilder(ICLDatasetBuilder):
    """Flickr30k captions, Karpathy split (run_scripts/data/convert_flickr30k_karpathy.py)."""

    dataset_name = "flickr30k_caption_icl"
    task_kind = "caption"
    DATASET_CONFIG_DICT = {"default": _config_path("flickr30k_caption_icl")}


@registry.register_builder("synthetic_videoqa_icl")
class SyntheticVideoQAICLBuilder(ICLDatasetBuilder):
    """The embedded synthetic video-QA data (see synthetic.py), generated under ``build_info.storage``.

    Reads ``<storage>/annotations/<split>.json`` and ``<storage>/videos``; a relative storage path
    is relative to the current working directory.
    """

    dataset_name = "synthetic_videoqa_icl"
    DATASET_CONFIG_DICT = {"default": _config_path("synthetic_videoqa_icl")}

    def storage_root(self) -> str:
        return resolve_from_cwd(self.config.build_info.storage)

    def _download_data(self):
        """Generate the data if missing (LAVIS runs this on the main process only); no download."""
        build_info = self.config.build_info
        num_clips = build_info.get("num_clips")
        generate_synthetic_videoqa(
            self.storage_root(),
            seed=int(build_info.get("seed", 0)),
            num_clips=dict(num_clips) if num_clips is not None else None,
            num_frames=int(build_info.get("video_frames", 8)),
            size=int(build_info.get("frame_size", 32)),
        )

    def split_annotation_paths(self):
        annotation_dir = os.path.join(self.storage_root(), "annotations")
        found = {
            split: [os.path.join(annotation_dir, f"{split}.json")]
            for split in SPLITS
            if os.path.isfile(os.path.join(annotation_dir, f"{split}.json"))
        }
        if not found:
            raise FileNotFoundError(f"{self.dataset_name}: no <split>.json in {annotation_dir}")
        return found

    def media_root(self):
        return os.path.join(self.storage_root(), "videos")
