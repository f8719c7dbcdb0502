"""Demonstration Bank (AIM): per-demonstration hidden states of a frozen MLLM, computed once.

AIM's MLLM is frozen, so the hidden states it produces at a demonstration's text positions never
change: they are cached here *before* the trainable projection, so one cache serves evaluation and
training alike. An entry is found by

- a **content key**: a hash of the dataset's ``demo_media_key`` of the demo's clip (a digest of
  the media file's identity and how its frames are read, see ``ICLDataset.demo_media_key``) and
  its text, see :func:`demo_media_text_key`; only where the batch has no media key (``""``, or no
  ``demo_media_key`` at all) a hash of its processed pixels (values, shape, dtype) and its text,
  see :func:`demo_content_key`, which reads every pixel of the demo each step;
- a **model fingerprint**: a hash of the frozen model's reading path (weights, layer, text length,
  tokenizer, compute dtype), see :func:`module_fingerprint`. A different model, checkpoint or
  layer gives another fingerprint, so a stale entry is never used.

Entries live in memory (least recently used are dropped beyond ``max_items``) and optionally on
disk, one ``safetensors`` file per entry (no pickle), under ``<disk_dir>/<fingerprint[:16]>/``.
Each file's metadata repeats the full fingerprint and content key and is checked when read. The
storing is models/tensor_store.py; this module is the key policy.
"""
import hashlib
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from lavis_mmict.models.tensor_store import TensorStore, tensor_bytes

BANK_FORMAT = "aim_demo_bank/1"
# Elements of each tensor hashed into the fingerprint: enough to see any real change of weights
# (another checkpoint, fine-tuning) without reading billions of values.
FINGERPRINT_SAMPLES = 4096


def demo_content_key(pixels: torch.Tensor, text: str) -> str:
    """sha256 of a demonstration's processed pixels (values, shape, dtype) and its text."""
    digest = hashlib.sha256()
    digest.update(str((tuple(pixels.shape), str(pixels.dtype))).encode())
    digest.update(tensor_bytes(pixels))
    digest.update(b"\x00text\x00")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def demo_media_text_key(media_key: str, text: str) -> str:
    """sha256 of a demonstration's ``demo_media_key`` and its text (never equal to a pixel key)."""
    return hashlib.sha256(b"media\x00" + media_key.encode() + b"\x00text\x00" + text.encode("utf-8")).hexdigest()


def demo_bank_keys(demo_frames: Sequence[torch.Tensor], texts: Sequence[str],
                   media_keys: Optional[Sequence[str]] = None) -> List[str]:
    """The bank key of each of M demos: from its media key where it has one, else from its pixels.

    demo_frames: M processed clips (each hashed only when it has no media key); texts: M strings;
    media_keys: M ``demo_media_key`` strings ("" = none), or None.
    """
    media_keys = media_keys or [""] * len(texts)
    return [demo_media_text_key(media, text) if media else demo_content_key(frames, text)
            for frames, text, media in zip(demo_frames, texts, media_keys)]


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
        digest.update(tensor_bytes(flat))
    return digest.hexdigest()


class DemoBank(TensorStore):
    """Per-demonstration features: ``content key -> (L, H)`` tensor, per model fingerprint.

    Files: ``<disk_dir>/<fingerprint[:16]>/<key[:2]>/<key>.safetensors``, whose metadata holds
    ``BANK_FORMAT``, the full fingerprint and the key. ``stats()`` reports ``hits`` found in memory
    and ``disk_hits`` found on disk apart.

    Args:
        max_items: entries kept in memory (least recently used dropped first); 0 = memory off.
        disk_dir: folder for the on-disk cache, or None for memory only.
        log_every: log the hit/miss counts every this many lookups (0 = never).
    """

    label = "demo bank"

    def __init__(self, max_items: int = 10000, disk_dir: Optional[str] = None, log_every: int = 1000):
        super().__init__(max_items, os.path.expanduser(disk_dir) if disk_dir else None)
        self.log_every = int(log_every)
        self._next_log = self.log_every

    def folder_name(self, fingerprint: str) -> str:
        return fingerprint[:16]

    def entry_metadata(self, fingerprint: str, key: str) -> Dict[str, str]:
        return {"format": BANK_FORMAT, **super().entry_metadata(fingerprint, key)}

    def lookup(self, fingerprint: str, keys: Sequence[str]) -> List[Optional[torch.Tensor]]:
        """Cached features (L, H) for each key (None where missing); counts and logs hits and misses."""
        found = super().lookup(fingerprint, keys)
        if self.log_every > 0 and self.hits + self.misses >= self._next_log:
            self._next_log += self.log_every
            self.log_stats()
        return found

    def stats(self) -> Dict[str, int]:
        return {
            "hits": self.hits - self.disk_hits,  # found in memory
            "disk_hits": self.disk_hits,  # found on disk (then kept in memory)
            "misses": self.misses,  # computed by the model
            "stale": self.stale,  # disk files written for another model or format, or unreadable
            "entries": len(self._memory),
        }

    def log_stats(self, prefix="demo bank"):
        logging.info("%s: %s", prefix, ", ".join(f"{k} {v}" for k, v in self.stats().items()))
