"""The `similar` strategy (RICES): true nearest neighbours, and its on-disk feature cache."""
import os

import numpy as np
import pytest
from lavis.common.registry import registry
from omegaconf import OmegaConf

import _dataset_files as files
from lavis_mmict.datasets import similarity
from lavis_mmict.datasets.demonstrations import build_demo_sampler

TINY_ENCODER = {"vit_model": "tiny", "image_size": 32, "seed": 0, "batch_size": 4, "device": "cpu"}


def qa_records(names, first_id=0):
    return [{"image": name, "question": "q", "answer": "a", "question_id": first_id + i}
            for i, name in enumerate(names)]


# --- the sampler on features with a known geometry --------------------------------------------

def unit(angles):
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def test_similar_sampler_returns_the_k_nearest_most_similar_last_never_the_query():
    angles = np.array([0.0, 0.1, 0.25, 1.0, 2.0, 3.0])  # sources on the unit circle
    records = qa_records([f"s{i}.jpg" for i in range(6)])
    rows = np.arange(6)
    sampler = build_demo_sampler({"num": 3, "strategy": "similar"}, records, records, True, "x",
                                 query_features=unit(angles), pool_features=unit(angles),
                                 query_sources=rows, pool_sources=rows)
    assert sampler.sample(0) == [3, 2, 1]  # nearest to angle 0: 0.1, then 0.25, then 1.0; nearest last
    assert sampler.sample(5) == [2, 3, 4]
    assert sampler.sample(0, epoch=4) == sampler.sample(0)  # deterministic in training too


def circle_sampler(pool_angles, pool_sources, query_angles, query_sources, queries, pool, same_split, num=3,
                   seed=42, **extra):
    return build_demo_sampler({"num": num, "strategy": "similar", "pool": "self" if same_split else "train",
                               "seed": seed}, queries, pool, same_split, "x",
                              query_features=unit(np.asarray(query_angles)),
                              pool_features=unit(np.asarray(pool_angles)),
                              query_sources=query_sources, pool_sources=pool_sources, **extra)


def test_similar_takes_one_record_of_each_of_the_k_nearest_other_sources():
    """pool: self with 4 annotations per clip: never the query's clip, K distinct clips, the nearest."""
    angles = np.array([0.0, 0.1, 0.25, 1.0, 2.0, 2.9])
    records = qa_records([f"s{clip}.jpg" for clip in range(6) for _ in range(4)])
    rows = np.repeat(np.arange(6), 4)
    sampler = circle_sampler(angles, rows, angles, rows, records, records, True)
    for query in range(len(records)):
        demos = sampler.sample(query)
        clips = [int(rows[d]) for d in demos]
        assert rows[query] not in clips  # no other annotation of the query's own clip
        assert len(set(clips)) == 3  # K distinct clips
        distance = np.abs(angles - angles[rows[query]])
        distance[rows[query]] = np.inf
        assert clips == np.argsort(distance, kind="stable")[:3][::-1].tolist()  # the nearest, nearest last
    assert [sampler.sample(q) for q in range(24)] == [sampler.sample(q) for q in range(24)]
    again = circle_sampler(angles, rows, angles, rows, records, records, True)
    assert [again.sample(q) for q in range(24)] == [sampler.sample(q) for q in range(24)]  # seeded
    # the record of a clip is a seeded draw among its annotations (not always the first one)
    assert len({d % 4 for q in range(24) for d in sampler.sample(q)}) > 1
    other_seed = circle_sampler(angles, rows, angles, rows, records, records, True, seed=7)
    assert [other_seed.sample(q) for q in range(24)] != [sampler.sample(q) for q in range(24)]
    clips_of = [rows[sampler.sample(q)].tolist() for q in range(24)]
    assert [rows[other_seed.sample(q)].tolist() for q in range(24)] == clips_of  # the seed picks records, not clips
    with pytest.raises(ValueError, match=r"num = 6 but query 0 has only 5 candidate clips/images"):
        circle_sampler(angles, rows, angles, rows, records, records, True, num=6)
    no_demos = build_demo_sampler({"num": 0, "strategy": "similar"}, records, records, True, "x")  # K = 0
    assert no_demos.sample(0) == [] and no_demos.sample(0, epoch=1) == []


