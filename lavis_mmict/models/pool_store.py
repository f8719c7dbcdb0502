"""Pool feature store (``model.demo_feature_store``): the frozen ViT output of every demonstration
clip of the pool, computed once before training and read memory-mapped, so the dataset never
decodes a stored demo's video.

Entries are exactly the demo feature cache's (models/feature_cache.py): the clip's
``demo_media_key`` from the dataset, the ViT output before ``ln_vision`` (F, P, Dv) in the dtype
the model computes it in, under the encoder fingerprint ``MMICTBlip2.vit_fingerprint`` (weights,
image size, device type, autocast dtype). Layout::

    <dir>/<fingerprint>/part-<digest>.safetensors   tensors named by key; metadata: format, fingerprint
    <dir>/<fingerprint>/store.json                  format, fingerprint, the part files, key count

Filling (``fill_pool_store``, by ``run_scripts/data/fill_feature_store.py`` or at start-up with
``demo_feature_store: fill``): the keys not yet stored are split across ranks
(datasets/sharded_media.py: batches, DataLoader workers, progress bar); each rank writes its part
files (atomically, at most ``PART_BYTES`` each), then rank 0 lists them in ``store.json``.
Reading (``PoolFeatureStore``): each part is opened once with ``safe_open`` (memory-mapped); a
part or ``store.json`` written for another fingerprint or format is refused with
``FeatureStoreError`` naming the file.

Using it (``attach_pool_store``): the model's feature cache consults the store (the ViT never runs
on a stored clip) and every ``ICLDataset`` gets the set of stored keys, for which it emits the key
and no frames. A model whose encoder fingerprint no longer matches (other ViT weights loaded) then
stops with ``FeatureStoreError`` instead of encoding the missing frames.
"""
import hashlib
import json
import logging
import os
from typing import Dict, List, Optional

import torch

from lavis_mmict.atomic import atomic_output, write_json_atomic
from lavis_mmict.datasets.sharded_media import barrier, rank_and_world, shard_batches
from lavis_mmict.errors import ConfigError

STORE_FORMAT = "pool_feature_store/1"
STORE_MODES = ("none", "use", "fill")
DEFAULT_STORE_DIR = os.path.join("output", "cache", "demo_feature_store")
INDEX_NAME = "store.json"
PART_BYTES = 1 << 30  # a rank starts a new part file after this many bytes of features
FILL_COMMAND = "python run_scripts/data/fill_feature_store.py --cfg-path <your config>"


class FeatureStoreError(ConfigError):
    """The pool feature store does not fit the model (another fingerprint or format), or is missing."""


