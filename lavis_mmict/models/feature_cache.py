"""Cache of frozen-ViT features of demonstration clips (``model.demo_feature_cache``).

The ViT of BLIP-2 is frozen, and demonstrations are read with the deterministic eval transform,
so a demo clip's ViT output never changes: computing it once and reusing it across steps, epochs
and ranks removes most of the cost of demonstrations (each clip is a demo of many queries). What
is cached is the ViT output *before* ``ln_vision`` (which is trainable), per clip: (F, P, Dv).

Keys come from the dataset (``batch["demo_media_key"]``, see ``ICLDataset``): a digest of the media
file's identity (path, size, mtime), the frame sampling (frames, sampling mode, decode size) and
the eval processor. "" means "do not cache" (padding slots, augmented or unknown frames). The
model adds a fingerprint of its vision encoder (architecture, a digest of every weight, image size)
and of how it runs (device type, autocast dtype): a different encoder never reads these entries.

Modes: ``none`` (off), ``memory`` (this process, bounded LRU of CPU tensors), ``disk`` (the memory
layer in front of one ``.safetensors`` file per clip under ``<dir>/<fingerprint>/``, written
atomically, so ranks and later runs share it; never pickle). The storing is models/tensor_store.py;
this module is the key policy: what a clip's key and the encoder's fingerprint are.

Pool feature store (models/pool_store.py, ``model.demo_feature_store``): when one is attached as
``pool_store``, a lookup consults it after the memory layer (the cache is then on even in mode
``none``), and a lookup under another fingerprint is a ``FeatureStoreError``: the dataset emitted
no frames for the stored clips, so they cannot be recomputed.
"""
import hashlib
import json
import os
from typing import Optional

import torch

from lavis_mmict.models.tensor_store import TensorStore, tensor_bytes

CACHE_MODES = ("none", "memory", "disk")
CACHE_FORMAT_VERSION = 1
DEFAULT_CACHE_DIR = os.path.join("output", "cache", "demo_vit_features")
DEFAULT_MEMORY_ITEMS = 1024


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of every parameter and buffer of ``module`` (names, dtypes, shapes, bytes)."""
    hasher = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        hasher.update(tensor_bytes(tensor))
    return hasher.hexdigest()


def runtime_signature(device: torch.device) -> str:
    """How the ViT runs now (its output differs in fp16 autocast and on another device type)."""
    try:
        enabled = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if enabled else None
    except (TypeError, AttributeError):  # older torch: device-specific functions
        if device.type == "cuda":
            enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        else:
            enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return f"{device.type}|autocast={dtype if enabled else None}"


class DemoFeatureCache(TensorStore):
    """Frozen ViT outputs (F, P, Dv) per demo clip key, per encoder fingerprint; see the module
    docstring. Files: ``<directory>/<fingerprint>/<name[:2]>/<name>.safetensors`` with ``name`` a
    digest of (fingerprint, key), and the key in the metadata.

    Args:
        mode: ``none`` | ``memory`` | ``disk``.
        directory: root folder of the disk cache (relative = to the current directory).
        memory_items: most clips held in memory (least recently used dropped first).
    """

    label = "demo feature cache"

    def __init__(self, mode: str = "none", directory: Optional[str] = None,
                 memory_items: int = DEFAULT_MEMORY_ITEMS):
        if mode not in CACHE_MODES:
            raise ValueError(f"Unknown model.demo_feature_cache {mode!r}; valid: {list(CACHE_MODES)}")
        if int(memory_items) < 0:
            raise ValueError(f"model.demo_feature_cache_memory_items must be >= 0, got {memory_items}")
        super().__init__(max_items=memory_items if mode != "none" else 0,
                         disk_dir=(directory or DEFAULT_CACHE_DIR) if mode == "disk" else None)
        self.mode = mode
        self._weights = {}  # (id of encoder, dtype, device) -> digest; reset when weights load
        self.pool_store = None  # a PoolFeatureStore, set by pool_store.attach_pool_store

    @property
    def enabled(self) -> bool:
        return self.mode != "none" or self.pool_store is not None

    def _get(self, fingerprint: str, key: str) -> Optional[torch.Tensor]:
        store = self.pool_store
        if store is None:
            return super()._get(fingerprint, key)
        if fingerprint != store.fingerprint:
            from lavis_mmict.models.pool_store import FILL_COMMAND, FeatureStoreError

            raise FeatureStoreError(
                f"model.demo_feature_store: the model's vision encoder now has fingerprint {fingerprint}, the "
                f"store {store.folder} was filled for {store.fingerprint} (ViT weights changed after start-up?); "
                f"fill the store for these weights with `{FILL_COMMAND}`")
        entry = (fingerprint, key)
        if entry in self._memory:
            return super()._get(fingerprint, key)
        stored = store.get(key)
        return stored if stored is not None else super()._get(fingerprint, key)

    def file_stem(self, fingerprint: str, key: str) -> str:
        return _digest(fingerprint, key)

    def entry_metadata(self, fingerprint: str, key: str):
        return {"key": key}  # the folder already names the full fingerprint

    # ------------------------------------------------------------------ fingerprint
    def encoder_fingerprint(self, encoder: torch.nn.Module, image_size, device: torch.device) -> str:
        """Fingerprint of the encoder as it runs now; the weight digest is computed once per
        (encoder, dtype, device) and forgotten by ``forget_encoder`` when weights are loaded."""
        first = next(encoder.parameters())
        memo_key = (id(encoder), first.dtype, first.device)
        if memo_key not in self._weights:
            self._weights[memo_key] = weights_digest(encoder)
        architecture = {"class": type(encoder).__name__, "num_features": getattr(encoder, "num_features", None)}
        return _digest(CACHE_FORMAT_VERSION, architecture, self._weights[memo_key], image_size,
                       runtime_signature(device))[:24]

    def forget_encoder(self):
        self._weights.clear()


def cache_from_config(cfg) -> DemoFeatureCache:
    """The cache described by ``model.demo_feature_cache*`` keys (docs/configuration.md, "Demo feature cache")."""
    return DemoFeatureCache(
        mode=cfg.get("demo_feature_cache", "none") or "none",
        directory=cfg.get("demo_feature_cache_dir", None),
        memory_items=cfg.get("demo_feature_cache_memory_items", DEFAULT_MEMORY_ITEMS),
    )