def test_similar_from_another_split_excludes_the_querys_clip_and_unreadable_sources():
    pool = qa_records(["a.jpg", "a.jpg", "b.jpg", "c.jpg", "q.jpg"])
    queries = qa_records(["q.jpg"], first_id=99)
    pool_angles = np.array([0.2, 0.1, 1.0, 0.0])  # sources a (records 0, 1), b (2), c (3), q itself (4)
    sampler = circle_sampler(pool_angles, [0, 0, 1, 2, 3], [0.0], [0], queries, pool, False, num=2)
    demos = sampler.sample(0)
    assert demos[1] == 2 and demos[0] in (0, 1)  # b (0.1) nearest, last; then one record of a; never q
    invalid_b = circle_sampler(pool_angles, [0, 0, 1, 2, 3], [0.0], [0], queries, pool, False, num=2,
                               pool_valid=[True, False, True, True])
    assert invalid_b.sample(0)[0] == 3 and invalid_b.sample(0)[1] in (0, 1)  # a, then c; not b
    # the 3 nearest sources only hold copies of the query (its question_id): past the short ranked list
    leaked = qa_records([f"p{i}.jpg" for i in range(5)])
    for record in leaked[:3]:
        record["question_id"] = 99
    far = circle_sampler([0.0, 0.05, 0.1, 0.5, 1.0], np.arange(5), [0.0], [0], queries, leaked, False, num=1)
    assert far._ranked.shape[1] == 3 and far.sample(0) == [3]


def test_nearest_sources_is_the_stable_brute_force_ranking():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(40, 6)).astype(np.float32)
    pool[20:30] = pool[0]  # ties: equal similarity, the lower row first
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queries = np.concatenate([pool[:25], -pool[:5]])
    excluded = np.concatenate([np.arange(25), np.full(5, -1)])
    valid = np.ones(40, dtype=bool)
    valid[[3, 7]] = False
    for top in (1, 5, 12, 40):
        ranked, count = similarity.nearest_sources(queries, pool, top, excluded, valid, chunk_elements=200)
        for q in range(len(queries)):
            sims = (pool @ queries[q]).astype(np.float64)
            sims[~valid] = -np.inf
            if excluded[q] >= 0:
                sims[excluded[q]] = -np.inf
            expected = np.argsort(-sims, kind="stable")[:top]
            assert count[q] == min(top, np.isfinite(sims).sum())
            assert ranked[q, :count[q]].tolist() == expected[:count[q]].tolist()


# --- end to end on images built so the nearest neighbour is known ---------------------------

def twin_images(root, pairs=5):
    """Image 2p and 2p+1 show the same pattern (the second slightly noisy); patterns differ per p."""
    names = []
    for p in range(pairs):
        for twin in range(2):
            name = f"img{2 * p + twin}.jpg"
            files.write_image(os.path.join(root, "images", name), seed=1000 + p, noise=6 * twin)
            names.append(name)
    return names


def build_imageqa(root, train_names, val_names, cache, **demonstrations):
    builder_cls = registry.get_builder_class("imageqa_icl")
    cfg = OmegaConf.load(builder_cls.default_config_path()).datasets.imageqa_icl
    cfg.build_info.annotations = {
        "train": {"storage": files.write_json(os.path.join(root, "train.json"), qa_records(train_names))},
        "val": {"storage": files.write_json(os.path.join(root, "val.json"), qa_records(val_names, 1000))},
    }
    cfg.build_info.images.storage = os.path.join(root, "images")
    cfg.vis_processor = {"train": {"name": "blip_image_eval", "image_size": 32},
                         "eval": {"name": "blip_image_eval", "image_size": 32}}
    cfg.demonstrations = OmegaConf.merge(cfg.demonstrations, {
        "num": 3, "strategy": "similar", "pool": "self", "encoder": TINY_ENCODER,
        "feature_cache": str(cache), **demonstrations})
    return builder_cls(cfg).build_datasets()