class PoolFeatureStore:
    """Read side of one fingerprint's store; see the module docstring.

    Args:
        directory: the store's root (``model.demo_feature_store_dir``).
        fingerprint: the model's encoder fingerprint (``vit_fingerprint``).
    """

    def __init__(self, directory: str, fingerprint: str):
        self.directory = os.path.abspath(directory)
        self.fingerprint = fingerprint
        self.folder = os.path.join(self.directory, fingerprint)
        self._parts: List[str] = []
        self._where: Dict[str, int] = {}  # key -> index into _parts
        self._handles: Dict[int, object] = {}

    def exists(self) -> bool:
        return os.path.isfile(os.path.join(self.folder, INDEX_NAME))

    def other_fingerprints(self) -> List[str]:
        if not os.path.isdir(self.directory):
            return []
        return sorted(name for name in os.listdir(self.directory)
                      if name != self.fingerprint and os.path.isfile(os.path.join(self.directory, name, INDEX_NAME)))

    def open(self) -> "PoolFeatureStore":
        """Read ``store.json`` and the key list of every part; FeatureStoreError when missing or foreign."""
        index_path = os.path.join(self.folder, INDEX_NAME)
        if not os.path.isfile(index_path):
            others = self.other_fingerprints()
            found = (f"it holds features of other encoder fingerprints {others} (other ViT weights, image "
                     "size, device type or precision)" if others else "it holds no store")
            raise FeatureStoreError(
                f"model.demo_feature_store: no store for this model's encoder fingerprint {self.fingerprint} "
                f"under {self.directory}: {found}; fill it with `{FILL_COMMAND}` or set "
                "model.demo_feature_store: fill")
        with open(index_path) as file:
            index = json.load(file)
        self._check(index, index_path)
        self._parts = [os.path.join(self.folder, name) for name in index["parts"]]
        self._where, self._handles = {}, {}
        for number, path in enumerate(self._parts):
            for key in self._handle(number).keys():
                self._where[key] = number
        return self

    def _check(self, metadata: dict, path: str):
        if metadata.get("format") != STORE_FORMAT or metadata.get("fingerprint") != self.fingerprint:
            raise FeatureStoreError(
                f"model.demo_feature_store: {path} was written for fingerprint {metadata.get('fingerprint')!r} "
                f"(format {metadata.get('format')!r}), not {self.fingerprint!r} ({STORE_FORMAT}); delete "
                f"{self.folder} and fill it again with `{FILL_COMMAND}`")

    def _handle(self, number: int):
        if number not in self._handles:
            from safetensors import safe_open

            path = self._parts[number]
            try:
                handle = safe_open(path, framework="pt")  # memory-mapped; tensors read on demand
            except Exception as error:
                raise FeatureStoreError(f"model.demo_feature_store: cannot read {path} ({error}); fill the "
                                        f"store again with `{FILL_COMMAND}`") from error
            self._check(handle.metadata() or {}, path)
            self._handles[number] = handle
        return self._handles[number]

    def keys(self) -> frozenset:
        return frozenset(self._where)

    def __len__(self):
        return len(self._where)

    def __contains__(self, key) -> bool:
        return key in self._where

    def get(self, key: str) -> Optional[torch.Tensor]:
        """The stored (F, P, Dv) features of ``key``, or None."""
        number = self._where.get(key)
        return None if number is None else self._handle(number).get_tensor(key)

    def __getstate__(self):  # open files do not travel (pickling, deepcopy): reopened on demand
        return dict(self.__dict__, _handles={})


# ---------------------------------------------------------------------------- filling
def share_rank0_encoder(model):
    """Give every rank rank 0's ViT weights, as DDP does when it wraps the model later: an encoder
    without pretrained weights is initialised with each rank's own seed (``run.seed + rank``)."""
    import torch.distributed as dist

    if rank_and_world()[1] > 1:
        for tensor in model.visual_encoder.state_dict().values():
            dist.broadcast(tensor, src=0)
        model.demo_feature_cache.forget_encoder()


def running_fingerprint(model, device) -> str:
    """The encoder fingerprint the model's forward pass will look entries up by (autocast included)."""
    with model.encoding_context():
        return model.vit_fingerprint(device)


def pool_demo_items(icl_datasets) -> Dict[str, tuple]:
    """key -> (ICLDataset, pool index) of every distinct cacheable demo clip of the datasets' pools,
    in a fixed order (the same on every rank)."""
    items = {}
    for dataset in icl_datasets:
        for pool_index in range(len(dataset.pool.annotation)):
            key = dataset.demo_media_key(pool_index)
            if key and key not in items:
                items[key] = (dataset, pool_index)
    return items


def _write_part(folder: str, fingerprint: str, features: Dict[str, torch.Tensor]):
    from safetensors.torch import save_file

    name = hashlib.sha256("\n".join(sorted(features)).encode()).hexdigest()[:20]
    with atomic_output(os.path.join(folder, f"part-{name}.safetensors")) as temporary:
        save_file(features, temporary, metadata={"format": STORE_FORMAT, "fingerprint": fingerprint})


