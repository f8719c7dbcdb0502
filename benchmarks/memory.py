"""Peak memory of one call, above what was allocated before it (the model and its inputs).

CUDA: the caching allocator's peak. CPU: the process's peak resident memory (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs``) with glibc told to map every block above 64 KiB on its
own, so freed tensors go back to the system and resident memory follows live tensors.
"""
import ctypes
import gc
import os

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_configured = False


def _configure_malloc():
    global _malloc_configured
    if not _malloc_configured:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
            libc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024)
        except OSError:
            pass
        _malloc_configured = True


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_peak_supported() -> bool:
    return os.path.exists("/proc/self/clear_refs")


_configure_malloc()  # before the models are built, so every large block is mapped on its own


def peak_bytes(fn, device="cpu") -> int:
    """Peak memory (bytes) that ``fn()`` allocated above the memory in use when it started."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    _configure_malloc()
    start = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # peak resident memory := current
    fn()
    return max(0, (_status_kib("VmHWM") - start) * 1024)
