"""One store of CPU tensors by key: a bounded memory LRU in front of optional safetensors files.

The demo feature cache (models/feature_cache.py) and AIM's demonstration bank (models/demo_bank.py)
are key policies on top: they say what an entry is keyed by and how its producer is fingerprinted;
this module keeps, finds and writes the tensors.

- An entry is found by a ``fingerprint`` (of whatever computed it: another encoder or model never
  reads it) and a string ``key``; an empty key means "do not store" (lookups give None, uncounted).
- Memory: up to ``max_items`` entries, the least recently used dropped first (<= 0: no memory layer).
- Disk (``disk_dir`` set): one ``.safetensors`` file per entry (no pickle), at
  ``<disk_dir>/<folder_name(fingerprint)>/<stem[:2]>/<stem>.safetensors``, written atomically
  (lavis_mmict.atomic) so ranks and later runs share them. Each file carries ``entry_metadata``,
  checked when read: a file written for another entry or format, or one that cannot be read, is a
  miss with a warning, never a crash.
"""
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch

from lavis_mmict.atomic import atomic_output

TENSOR_NAME = "features"  # the one tensor of each file


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Exact bytes of a tensor (any dtype, incl. bfloat16) on the CPU: what keys and fingerprints hash."""
    flat = tensor.detach().contiguous().reshape(-1).cpu()
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


class TensorStore:
    """CPU tensors by (fingerprint, key); see the module docstring.

    Key policies override ``folder_name``, ``file_stem`` and ``entry_metadata`` (the file layout)
    and ``label`` (the name in log lines).

    Args:
        max_items: entries kept in memory (least recently used dropped first); <= 0: none.
        disk_dir: folder of the on-disk layer, or None for memory only.

    Counters: ``hits`` (found, in memory or on disk), ``disk_hits`` (of those, read from disk),
    ``misses`` (not found), ``stale`` (files ignored: another entry's, or unreadable).
    """

    label = "tensor store"
    enabled = True  # False: every lookup misses uncounted, nothing is stored

    def __init__(self, max_items: int, disk_dir: Optional[str] = None):
        self.max_items = int(max_items)
        self.disk_dir = os.path.abspath(disk_dir) if disk_dir else None
        self._memory: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0
        self.stale = 0

    # ------------------------------------------------------------------ key policy (file layout)
    def folder_name(self, fingerprint: str) -> str:
        return fingerprint

    def file_stem(self, fingerprint: str, key: str) -> str:
        return key

    def entry_metadata(self, fingerprint: str, key: str) -> Dict[str, str]:
        """Written into each file and compared when it is read."""
        return {"fingerprint": fingerprint, "key": key}

    def entry_path(self, fingerprint: str, key: str) -> str:
        stem = self.file_stem(fingerprint, key)
        return os.path.join(self.disk_dir, self.folder_name(fingerprint), stem[:2], f"{stem}.safetensors")

    # ------------------------------------------------------------------ lookups
    def lookup(self, fingerprint: str, keys: Sequence[str]) -> List[Optional[torch.Tensor]]:
        """The stored tensor (on the CPU) per key, None for a miss."""
        if not self.enabled:
            return [None] * len(keys)
        found = []
        for key in keys:
            value = self._get(fingerprint, key) if key else None
            if key:
                if value is None:
                    self.misses += 1
                else:
                    self.hits += 1
            found.append(value)
        return found

    def store(self, fingerprint: str, keys: Sequence[str], values):
        """Keep ``values[i]`` (a tensor of any shape) under ``keys[i]``, skipping empty keys.

        ``values``: a sequence of tensors, or one stacked tensor (N, ...).
        """
        if not self.enabled:
            return
        for key, value in zip(keys, values):
            if not key:
                continue
            # an own CPU copy: not a view that would keep the caller's whole batch alive
            value = value.detach().to("cpu", copy=True).contiguous()
            self._remember((fingerprint, key), value)
            if self.disk_dir is not None:
                self._write(fingerprint, key, value)

    def clear_memory(self):
        self._memory.clear()

    # ------------------------------------------------------------------ internals
    def _get(self, fingerprint: str, key: str) -> Optional[torch.Tensor]:
        entry = (fingerprint, key)
        if entry in self._memory:
            self._memory.move_to_end(entry)
            return self._memory[entry]
        value = self._read(fingerprint, key)
        if value is not None:
            self.disk_hits += 1
            self._remember(entry, value)
        return value

    def _remember(self, entry: tuple, value: torch.Tensor):
        if self.max_items <= 0:
            return
        self._memory[entry] = value
        self._memory.move_to_end(entry)
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def _read(self, fingerprint: str, key: str) -> Optional[torch.Tensor]:
        if self.disk_dir is None:
            return None
        path = self.entry_path(fingerprint, key)
        if not os.path.isfile(path):
            return None
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as file:
                metadata = file.metadata() or {}
                if any(metadata.get(name) != value for name, value in self.entry_metadata(fingerprint, key).items()):
                    self.stale += 1
                    logging.warning("%s: ignoring %s (written for another model or format)", self.label, path)
                    return None
                return file.get_tensor(TENSOR_NAME)
        except Exception as error:  # a truncated or foreign file (or a disk error): recompute
            self.stale += 1
            logging.warning("%s: ignoring unreadable %s (%s)", self.label, path, error)
            return None

    def _write(self, fingerprint: str, key: str, value: torch.Tensor):
        """Atomic: readers never see half a file, and ranks writing the same entry at once leave one
        complete copy (both wrote the same values)."""
        from safetensors.torch import save_file

        with atomic_output(self.entry_path(fingerprint, key)) as temporary:
            save_file({TENSOR_NAME: value}, temporary, metadata=self.entry_metadata(fingerprint, key))
