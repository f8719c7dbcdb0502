"""Demonstration samplers: never the query, seeded, same_source semantics, clear config errors."""
from types import SimpleNamespace

import numpy as np
import pytest

from lavis_mmict.datasets.demonstrations import (
    DemonstrationConfig,
    build_demo_sampler,
    format_demo_text,
    is_transductive,
)
from lavis_mmict.errors import ConfigError


def make_records(num_clips, per_clip, first_id=0, prefix="clip"):
    """LAVIS-style QA records: ``per_clip`` questions about each of ``num_clips`` videos."""
    return [
        {"video": f"{prefix}_{clip}.mp4", "question": f"q{n}", "answer": f"a{clip}",
         "question_id": first_id + clip * per_clip + n}
        for clip in range(num_clips) for n in range(per_clip)
    ]


def config(**overrides):
    return DemonstrationConfig.from_config({"num": 3, "strategy": "random", "pool": "self",
                                            "seed": 42, **overrides})


@pytest.mark.parametrize("strategy", ["random", "same_source"])
@pytest.mark.parametrize("epoch", [None, 0, 5])
def test_pool_self_never_returns_the_query(strategy, epoch):
    records = make_records(num_clips=30, per_clip=4)
    sampler = build_demo_sampler(config(strategy=strategy), records, records, True, "toy/train")
    for query in range(len(records)):
        demos = sampler.sample(query, epoch)
        assert query not in demos
        assert len(set(demos)) == len(demos)
        assert all(0 <= d < len(records) for d in demos)


@pytest.mark.parametrize("strategy", ["random", "same_source"])
def test_pool_from_other_split_excludes_records_with_the_query_id(strategy):
    queries = make_records(num_clips=10, per_clip=4, first_id=1000)
    # The pool repeats some query ids (e.g. a leaked duplicate) next to unrelated records.
    pool = make_records(num_clips=10, per_clip=4) + [dict(q) for q in queries[:8]]
    sampler = build_demo_sampler(config(strategy=strategy, num=5), queries, pool, False, "toy/val")
    for query_index, query in enumerate(queries):
        for epoch in (None, 0, 1):
            demos = sampler.sample(query_index, epoch)
            assert all(pool[d]["question_id"] != query["question_id"] for d in demos)
            if strategy == "random":
                assert len(demos) == 5


def test_random_draws_are_seeded_per_epoch_and_fixed_in_evaluation():
    records = make_records(num_clips=50, per_clip=2)
    sampler = build_demo_sampler(config(), records, records, True)
    again = build_demo_sampler(config(), records, records, True)
    other_seed = build_demo_sampler(config(seed=7), records, records, True)
    queries = range(40)
    eval_draws = [sampler.sample(q) for q in queries]
    assert eval_draws == [sampler.sample(q) for q in queries]  # fixed per question
    assert eval_draws == [again.sample(q) for q in queries]  # reproducible
    assert eval_draws != [other_seed.sample(q) for q in queries]
    epoch0 = [sampler.sample(q, epoch=0) for q in queries]
    epoch1 = [sampler.sample(q, epoch=1) for q in queries]
    assert epoch0 == [again.sample(q, epoch=0) for q in queries]
    assert epoch0 != epoch1  # training redraws every epoch
    assert epoch0 != eval_draws


def test_same_source_returns_exactly_the_clips_other_records():
    records = make_records(num_clips=12, per_clip=4)
    sampler = build_demo_sampler(config(strategy="same_source", num=3), records, records, True)
    for query, record in enumerate(records):
        siblings = {i for i, r in enumerate(records) if r["video"] == record["video"]} - {query}
        assert set(sampler.sample(query)) == siblings
        assert set(sampler.sample(query, epoch=3)) == siblings


def test_same_source_with_more_siblings_than_k_picks_k_of_them():
    records = make_records(num_clips=3, per_clip=6)
    sampler = build_demo_sampler(config(strategy="same_source", num=2), records, records, True)
    for query, record in enumerate(records):
        demos = sampler.sample(query, epoch=1)
        assert len(demos) == 2
        assert all(records[d]["video"] == record["video"] and d != query for d in demos)


