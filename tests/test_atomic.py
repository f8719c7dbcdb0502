"""lavis_mmict.atomic: files appear whole or not at all."""
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