@torch.no_grad()
def fill_pool_store(model, icl_datasets, directory: str, device, batch_size: int = 32,
                    num_workers: int = 2) -> PoolFeatureStore:
    """Compute and store the ViT output of every pool clip not stored yet, sharded across ranks;
    every rank calls it. Returns the opened store. ``model``: an ``MMICTBlip2`` on ``device``."""
    device = torch.device(device)
    share_rank0_encoder(model)
    fingerprint = running_fingerprint(model, device)
    store = PoolFeatureStore(directory, fingerprint)
    stored = store.open().keys() if store.exists() else frozenset()
    if not stored and store.other_fingerprints():
        logging.warning("demo feature store %s: it holds other encoder fingerprints %s; building the one "
                        "of this model, %s", store.directory, store.other_fingerprints(), fingerprint)
    items = [(key, dataset, index) for key, (dataset, index) in pool_demo_items(icl_datasets).items()
             if key not in stored]
    logging.info("demo feature store %s/%s: %d clips stored, %d to encode", store.directory, fingerprint,
                 len(stored), len(items))
    skip = any(dataset.skip_bad_media for _, dataset, _ in items)

    def load(position):
        _, dataset, index = items[position]
        return dataset._demo_frames(dataset.pool, index)

    buffer, size = {}, 0
    for positions, frames, _ in shard_batches(len(items), load, batch_size, num_workers,
                                              "demo feature store", skip):
        if frames is None:
            continue  # unreadable clips stay unstored: the dataset reads (and reports) them
        with model.encoding_context():
            features = model.run_vit(frames.to(device)).cpu()
        for position, value in zip(positions, features):
            buffer[items[position][0]] = value.clone()  # its own storage: no shared-memory tensors in a file
            size += value.numel() * value.element_size()
        if size >= PART_BYTES:
            _write_part(store.folder, fingerprint, buffer)
            buffer, size = {}, 0
    if buffer:
        _write_part(store.folder, fingerprint, buffer)
    barrier()
    if rank_and_world()[0] == 0:
        parts = sorted(name for name in os.listdir(store.folder) if name.startswith("part-")
                       and name.endswith(".safetensors")) if os.path.isdir(store.folder) else []
        write_json_atomic(os.path.join(store.folder, INDEX_NAME),
                          {"format": STORE_FORMAT, "fingerprint": fingerprint, "parts": parts}, indent=1)
    barrier()
    return store.open()


# ---------------------------------------------------------------------------- start-up
def icl_datasets_of(datasets) -> list:
    """The ICLDatasets in LAVIS's ``{name: {split: dataset}}``."""
    from lavis_mmict.datasets.icl_dataset import ICLDataset

    return [split for splits in datasets.values() for split in splits.values() if isinstance(split, ICLDataset)]


def run_device(run_cfg) -> torch.device:
    device = torch.device(run_cfg.get("device", "cpu"))
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def attach_pool_store(cfg, model, datasets) -> Optional[PoolFeatureStore]:
    """Start-up: per ``model.demo_feature_store`` (``none`` | ``use`` | ``fill``), open (or fill,
    then open) the store and hand it to the model's feature cache and the stored keys to every
    ICLDataset. Only ``mmict``/``vanilla_ict`` models read demo frames through the ViT; others
    keep decoding them (a warning says so)."""
    model_cfg = cfg.model_cfg
    mode = model_cfg.get("demo_feature_store", "none") or "none"
    if mode not in STORE_MODES:
        raise ConfigError(f"model.demo_feature_store: {mode!r} is not one of {list(STORE_MODES)}")
    if mode == "none":
        return None
    if getattr(model, "demo_format", None) not in ("mmict", "vanilla_ict") or not hasattr(model, "vit_fingerprint"):
        logging.warning("model.demo_feature_store: %s with demo_format %r does not read demo clips "
                        "through its ViT; the store is not used", type(model).__name__,
                        getattr(model, "demo_format", None))
        return None
    if not model.freeze_vit:
        raise ConfigError("model.demo_feature_store needs a frozen vision encoder (freeze_vit: true)")
    device = run_device(cfg.run_cfg)
    directory = model_cfg.get("demo_feature_store_dir", None) or DEFAULT_STORE_DIR
    icl_datasets = icl_datasets_of(datasets)
    model.to(device)
    if mode == "fill":
        store = fill_pool_store(model, icl_datasets, directory, device,
                                batch_size=cfg.run_cfg.get("batch_size_eval", 32),
                                num_workers=cfg.run_cfg.get("num_workers", 2))
    else:
        share_rank0_encoder(model)
        store = PoolFeatureStore(directory, running_fingerprint(model, device)).open()
    model.demo_feature_cache.pool_store = store
    for dataset in icl_datasets:
        dataset.stored_demo_keys = store.keys()
    logging.info("demo feature store %s: %d clips; stored demos are not decoded", store.folder, len(store))
    return store