def test_same_source_with_fewer_siblings_than_k_returns_all_siblings_no_filler():
    records = make_records(num_clips=5, per_clip=3)
    records.append({"video": "lonely.mp4", "question": "q", "answer": "a", "question_id": 999})
    sampler = build_demo_sampler(config(strategy="same_source", num=4), records, records, True)
    assert sorted(sampler.sample(0)) == [1, 2]  # 2 siblings < K = 4
    assert sampler.sample(len(records) - 1) == []  # a clip with one record has no demo


def test_same_source_from_another_split_uses_that_splits_records_of_the_clip():
    pool = make_records(num_clips=4, per_clip=3)
    queries = [{"video": "clip_2.mp4", "question": "q", "answer": "a", "question_id": 500}]
    sampler = build_demo_sampler(config(strategy="same_source", num=5), queries, pool, False)
    assert sorted(sampler.sample(0)) == [6, 7, 8]


def test_k_larger_than_the_pool_is_a_clear_error():
    records = make_records(num_clips=2, per_clip=2)
    with pytest.raises(ValueError, match=r"toy/val.*num = 4.*only 3.*pool size 4"):
        build_demo_sampler(config(num=4), records, records, True, "toy/val")


def test_zero_demos_gives_empty_lists():
    records = make_records(num_clips=2, per_clip=2)
    sampler = build_demo_sampler(config(num=0), records, records, True)
    assert sampler.sample(0) == [] and sampler.sample(1, epoch=2) == []


def test_unknown_strategy_lists_valid_strategies():
    with pytest.raises(ValueError, match=r"'nearest'.*\['random', 'same_source', 'similar'\]"):
        config(strategy="nearest")


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"\['k'\].*'num', 'num_min', 'strategy', 'pool', 'seed', 'template', 'fallback'"):
        DemonstrationConfig.from_config({"k": 3, "strategy": "random"})


def test_unknown_pool_lists_valid_pools():
    with pytest.raises(ValueError, match=r"'dev'.*'self', 'train', 'val', 'test'"):
        config(pool="dev")


def test_template_formats_annotation_fields_and_names_missing_ones():
    record = {"question": "what color is it?", "answer": ["red", "blue", "red"]}
    assert format_demo_text("Question: {question} Short answer: {answer}", record) == (
        "Question: what color is it? Short answer: red"
    )
    with pytest.raises(ConfigError, match="caption"):  # a UserError: one line in train.py
        format_demo_text("{caption}", record)


def test_random_draws_cover_the_pool_uniformly():
    records = make_records(num_clips=10, per_clip=1)
    sampler = build_demo_sampler(config(num=2), records, records, True)
    counts = np.bincount(
        np.concatenate([sampler.sample(0, epoch=e) for e in range(900)]), minlength=10
    )
    assert counts[0] == 0
    assert counts[1:].min() > 150  # expected 200 each for 1800 draws over 9 items


@pytest.mark.parametrize("strategy", ["random", "same_source"])
def test_num_min_varies_k_in_training_only_and_keeps_a_subset_of_the_fixed_k_draw(strategy):
    records = make_records(num_clips=40, per_clip=5)
    fixed = build_demo_sampler(config(strategy=strategy, num=4), records, records, True)
    varied = build_demo_sampler(config(strategy=strategy, num=4, num_min=0), records, records, True)
    counts = []
    for epoch in (0, 1, 2):
        for query in range(len(records)):
            full, fewer = fixed.sample(query, epoch), varied.sample(query, epoch)
            assert fewer == full[len(full) - len(fewer):]  # the fixed draw's last ones, in order
            counts.append(len(fewer))
    assert set(counts) == {0, 1, 2, 3, 4}  # every K in [num_min, num] occurs ...
    assert abs(np.mean(counts) - 2.0) < 0.2  # ... uniformly
    # evaluation keeps K = num, the same demos as without num_min
    assert all(varied.sample(q) == fixed.sample(q) for q in range(len(records)))


