"""Demonstration Bank (AIM): per-demonstration hidden states of a frozen MLLM, computed once.

AIM's MLLM is frozen, so the hidden states it produces at a demonstration's text positions never
change: they are cached here *before* the trainable projection, so one cache serves evaluation and
training alike. An entry is found by

- a **content key**: a hash of what the model reads for the demo (its processed pixels, their
  shape and dtype, and its text), see :func:`demo_content_key`;
- a **model fingerprint**: a hash of the frozen model's reading path (weights, layer, text length,
  tokenizer, compute dtype), see :func:`module_fingerprint`. A different model, checkpoint or
  layer gives another fingerprint, so a stale entry is never used.

Entries live in memory (least recently used are dropped beyond ``max_items``) and optionally on
disk, one ``safetensors`` file per entry (no pickle), under ``<disk_dir>/<fingerprint[:16]>/``.
Each file's metadata repeats the full fingerprint and content key and is checked when read.
"""
import hashlib
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence

import torch

BANK_FORMAT = "aim_demo_bank/1"
# Elements of each tensor hashed into the fingerprint: enough to see any real change of weights
# (another checkpoint, fine-tuning) without reading billions of values.
FINGERPRINT_SAMPLES = 4096


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Exact bytes of a tensor (any dtype, incl. bfloat16) on the CPU."""
    flat = tensor.detach().contiguous().reshape(-1).cpu()
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def demo_content_key(pixels: torch.Tensor, text: str) -> str:
    """sha256 of a demonstration's processed pixels (values, shape, dtype) and its text."""
    digest = hashlib.sha256()
    digest.update(str((tuple(pixels.shape), str(pixels.dtype))).encode())
    digest.update(_tensor_bytes(pixels))
    digest.update(b"\x00text\x00")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def module_fingerprint(named_tensors: Iterable, extra: Sequence = ()) -> str:
    """sha256 over (name, shape, dtype, evenly strided sample of values) of each tensor, plus ``extra``.

    The sample holds up to ``FINGERPRINT_SAMPLES`` elements per tensor, first and last included.
    """
    digest = hashlib.sha256()
    digest.update(BANK_FORMAT.encode())
    for item in extra:
        digest.update(repr(item).encode())
    for name, tensor in named_tensors:
        flat = tensor.detach().reshape(-1)
        if flat.numel() > FINGERPRINT_SAMPLES:
            index = torch.linspace(0, flat.numel() - 1, FINGERPRINT_SAMPLES, device=flat.device).long()
            flat = flat[index]
        digest.update(repr((name, tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(_tensor_bytes(flat))
    return digest.hexdigest()


class DemoBank:
    """Cache of per-demonstration features: ``content key -> (L, H)`` tensor, per model fingerprint.

    Args:
        max_items: entries kept in memory (least recently used dropped first); 0 = memory off.
        disk_dir: folder for the on-disk cache, or None for memory only.
        log_every: log the hit/miss counts every this many lookups (0 = never).
    """

    def __init__(self, max_items: int = 10000, disk_dir: Optional[str] = None, log_every: int = 1000):
        self.max_items = int(max_items)
        self.disk_dir = os.path.abspath(os.path.expanduser(disk_dir)) if disk_dir else None
        self.log_every = int(log_every)
        self._memory: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
        self.hits = 0  # found in memory
        self.disk_hits = 0  # found on disk (then kept in memory)
        self.misses = 0  # computed by the model
        self.stale = 0  # disk files whose metadata did not match (ignored)
        self._next_log = self.log_every

    # ------------------------------------------------------------------ lookups
    def lookup(self, keys: Sequence[str], fingerprint: str) -> List[Optional[torch.Tensor]]:
        """Cached features for each key (None where missing); counts hits and misses."""
        found = []
        for key in keys:
            value = self._memory.get((fingerprint, key))
            if value is not None:
                self._memory.move_to_end((fingerprint, key))
                self.hits += 1
            else:
                value = self._read_disk(key, fingerprint)
                if value is not None:
                    self.disk_hits += 1
                    self._remember(key, fingerprint, value)
                else:
                    self.misses += 1
            found.append(value)
        self._maybe_log()
        return found

    def store(self, key: str, fingerprint: str, features: torch.Tensor):
        """Keep ``features`` (L, H) for ``key`` under ``fingerprint`` (in memory and on disk)."""
        features = features.detach().to("cpu").contiguous()
        self._remember(key, fingerprint, features)
        self._write_disk(key, fingerprint, features)

    def stats(self) -> Dict[str, int]:
        return {
            "hits": self.hits,
            "disk_hits": self.disk_hits,
            "misses": self.misses,
            "stale": self.stale,
            "entries": len(self._memory),
        }

    def log_stats(self, prefix="demo bank"):
        logging.info("%s: %s", prefix, ", ".join(f"{k} {v}" for k, v in self.stats().items()))

    def clear_memory(self):
        self._memory.clear()

    # ------------------------------------------------------------------ internals
    def _remember(self, key, fingerprint, features):
        if self.max_items <= 0:
            return
        self._memory[(fingerprint, key)] = features
        self._memory.move_to_end((fingerprint, key))
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def _maybe_log(self):
        if self.log_every > 0 and self.hits + self.disk_hits + self.misses >= self._next_log:
            self._next_log += self.log_every
            self.log_stats()

    def entry_path(self, key: str, fingerprint: str) -> str:
        return os.path.join(self.disk_dir, fingerprint[:16], key[:2], f"{key}.safetensors")

    def _read_disk(self, key, fingerprint):
        if self.disk_dir is None:
            return None
        path = self.entry_path(key, fingerprint)
        if not os.path.isfile(path):
            return None
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as file:
                metadata = file.metadata() or {}
                if (metadata.get("format") != BANK_FORMAT or metadata.get("fingerprint") != fingerprint
                        or metadata.get("key") != key):
                    self.stale += 1
                    logging.warning("demo bank: ignoring %s (written for another model or format)", path)
                    return None
                return file.get_tensor("features")
        except Exception as err:  # a truncated or foreign file is a miss, never a crash
            self.stale += 1
            logging.warning("demo bank: ignoring unreadable %s (%s)", path, err)
            return None

    def _write_disk(self, key, fingerprint, features):
        if self.disk_dir is None:
            return
        from safetensors.torch import save_file

        path = self.entry_path(key, fingerprint)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        # temp file + os.replace: readers (other ranks) never see half an entry
        handle, temp_path = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(handle)
        try:
            save_file({"features": features}, temp_path,
                      metadata={"format": BANK_FORMAT, "fingerprint": fingerprint, "key": key})
            os.replace(temp_path, path)
        finally:
            if os.path.exists(temp_path):
                os.remove(temp_path)