def test_similar_finds_each_images_twin_and_the_brute_force_top_k(tmp_path):
    names = twin_images(str(tmp_path))
    datasets = build_imageqa(str(tmp_path), names, names[:4], tmp_path / "cache")
    train = datasets["train"]
    sampler = train.demo_sampler
    features = sampler.pool_features[sampler.query_sources]  # per record (one image per record here)
    for query in range(len(names)):
        demos = train.demo_indices(query)
        assert demos[-1] == query ^ 1  # the most similar (last) is its twin
        sims = features @ features[query]
        sims[query] = -np.inf
        assert set(demos) == set(np.argsort(-sims)[:3].tolist())  # brute-force k nearest
        assert query not in demos
    item = train[0]
    assert item["demo_image"].shape == (3, 1, 3, 32, 32)


def test_similar_from_the_train_pool_finds_the_val_querys_twin(tmp_path):
    names = twin_images(str(tmp_path))
    train_names, val_names = names[0::2], names[1::2]  # val holds the noisy twins
    datasets = build_imageqa(str(tmp_path), train_names, val_names, tmp_path / "cache", pool="train", num=2)
    val = datasets["val"]
    for query in range(len(val_names)):
        assert val.demo_indices(query)[-1] == query  # train record `query` is the twin
        assert len(val.demo_indices(query)) == 2


def test_feature_cache_is_reused_and_invalidated_by_data_or_encoder_changes(tmp_path, monkeypatch):
    names = twin_images(str(tmp_path), pairs=3)
    cache = tmp_path / "cache"
    calls = []
    real_encode = similarity._encode_shard
    monkeypatch.setattr(similarity, "_encode_shard", lambda *a, **k: calls.append(1) or real_encode(*a, **k))

    first = build_imageqa(str(tmp_path), names, names[:2], cache, num=1)
    cached = sorted(os.listdir(cache))
    assert len(calls) == 2 and len(cached) == 2  # train and val features, one file each
    assert all(name.endswith(".npz") for name in cached)  # no temporary file left behind

    again = build_imageqa(str(tmp_path), names, names[:2], cache, num=1)
    assert len(calls) == 2 and sorted(os.listdir(cache)) == cached  # reused, nothing recomputed
    assert [again["train"].demo_indices(i) for i in range(6)] == [first["train"].demo_indices(i) for i in range(6)]

    files.write_image(str(tmp_path / "images" / "img5.jpg"), seed=1000, noise=3)  # data changed
    os.utime(tmp_path / "images" / "img5.jpg", ns=(1, 1))  # even with an odd mtime, the stamp differs
    changed = build_imageqa(str(tmp_path), names, names[:2], cache, num=1)
    assert len(calls) == 3  # train recomputed (img5 is in train); val unchanged and reused
    assert changed["train"].demo_indices(5)[0] in (0, 1)  # img5 now shows img0's pattern

    build_imageqa(str(tmp_path), names, names[:2], cache, num=1, encoder=dict(TINY_ENCODER, seed=1))
    assert len(calls) == 5  # another encoder: both splits recomputed
    assert len(os.listdir(cache)) == 5


def test_unreadable_media_in_the_pool_fails_fast_or_is_never_chosen_with_skip(tmp_path):
    names = twin_images(str(tmp_path), pairs=3)
    (tmp_path / "images" / "img1.jpg").write_bytes(b"broken")
    with pytest.raises(Exception, match="img1.jpg"):
        build_imageqa(str(tmp_path), names, names[:2], tmp_path / "cache", num=1)
    datasets = _build_with_skip(tmp_path, names)
    train = datasets["train"]
    assert all(1 not in train.demo_indices(i) for i in range(len(names)))


def _build_with_skip(tmp_path, names):
    builder_cls = registry.get_builder_class("imageqa_icl")
    cfg = OmegaConf.load(builder_cls.default_config_path()).datasets.imageqa_icl
    cfg.build_info.annotations = {"train": {"storage": str(tmp_path / "train.json")}}
    cfg.build_info.images.storage = str(tmp_path / "images")
    cfg.skip_bad_media = True
    cfg.vis_processor = {"train": {"name": "blip_image_eval", "image_size": 32},
                         "eval": {"name": "blip_image_eval", "image_size": 32}}
    cfg.demonstrations = OmegaConf.merge(cfg.demonstrations, {
        "num": 2, "strategy": "similar", "pool": "self", "encoder": TINY_ENCODER,
        "feature_cache": str(tmp_path / "cache")})
    return builder_cls(cfg).build_datasets()