def test_num_min_keeps_the_most_similar_demos_of_similar():
    """`similar` puts the most similar last; a shorter training draw keeps those."""
    from lavis_mmict.datasets.similar_sampler import SimilarDemoSampler

    records = make_records(num_clips=20, per_clip=1)
    features = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    common = dict(query_features=features, pool_features=features,
                  query_sources=np.arange(20), pool_sources=np.arange(20))
    fixed = SimilarDemoSampler(config(strategy="similar", num=3), records, records, True, **common)
    varied = SimilarDemoSampler(config(strategy="similar", num=3, num_min=1), records, records,
                                True, **common)
    for query in range(20):
        full, fewer = fixed.sample(query, 0), varied.sample(query, 0)
        assert 1 <= len(fewer) <= 3 and fewer == full[len(full) - len(fewer):]


@pytest.mark.parametrize("num_min", [-1, 4, 1.5, "2"])
def test_num_min_outside_zero_to_num_is_a_clear_error(num_min):
    with pytest.raises(ValueError, match=r"demonstrations.num_min must be an integer in \[0, num = 3\]"):
        config(num_min=num_min)


def _unit_features(count, seed=0):
    features = np.random.default_rng(seed).normal(size=(count, 8)).astype(np.float32)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


@pytest.mark.parametrize("strategy", ["random", "same_source", "similar"])
def test_demo_sets_are_nested_in_k_with_the_same_seed(strategy):
    """A shot sweep's K - 1 demos are the last K - 1 of its K demos (same seed), for every query."""
    records = make_records(num_clips=30, per_clip=3)
    extra = {}
    if strategy == "similar":
        rows = np.repeat(np.arange(30), 3)
        extra = dict(query_features=_unit_features(30), pool_features=_unit_features(30),
                     query_sources=rows, pool_sources=rows)
    draws = {}
    for k in range(1, 7):
        sampler = build_demo_sampler(config(strategy=strategy, num=k, fallback="random"), records, records,
                                     True, "toy/test", evaluation=True, **extra)
        draws[k] = [sampler.sample(q) for q in range(len(records))]
    for k in range(2, 7):
        assert all(len(demos) == k for demos in draws[k])
        assert [demos[1:] for demos in draws[k]] == draws[k - 1]


def test_same_source_short_of_k_for_most_evaluation_queries_is_an_error_naming_strategy_and_pool():
    pool = make_records(num_clips=10, per_clip=3)
    queries = make_records(num_clips=4, per_clip=2, first_id=500, prefix="val_clip")  # clips not in train
    queries += [dict(r, question_id=900 + i) for i, r in enumerate(pool[:3])]  # 3 of 11 have siblings
    with pytest.raises(ConfigError, match=r"toy/val: 8 of 11 evaluation queries .* strategy `same_source` "
                                          r"and pool `train`"):
        build_demo_sampler(config(strategy="same_source", pool="train"), queries, pool, False, "toy/val",
                           evaluation=True)
    # training keeps the warning; fallback: random fills the slots; a minority short of K is fine
    build_demo_sampler(config(strategy="same_source", pool="train"), queries, pool, False, "toy/val")
    build_demo_sampler(config(strategy="same_source", pool="train", fallback="random"), queries, pool, False,
                       "toy/val", evaluation=True)
    build_demo_sampler(config(strategy="same_source", pool="train"), queries[-3:] + queries[:1], pool, False,
                       "toy/val", evaluation=True)


def test_pool_self_in_an_evaluation_split_is_transductive():
    records = make_records(num_clips=5, per_clip=2)
    evaluation_self = build_demo_sampler(config(), records, records, True, evaluation=True)
    assert is_transductive(SimpleNamespace(demo_sampler=evaluation_self))
    assert not is_transductive(SimpleNamespace(demo_sampler=build_demo_sampler(config(), records, records, True)))
    other_pool = build_demo_sampler(config(pool="train"), records, make_records(5, 2, 100), False, evaluation=True)
    assert not is_transductive(SimpleNamespace(demo_sampler=other_pool))
    no_demos = build_demo_sampler(config(num=0), records, records, True, evaluation=True)
    assert not is_transductive(SimpleNamespace(demo_sampler=no_demos))
    assert not is_transductive(SimpleNamespace())
