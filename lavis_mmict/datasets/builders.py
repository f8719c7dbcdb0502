"""Registered LAVIS dataset builders for demo-aware (``*_icl``) datasets.

``ICLDatasetBuilder`` turns a LAVIS dataset config (``build_info``, ``vis_processor``,
``text_processor``) plus a ``demonstrations`` block into one ``ICLDataset`` per split. Subclasses
say where each split's annotations and the media live; ``synthetic_videoqa_icl`` generates its
data locally on first use.
"""
import os
from typing import Dict, List

from lavis.common.registry import registry
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder

from lavis_mmict.datasets.demonstrations import DemonstrationConfig
from lavis_mmict.datasets.icl_dataset import DemoPool, ICLDataset
from lavis_mmict.datasets.synthetic import generate_synthetic_videoqa

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
SPLITS = ("train", "val", "test")


def resolve_from_cwd(path: str) -> str:
    """A config path made absolute against the current directory (LAVIS uses its cache root)."""
    return os.path.abspath(os.path.expanduser(str(path)))


class ICLDatasetBuilder(BaseDatasetBuilder):
    """Builds an ``ICLDataset`` for each split found by ``split_annotation_paths``.

    Config keys read besides LAVIS's usual ones: ``num_frames`` (F, default 4),
    ``frame_sampling`` (uniform | headtail) and ``demonstrations`` (see demonstrations.py).
    Demonstrations always use the eval visual processor; with ``pool: <split>`` the pool is that
    split's records (also loaded with the eval processor).
    """

    dataset_name = "icl"
    dataset_cls = ICLDataset

    def split_annotation_paths(self) -> Dict[str, List[str]]:
        """{split: [absolute annotation paths]} for the splits that exist."""
        raise NotImplementedError

    def media_root(self) -> str:
        """Absolute folder the records' media paths are relative to."""
        raise NotImplementedError

    def build(self):
        self.build_processors()
        demo_config = DemonstrationConfig.from_config(self.config.get("demonstrations"))
        ann_paths = self.split_annotation_paths()
        vis_root = self.media_root()

        pool_split = demo_config.pool
        if pool_split != "self" and pool_split not in ann_paths:
            raise ValueError(
                f"{self.dataset_name}: demonstrations.pool = {pool_split!r} but that split has no "
                f"annotations; available splits: {sorted(ann_paths)}"
            )
        # Build the pool split first so the other splits can share its records.
        order = sorted(ann_paths, key=lambda split: (split != pool_split, SPLITS.index(split)))
        datasets = {}
        for split in order:
            is_train = split == "train"
            mode = "train" if is_train else "eval"
            shares_pool = pool_split in ("self", split)
            demo_pool = None if shares_pool else DemoPool(
                datasets[pool_split].annotation, vis_root, f"{self.dataset_name}/{pool_split}"
            )
            datasets[split] = self.dataset_cls(
                vis_processor=self.vis_processors[mode],
                text_processor=self.text_processors[mode],
                vis_root=vis_root,
                ann_paths=ann_paths[split],
                demo_config=demo_config,
                demo_vis_processor=self.vis_processors["eval"],
                demo_pool=demo_pool,
                num_frames=int(self.config.get("num_frames", 4)),
                data_type=self.data_type,
                is_train=is_train,
                name=f"{self.dataset_name}/{split}",
                frame_sampling=self.config.get("frame_sampling", "uniform"),
            )
        return {split: datasets[split] for split in SPLITS if split in datasets}


@registry.register_builder("synthetic_videoqa_icl")
class SyntheticVideoQAICLBuilder(ICLDatasetBuilder):
    """The embedded synthetic video-QA data (see synthetic.py), generated under ``build_info.storage``.

    Reads ``<storage>/annotations/<split>.json`` and ``<storage>/videos``; a relative storage path
    is relative to the current working directory.
    """

    dataset_name = "synthetic_videoqa_icl"
    DATASET_CONFIG_DICT = {
        "default": os.path.join(CONFIG_ROOT, "datasets", "synthetic_videoqa_icl", "defaults.yaml"),
    }

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
