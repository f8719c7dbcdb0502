"""Atomic file writes: the one way this package puts a file in place.

A writer fills a temporary file beside the target, which is then renamed onto it (``os.replace``),
so a reader (another rank, a later run) sees either the old complete file or the new complete one,
never half of one, and ranks writing the same file at once leave one complete copy. A write that
fails because the disk is full (even when the writer, e.g. ``torch.save``, hides the ``OSError``
behind its own message) is a :class:`~lavis_mmict.errors.DiskFullError` naming the file; the
previous file is untouched. A process killed
mid-write leaves at most a hidden ``.<name>.<pid>-<token>.tmp`` file, which :func:`temp_pattern`
matches for clean-up. The temporary may also be filled as a folder (a clip's frames), which then
replaces a missing or empty folder ``path``.
"""
import contextlib
import errno
import json
import os
import shutil
import uuid

from lavis_mmict.errors import DiskFullError

TEMP_SUFFIX = ".tmp"


def temp_pattern(name_glob="*"):
    """A glob for the temporary files left by writes of files named ``name_glob``."""
    return f".{name_glob}.*{TEMP_SUFFIX}*"


def _disk_full(error):
    """Whether ``error`` or an exception it was raised from is ENOSPC (torch.save raises its own
    RuntimeError while handling the OSError of the file write)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


def _fsync(path, strict=False):
    """fsync a file or a folder; strict: raise when that fails (the data may not be on disk),
    otherwise ignore it (a folder's fsync is not supported by every file system)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path, keep_extension=False, durable=False):
    """Yield a temporary path beside ``path`` (the block creates a file or a folder there); when the
    block ends without error, move it onto ``path``; on error, remove it.

    keep_extension: end the temporary name with ``path``'s extension (writers that pick the format
    from it: OpenCV's video writer, ``np.savez``). durable: fsync the file and its folder, so the
    new file survives a power loss (checkpoints).
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    extension = os.path.splitext(name)[1] if keep_extension else ""
    temporary = os.path.join(directory, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}{extension}")
    try:
        try:
            yield temporary
            if durable:
                _fsync(temporary, strict=True)
            os.replace(temporary, path)
        except Exception as error:
            if _disk_full(error):
                kept = "the previous file is kept" if os.path.exists(path) else "nothing was written"
                raise DiskFullError(f"Cannot write {path}: No space left on device ({kept})") from error
            raise
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.exists(temporary):
            os.remove(temporary)
    if durable:
        _fsync(directory)  # make the rename itself durable


def write_json_atomic(path, content, **dump_kwargs):
    """``json.dump(content)`` to ``path``, atomically."""
    with atomic_output(path) as temporary:
        with open(temporary, "w") as file:
            json.dump(content, file, **dump_kwargs)
