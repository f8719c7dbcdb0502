"""models/tensor_store.py: one argument order, one file layout, misses for foreign or broken files;
and the package's writers leave no temporary behind (lavis_mmict.atomic)."""
import glob
import logging
import os
import shutil

import torch
from safetensors import safe_open

from lavis_mmict.atomic import atomic_output
from lavis_mmict.checkpoints import remove_stale_temp_files
from lavis_mmict.datasets.synthetic import generate_synthetic_videoqa
from lavis_mmict.models.tensor_store import TensorStore


def test_stacked_or_listed_values_round_trip_through_disk_and_empty_keys_are_skipped(tmp_path):
    writer = TensorStore(max_items=0, disk_dir=str(tmp_path))  # disk only
    writer.store("fp", ["ka", "", "kb"], torch.arange(6.0).reshape(3, 2))
    writer.store("fp", ["kc"], [torch.ones(4)])
    files = sorted(os.path.relpath(p, tmp_path) for p in glob.glob(str(tmp_path / "**" / "*"), recursive=True)
                   if os.path.isfile(p))
    assert files == ["fp/ka/ka.safetensors", "fp/kb/kb.safetensors", "fp/kc/kc.safetensors"]  # no temporary
    with safe_open(str(tmp_path / "fp" / "ka" / "ka.safetensors"), framework="pt") as file:
        assert file.metadata() == {"fingerprint": "fp", "key": "ka"}

    reader = TensorStore(max_items=2, disk_dir=str(tmp_path))
    found = reader.lookup("fp", ["ka", "", "kb", "kc", "kd"])
    assert torch.equal(found[0], torch.tensor([0.0, 1.0])) and torch.equal(found[2], torch.tensor([4.0, 5.0]))
    assert torch.equal(found[3], torch.ones(4)) and found[1] is None and found[4] is None
    assert (reader.hits, reader.disk_hits, reader.misses) == (3, 3, 1)  # "" is not counted
    assert reader.lookup("other", ["ka"]) == [None]  # another fingerprint: another namespace
    assert list(reader._memory) == [("fp", "kb"), ("fp", "kc")]  # least recently used dropped


def test_a_stored_value_is_an_own_cpu_copy():
    store = TensorStore(max_items=4)
    batch = torch.zeros(2, 3)
    store.store("fp", ["a", "b"], batch)
    batch.add_(1.0)
    assert torch.equal(store.lookup("fp", ["a"])[0], torch.zeros(3))


def test_foreign_or_unreadable_files_are_misses_with_a_warning(tmp_path, caplog):
    store = TensorStore(max_items=0, disk_dir=str(tmp_path))
    store.store("fp", ["k1"], [torch.ones(1)])
    (tmp_path / "fp" / "k2").mkdir()
    shutil.copy(tmp_path / "fp" / "k1" / "k1.safetensors", tmp_path / "fp" / "k2" / "k2.safetensors")  # k1's as k2
    (tmp_path / "fp" / "k3").mkdir()
    (tmp_path / "fp" / "k3" / "k3.safetensors").write_bytes(b"half a file")
    with caplog.at_level(logging.WARNING):
        assert store.lookup("fp", ["k2", "k3"]) == [None, None]
    assert store.stale == 2 and store.misses == 2
    assert "written for another" in caplog.text and "unreadable" in caplog.text


def test_checkpoint_clean_up_matches_the_atomic_temporaries(tmp_path):
    context = atomic_output(tmp_path / "checkpoint_4.pth", durable=True)
    temporary = context.__enter__()  # a save killed here leaves its temporary behind
    open(temporary, "wb").close()
    (tmp_path / "checkpoint_3.pth").write_bytes(b"kept")
    remove_stale_temp_files(tmp_path)
    assert os.listdir(tmp_path) == ["checkpoint_3.pth"]


def test_synthetic_generation_leaves_no_hidden_temporary(tmp_path):
    generate_synthetic_videoqa(str(tmp_path), seed=0, num_clips={"train": 2, "val": 1}, num_frames=2, size=32)
    for folder in (tmp_path, tmp_path / "videos", tmp_path / "annotations"):
        assert not [name for name in os.listdir(folder) if name.startswith(".")]
