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
atomically, so ranks and later runs share it; never pickle).
"""
import hashlib
import json
import logging
import os
from collections import OrderedDict
from typing import List, Optional, Sequence

import torch

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
        tensor = tensor.detach().cpu().contiguous()
        hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
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


class DemoFeatureCache:
    """Frozen ViT outputs per demo clip key; see the module docstring.

    Args:
        mode: ``none`` | ``memory`` | ``disk``.
        directory: root folder of the disk cache (relative = to the current directory).
        memory_items: most clips held in memory (least recently used dropped first).
    """

    def __init__(self, mode: str = "none", directory: Optional[str] = None,
                 memory_items: int = DEFAULT_MEMORY_ITEMS):
        if mode not in CACHE_MODES:
            raise ValueError(f"Unknown model.demo_feature_cache {mode!r}; valid: {list(CACHE_MODES)}")
        if int(memory_items) < 0:
            raise ValueError(f"model.demo_feature_cache_memory_items must be >= 0, got {memory_items}")
        self.mode = mode
        self.directory = os.path.abspath(directory or DEFAULT_CACHE_DIR)
        self.memory_items = int(memory_items)
        self._memory: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._weights = {}  # (id of encoder, dtype, device) -> digest; reset when weights load
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

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

    # ------------------------------------------------------------------ lookups
    def _entry_name(self, fingerprint: str, key: str) -> str:
        return _digest(fingerprint, key)

    def _file(self, fingerprint: str, name: str) -> str:
        return os.path.join(self.directory, fingerprint, name[:2], f"{name}.safetensors")

    def _remember(self, name: str, features: torch.Tensor):
        if self.memory_items == 0:
            return
        self._memory[name] = features
        self._memory.move_to_end(name)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def lookup(self, fingerprint: str, keys: Sequence[str]) -> List[Optional[torch.Tensor]]:
        """Cached features (CPU tensors) per key, None for a miss; "" keys are always None."""
        found = []
        for key in keys:
            features = self._get(fingerprint, key) if key and self.enabled else None
            if key and self.enabled:
                if features is None:
                    self.misses += 1
                else:
                    self.hits += 1
            found.append(features)
        return found

    def _get(self, fingerprint: str, key: str) -> Optional[torch.Tensor]:
        name = self._entry_name(fingerprint, key)
        if name in self._memory:
            self._memory.move_to_end(name)
            return self._memory[name]
        if self.mode != "disk":
            return None
        path = self._file(fingerprint, name)
        if not os.path.isfile(path):
            return None
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as stored:
                if (stored.metadata() or {}).get("key") != key:
                    return None  # a digest collision (never expected): recompute
                features = stored.get_tensor("features")
        except Exception as error:  # unreadable (e.g. a disk error): recompute, do not fail the step
            logging.warning("demo feature cache: cannot read %s (%s); recomputing", path, error)
            return None
        self._remember(name, features)
        return features

    def store(self, fingerprint: str, keys: Sequence[str], features: torch.Tensor):
        """Keep ``features[i]`` (F, P, Dv) under ``keys[i]`` (skipping "" keys)."""
        if not self.enabled:
            return
        for key, item in zip(keys, features):
            if not key:
                continue
            name = self._entry_name(fingerprint, key)
            item = item.detach().to("cpu", copy=True).contiguous()
            self._remember(name, item)
            if self.mode == "disk":
                self._write(self._file(fingerprint, name), key, item)

    @staticmethod
    def _write(path: str, key: str, features: torch.Tensor):
        """Write under a temporary name, then rename: readers never see half a file, and ranks
        writing the same clip at once leave one complete copy (both wrote the same values)."""
        from safetensors.torch import save_file

        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.tmp-{os.getpid()}"
        try:
            save_file({"features": features}, temporary, metadata={"key": key})
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)


def cache_from_config(cfg) -> DemoFeatureCache:
    """The cache described by ``model.demo_feature_cache*`` keys (README, "Demo feature cache")."""
    return DemoFeatureCache(
        mode=cfg.get("demo_feature_cache", "none") or "none",
        directory=cfg.get("demo_feature_cache_dir", None),
        memory_items=cfg.get("demo_feature_cache_memory_items", DEFAULT_MEMORY_ITEMS),
    )
