"""lavis_mmict.atomic: files appear whole or not at all."""
import errno
import glob
import json
import os

import numpy as np
import pytest

from lavis_mmict.atomic import atomic_output, temp_pattern, write_json_atomic


def test_json_written_whole_and_no_temporary_left(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json_atomic(path, {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert os.listdir(path.parent) == ["a.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(path, {"old": True})
    with pytest.raises(RuntimeError):
        with atomic_output(path) as temporary:
            with open(temporary, "w") as file:
                file.write("{half")
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["a.json"]


def test_keep_extension_lets_format_sniffing_writers_work(tmp_path):
    path = tmp_path / "features.npz"
    with atomic_output(path, keep_extension=True, durable=True) as temporary:
        assert temporary.endswith(".npz") and os.path.dirname(temporary) == str(tmp_path)
        np.savez(temporary, a=np.arange(3))  # np.savez would append .npz to any other name
    assert np.load(path)["a"].tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == ["features.npz"]


def test_temp_pattern_matches_a_left_temporary(tmp_path):
    path = tmp_path / "checkpoint_3.pth"
    context = atomic_output(path)
    temporary = context.__enter__()  # a process killed here leaves its temporary behind
    open(temporary, "wb").close()
    assert glob.glob(str(tmp_path / temp_pattern("checkpoint_*"))) == [temporary]
    assert not glob.glob(str(tmp_path / "checkpoint_*.pth"))


class _FullDiskFile:
    """A binary file whose writes fail with ENOSPC after ``room`` bytes (a full disk)."""

    def __init__(self, path, room):
        self._file, self._room = open(path, "wb"), room

    def write(self, data):
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def test_disk_full_while_saving_a_checkpoint_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import torch

    from lavis_mmict import checkpoints
    from lavis_mmict.errors import DiskFullError, UserError

    path = tmp_path / "checkpoint_1.pth"
    checkpoints.atomic_torch_save({"w": torch.ones(3)}, path)
    # torch.save reports the failed write as its own "enforce fail" RuntimeError
    monkeypatch.setattr(checkpoints, "open", lambda p, mode: _FullDiskFile(p, room=64), raising=False)
    with pytest.raises(DiskFullError) as excinfo:
        checkpoints.atomic_torch_save({"w": torch.zeros(10000)}, path)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, UserError) and "\n" not in message
    assert str(path) in message and "No space left on device" in message
    assert "enforce fail" not in message
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))  # previous one intact
    assert os.listdir(tmp_path) == ["checkpoint_1.pth"]  # no temporary left


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(PermissionError):
        with atomic_output(tmp_path / "a.json") as temporary:
            raise PermissionError(errno.EACCES, "denied", temporary)
