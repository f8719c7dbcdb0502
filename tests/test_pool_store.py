"""Pool feature store (models/pool_store.py): stored demos are not decoded, the model computes the
same loss from stored features, a store of another encoder is refused, and ranks fill one store."""
import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from _dataset_files import make_videoqa
from _store_probe import build_dataset, build_model
from lavis_mmict.models.pool_store import (
    FeatureStoreError, PoolFeatureStore, attach_pool_store, fill_pool_store, running_fingerprint,
)

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def data(tmp_path):
    return make_videoqa(str(tmp_path / "data"), clips={"train": 5, "val": 1, "test": 1})


def icl(data):
    return build_dataset(data["annotations"]["train"], data["media"])


def fill(model, dataset, directory):
    return fill_pool_store(model, [dataset], str(directory), "cpu", batch_size=2, num_workers=0)


def startup_cfg(directory, mode):
    return OmegaConf.create({"model": {"demo_feature_store": mode, "demo_feature_store_dir": str(directory)},
                             "run": {"device": "cpu", "batch_size_eval": 2, "num_workers": 0}})


class _Cfg:  # LAVIS's Config: model_cfg / run_cfg
    def __init__(self, cfg):
        self.model_cfg, self.run_cfg = cfg.model, cfg.run


def count_decoded_demos(dataset, monkeypatch):
    calls = []
    original = dataset._demo_frames
    monkeypatch.setattr(dataset, "_demo_frames", lambda pool, index: calls.append(index) or original(pool, index))
    return calls


def test_stored_demos_are_not_decoded_and_the_loss_is_unchanged(data, tmp_path, monkeypatch):
    plain_model, plain_data = build_model(), icl(data)
    model, dataset = build_model(), icl(data)
    store = attach_pool_store(_Cfg(startup_cfg(tmp_path / "store", "fill")), model, {"probe": {"train": dataset}})
    assert len(store) == 5  # one entry per distinct clip of the pool
    decoded = count_decoded_demos(dataset, monkeypatch)
    items = [dataset[i] for i in range(4)]
    assert decoded == []  # no demo clip decoded
    for item in items:  # the key is emitted, no frames
        assert all(key in store for key in item["demo_media_key"]) and len(item["demo_media_key"]) == 2
        assert item["demo_image"].shape == (2, 2, 3, 0, 0)
    batch = dataset.collater(items)
    assert batch["demo_image"].shape == (4, 2, 2, 3, 0, 0)
    reference = plain_data.collater([plain_data[i] for i in range(4)])
    assert batch["demo_media_key"] == reference["demo_media_key"]
    with torch.no_grad():
        loss = model(batch)["loss"]
        assert torch.equal(loss, plain_model(reference)["loss"])
        assert model.demo_feature_cache.hits == 8  # every demo read from the store, none computed
        settings = dict(num_beams=2, max_length=4, min_length=4)
        assert model.generate(batch, **settings) == plain_model.generate(reference, **settings)
    # the stored tensor is the ViT's own output for that clip
    key = items[0]["demo_media_key"][0]
    frames = plain_data._demo_frames(plain_data.pool, plain_data.demo_indices(0)[0]).unsqueeze(0)
    assert torch.equal(store.get(key), plain_model.run_vit(frames)[0])


def test_mixed_items_stack_zeros_for_stored_demos_only(data, tmp_path):
    dataset = icl(data)
    store = fill(build_model(), dataset, tmp_path / "store")
    dataset.stored_demo_keys = frozenset(dataset[0]["demo_media_key"])  # item 0's (1-2 of the 5 clips)
    assert dataset.stored_demo_keys <= store.keys()
    items = [dataset[index] for index in range(len(dataset))]
    batch = dataset.collater(items)
    assert batch["demo_image"].shape == (len(items), 2, 2, 3, 32, 32)
    for index, item in enumerate(items):
        for slot, key in enumerate(item["demo_media_key"]):
            assert (key in dataset.stored_demo_keys) == (not batch["demo_image"][index, slot].any())
    assert any(item["demo_image"].numel() == 0 for item in items)  # some items had all demos stored


def test_a_store_of_another_encoder_is_refused_and_fill_builds_its_own(data, tmp_path):
    directory = tmp_path / "store"
    fill(build_model(seed=0), icl(data), directory)
    other = build_model(seed=1)  # other ViT weights: another fingerprint
    with pytest.raises(FeatureStoreError, match="other encoder fingerprints"):
        attach_pool_store(_Cfg(startup_cfg(directory, "use")), other, {"probe": {"train": icl(data)}})
    store = attach_pool_store(_Cfg(startup_cfg(directory, "fill")), other, {"probe": {"train": icl(data)}})
    assert len(store) == 5 and len(os.listdir(directory)) == 2
    # ViT weights changed after start-up: the forward pass stops instead of encoding zero frames
    dataset = icl(data)
    dataset.stored_demo_keys = store.keys()
    other.visual_encoder.load_state_dict(build_model(seed=2).visual_encoder.state_dict())
    with pytest.raises(FeatureStoreError, match="fingerprint"):
        other(dataset.collater([dataset[0]]))


def test_a_part_or_index_of_another_fingerprint_is_refused(data, tmp_path):
    model = build_model()
    store = fill(model, icl(data), tmp_path / "store")
    index_path = os.path.join(store.folder, "store.json")
    index = json.load(open(index_path))
    # a part file copied in from another store (its metadata names another fingerprint)
    from safetensors.torch import save_file

    save_file({"k": torch.zeros(1)}, os.path.join(store.folder, "part-foreign.safetensors"),
              metadata={"format": "pool_feature_store/1", "fingerprint": "elsewhere"})
    json.dump(dict(index, parts=index["parts"] + ["part-foreign.safetensors"]), open(index_path, "w"))
    with pytest.raises(FeatureStoreError, match="part-foreign.safetensors.*elsewhere"):
        PoolFeatureStore(str(tmp_path / "store"), store.fingerprint).open()
    json.dump(dict(index, fingerprint="elsewhere"), open(index_path, "w"))
    with pytest.raises(FeatureStoreError, match="store.json"):
        PoolFeatureStore(str(tmp_path / "store"), store.fingerprint).open()


def test_a_second_fill_encodes_only_new_clips(data, tmp_path, monkeypatch):
    model, dataset = build_model(), icl(data)
    fill(model, dataset, tmp_path / "store")
    decoded = count_decoded_demos(dataset, monkeypatch)
    store = fill(model, dataset, tmp_path / "store")
    assert decoded == [] and len(store) == 5
    assert store.fingerprint == running_fingerprint(model, torch.device("cpu"))


@pytest.mark.slow
def test_two_ranks_fill_one_store_equal_to_a_single_process_fill(data, tmp_path):
    from _subprocesses import subprocess_env

    args = [data["annotations"]["train"], data["media"]]
    env = subprocess_env(allow_loopback=True)
    subprocess.run([sys.executable, os.path.join(HERE, "_store_probe.py"), *args, str(tmp_path / "one"),
                    str(tmp_path / "sim_one")], env=env, check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    os.path.join(HERE, "_store_probe.py"), *args, str(tmp_path / "two"), str(tmp_path / "sim_two")],
                   env=env, check=True, timeout=300)
    fingerprint = running_fingerprint(build_model(), torch.device("cpu"))
    one = PoolFeatureStore(str(tmp_path / "one"), fingerprint).open()
    two = PoolFeatureStore(str(tmp_path / "two"), fingerprint).open()
    assert len(two._parts) == 2  # each rank wrote its share
    assert one.keys() == two.keys() and len(one) == 5
    for key in one.keys():
        assert torch.equal(one.get(key), two.get(key))
    # the `similar` features: each rank read its share of the 5 clips; one file each, equal
    def reads(tag, rank):
        path = tmp_path / f"sim_{tag}.loads-rank{rank}"
        return len(path.read_text().split()) if path.exists() else 0

    assert reads("one", 0) == 5 and (reads("two", 0), reads("two", 1)) == (3, 2)
    import numpy as np

    (sim_one,), (sim_two,) = os.listdir(tmp_path / "sim_one"), os.listdir(tmp_path / "sim_two")
    with np.load(tmp_path / "sim_one" / sim_one) as a, np.load(tmp_path / "sim_two" / sim_two) as b:
        assert sim_one == sim_two
        np.testing.assert_array_equal(a["features"], b["features"])
        np.testing.assert_array_equal(a["valid"], b["valid"])
        assert a["valid"].all() and len(a["features"]) == 5


@pytest.mark.slow
def test_fill_command_then_training_that_uses_the_store(tmp_path):
    """The standalone command (2 ranks) fills the store; train.py with `use` reads it (2 ranks)."""
    from _subprocesses import torchrun

    options = [
        "datasets.synthetic_videoqa_icl.build_info.num_clips.train=6",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.val=2",
        "datasets.synthetic_videoqa_icl.build_info.num_clips.test=2",
        f"datasets.synthetic_videoqa_icl.build_info.storage={tmp_path / 'data'}",
        f"model.demo_feature_store_dir={tmp_path / 'store'}",
        f"run.output_dir={tmp_path / 'output'}", "run.num_workers=0",
        "run.max_epoch=1", "run.batch_size_train=4", "run.batch_size_eval=8", "run.warmup_steps=1",
    ]
    filled = torchrun("run_scripts/data/fill_feature_store.py", "projects/mmict/demo.yaml", options)
    assert "demo feature store" in filled.stdout and ": 10 clips" in filled.stdout  # every split's pool
    (folder,) = os.listdir(tmp_path / "store")
    assert len(json.load(open(tmp_path / "store" / folder / "store.json"))["parts"]) == 2  # one per rank
    trained = torchrun("train.py", "projects/mmict/demo.yaml", options + ["model.demo_feature_store=use"])
    assert "10 clips; stored demos are not decoded" in trained.stdout + trained.stderr


@pytest.mark.slow
def test_precompute_similar_features_command_on_two_ranks(tmp_path):
    from _subprocesses import torchrun

    prefix = "datasets.synthetic_videoqa_icl"
    options = [f"{prefix}.build_info.num_clips.train=6", f"{prefix}.build_info.num_clips.val=2",
               f"{prefix}.build_info.num_clips.test=2", f"{prefix}.build_info.storage={tmp_path / 'data'}",
               f"{prefix}.demonstrations.strategy=similar", f"{prefix}.demonstrations.feature_cache={tmp_path / 'sim'}",
               f"{prefix}.demonstrations.encoder.vit_model=tiny", f"{prefix}.demonstrations.encoder.image_size=32",
               f"{prefix}.demonstrations.encoder.num_workers=1", f"run.output_dir={tmp_path / 'output'}",
               # `similar` takes one demo per other clip: the 2-clip splits hold one other clip each
               f"{prefix}.demonstrations.num=1"]
    result = torchrun("run_scripts/data/precompute_similar_features.py", "projects/mmict/demo.yaml", options)
    assert "similar features ready for" in result.stdout
    files = sorted(os.listdir(tmp_path / "sim"))
    assert len(files) == 3 and all(name.endswith(".npz") for name in files)  # one per split, shards merged
