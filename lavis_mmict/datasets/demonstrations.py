"""Demonstration samplers: which pool records serve as in-context demos for each query.

A sampler is built once per dataset split from the ``demonstrations`` config block, the query
records and the pool records; ``sample(query_index, epoch)`` then returns indices into the pool.

Guarantees (every strategy):
- deterministic: the same (seed, epoch, query index) always gives the same demos, with a fresh
  ``numpy.random.Generator`` per call (no global RNG state, safe in DataLoader workers);
- ``epoch=None`` means evaluation: demos are fixed per query; training epochs redraw them;
- nested in K: with the same seed, the demos drawn for K - 1 are the last K - 1 (in order) of those
  drawn for K, so a shot sweep measures K, not the draw (demos are drawn one after another and the
  first drawn sits next to the query; ``num_min`` keeps the last ones the same way);
- the query itself is never returned: when the pool is the query's own split its own index is
  excluded; when the pool is another split, pool records with the query's ``question_id`` are
  excluded too (defensive; ``instance_id`` is not used because LAVIS numbers instances per split,
  so equal instance ids across splits are expected and mean nothing).

Strategies:
- ``random``: K distinct pool records; K larger than the pool (minus the query) is an error.
- ``same_source``: K other annotations of the query's clip/image (one-to-many). A clip with fewer
  than K others gives all of them; ``fallback: random`` fills the missing slots with random pool
  records instead. Queries with no sibling at all are counted and reported in one warning per
  split; in an evaluation split, more than half of the queries getting fewer than K demos (e.g.
  val queries with ``pool: train``) is an error naming the strategy and pool.
- ``similar``: one record of each of the K pool clips/images (sources) nearest to the query's by
  cosine similarity of frozen visual features (RICES), most similar last, i.e. next to the query.
  Every record of the query's own source is excluded (its other annotations are near-copies of the
  target); the sources are fixed, the record of a source with several is a seeded draw (redrawn
  per training epoch). See similar_sampler.py and similarity.py (features, ranking).

An evaluation split whose pool is the split itself (``pool: self``) is transductive: the
demonstrations are evaluation data (:func:`is_transductive`; log.txt and sweep tables say so).

Config block (exactly these keys; only ``num``/``strategy``/``pool``/``seed`` are usually set)::

    demonstrations:
      num: 3                  # K demos per query (0 disables demos)
      num_min: 3              # training draws K in [num_min, num] per query and epoch (default: num)
      strategy: same_source   # random | same_source | similar
      pool: self              # train | val | test, or `self`: the query's own split
      seed: 42
      template: "Question: {question} Short answer: {answer}"
      fallback: none          # same_source: none (fewer demos) | random (fill up to K)
      encoder: {vit_model: eva_clip_g, image_size: 224}   # similar: frozen feature encoder
      feature_cache: output/cache/demo_features           # similar: feature cache folder
"""
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from lavis_mmict.errors import ConfigError

DEFAULT_TEMPLATE = "Question: {question} Short answer: {answer}"
VALID_POOLS = ("self", "train", "val", "test")
VALID_FALLBACKS = ("none", "random")
DEFAULT_FEATURE_CACHE = "output/cache/demo_features"
# Marks the RNG stream of evaluation draws apart from any training epoch's stream.
_EVAL_STREAM, _TRAIN_STREAM = 0, 1
# Records are matched across splits by this field (see module docstring).
IDENTITY_FIELD = "question_id"
# The field that names the clip / image a record is about, in LAVIS annotation formats.
SOURCE_FIELDS = ("video", "image")


@dataclass(frozen=True)
class DemonstrationConfig:
    """Validated ``demonstrations`` config block."""

    num: int = 0
    num_min: Optional[int] = None  # None: always `num`
    strategy: str = "random"
    pool: str = "self"
    seed: int = 42
    template: str = DEFAULT_TEMPLATE
    fallback: str = "none"
    encoder: dict = field(default_factory=dict)
    feature_cache: str = DEFAULT_FEATURE_CACHE
    max_prefix_tokens: Optional[int] = None  # read by the model (ICLEvalTask.build_model): drop far demos to fit

    @classmethod
    def from_config(cls, cfg) -> "DemonstrationConfig":
        """Build from a dict / OmegaConf node (``None`` -> no demos); unknown keys or values raise."""
        if cfg is None:
            return cls()
        values = dict(cfg.items())
        if "encoder" in values and values["encoder"] is not None:
            values["encoder"] = dict(values["encoder"].items())
        valid_keys = tuple(cls.__dataclass_fields__)
        unknown = sorted(set(values) - set(valid_keys))
        if unknown:
            raise ConfigError(
                f"Unknown key(s) {unknown} under `demonstrations:`; valid keys are {list(valid_keys)}"
            )
        config = cls(**values)
        config.validate()
        return config

    def validate(self):
        if self.strategy not in SAMPLER_CLASSES:
            raise ConfigError(
                f"Unknown demonstrations.strategy {self.strategy!r}; "
                f"valid strategies are {sorted(SAMPLER_CLASSES)}"
            )
        if self.pool not in VALID_POOLS:
            raise ConfigError(
                f"Unknown demonstrations.pool {self.pool!r}; valid pools are {list(VALID_POOLS)}"
            )
        if not isinstance(self.num, int) or self.num < 0:
            raise ConfigError(f"demonstrations.num must be an integer >= 0, got {self.num!r}")
        if self.num_min is not None and (
            not isinstance(self.num_min, int) or not 0 <= self.num_min <= self.num
        ):
            raise ConfigError(
                f"demonstrations.num_min must be an integer in [0, num = {self.num}], "
                f"got {self.num_min!r}"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"demonstrations.seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.template, str):
            raise ConfigError(f"demonstrations.template must be a string, got {self.template!r}")
        if self.fallback not in VALID_FALLBACKS:
            raise ConfigError(
                f"Unknown demonstrations.fallback {self.fallback!r}; valid: {list(VALID_FALLBACKS)}"
            )
        if not isinstance(self.encoder, dict):
            raise ConfigError(f"demonstrations.encoder must be a mapping, got {self.encoder!r}")
        from lavis_mmict.datasets.similarity import EncoderConfig  # noqa: avoids an import cycle

        EncoderConfig.from_config(self.encoder)  # unknown encoder keys fail here, at config time

    def to_dict(self) -> dict:
        return asdict(self)


def format_demo_text(template: str, record: dict) -> str:
    """Write one demo's text from its annotation record, e.g. "Question: ... Short answer: red".

    Format keys are annotation fields. A list-valued field (VQAv2 answers) is written as its most
    frequent element.
    """
    fields = {
        key: Counter(value).most_common(1)[0][0] if isinstance(value, list) and value else value
        for key, value in record.items()
    }
    try:
        return template.format(**fields)
    except KeyError as missing:
        raise ConfigError(
            f"Demonstration template {template!r} uses field {missing} which the record lacks; "
            f"record fields: {sorted(record)}"
        ) from None


class DemoSampler:
    """Base sampler. Subclasses implement ``_draw(rng, query_index) -> np.ndarray`` of pool indices,
    drawn one after another (the first drawn ends up next to the query).

    Args:
        config: DemonstrationConfig (``num`` = K, ``seed``).
        queries: the query split's records (list of dicts).
        pool: the pool split's records (the same list object when the pool is the query split).
        pool_is_query_split: True when pool indices and query indices refer to the same records.
        name: "<dataset>/<split>" used in error messages.
        evaluation: the queries are an evaluation split (too few demos is an error, see module doc).
    """

    def __init__(
        self,
        config: DemonstrationConfig,
        queries: Sequence[dict],
        pool: Sequence[dict],
        pool_is_query_split: bool,
        name: str = "dataset",
        evaluation: bool = False,
        **unused,
    ):
        self.config = config
        self.num = config.num
        self.num_min = config.num if config.num_min is None else config.num_min
        self.seed = config.seed
        self.name = name
        self.evaluation = bool(evaluation)
        self.pool_size = len(pool)
        self.pool_is_query_split = pool_is_query_split
        # Cross-split exclusion: pool indices sharing each query's identity (usually none).
        self._pool_index_by_identity = {}
        self._query_identities = None
        if not pool_is_query_split and all(IDENTITY_FIELD in r for r in queries) and all(
            IDENTITY_FIELD in r for r in pool
        ):
            self._query_identities = [r[IDENTITY_FIELD] for r in queries]
            self._pool_index_by_identity = _group_indices(r[IDENTITY_FIELD] for r in pool)

    def excluded_pool_indices(self, query_index: int) -> np.ndarray:
        """Sorted pool indices that are the query itself (never returned as demos)."""
        if self.pool_is_query_split:
            return np.array([query_index], dtype=np.int64)
        if self._query_identities is None:
            return np.empty(0, dtype=np.int64)
        identity = self._query_identities[query_index]
        return self._pool_index_by_identity.get(identity, np.empty(0, dtype=np.int64))

    def sample(self, query_index: int, epoch: Optional[int] = None) -> List[int]:
        """Pool indices of the demos for ``query_index``; ``epoch=None`` = evaluation (fixed)."""
        if self.num == 0:
            return []
        if epoch is None:
            entropy = [self.seed, _EVAL_STREAM, 0, int(query_index)]
        else:
            entropy = [self.seed, _TRAIN_STREAM, int(epoch), int(query_index)]
        rng = np.random.default_rng(entropy)
        # The first drawn goes last (next to the query): the draw for K - 1 is this one's last K - 1.
        picks = np.asarray(self._draw(rng, int(query_index)), dtype=np.int64)[::-1]
        if epoch is not None and self.num_min < self.num:
            # Drawn after the K demos, so the kept ones are the fixed-K draw's last `keep` (for
            # `similar` the most similar): training sees fewer demos, never different ones.
            keep = min(int(rng.integers(self.num_min, self.num + 1)), len(picks))
            picks = picks[len(picks) - keep:]
        return picks.tolist()

    def _draw(self, rng: np.random.Generator, query_index: int) -> np.ndarray:
        raise NotImplementedError


def is_transductive(dataset) -> bool:
    """True for an evaluation split whose demonstrations come from the split itself (``pool: self``
    or the split's own name, K > 0): its score is transductive, not comparable to a train pool's."""
    sampler = getattr(dataset, "demo_sampler", None)
    return bool(isinstance(sampler, DemoSampler) and sampler.num > 0 and sampler.pool_is_query_split
                and sampler.evaluation)


class RandomDemoSampler(DemoSampler):
    """K distinct pool records, uniformly at random, never the query."""

    def __init__(self, config, queries, pool, pool_is_query_split, name="dataset", **kwargs):
        super().__init__(config, queries, pool, pool_is_query_split, name, **kwargs)
        _check_pool_size(self, pool_is_query_split)

    def _draw(self, rng, query_index):
        return _random_draw(self, rng, query_index, self.num)


def _check_pool_size(sampler: DemoSampler, pool_is_query_split: bool):
    """K larger than the pool is a configuration error (random / similar need K candidates)."""
    available = sampler.pool_size - (1 if pool_is_query_split else 0)
    if sampler.num > available:
        raise ConfigError(
            f"{sampler.name}: demonstrations.num = {sampler.num} but the demo pool has only "
            f"{available} candidate records (pool size {sampler.pool_size}"
            f"{', minus the query itself' if pool_is_query_split else ''}); lower `num` "
            f"or use a larger pool"
        )


def _nested_choice(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """``count`` distinct integers of range(n), drawn one at a time (a partial Fisher-Yates
    shuffle): the first j of a draw of ``count`` are the draw of j from the same generator."""
    moved: Dict[int, int] = {}  # the shuffled array, stored sparsely: position -> value
    picks = np.empty(count, dtype=np.int64)
    for position in range(count):
        chosen = int(rng.integers(position, n))
        picks[position] = moved.get(chosen, chosen)
        moved[chosen] = moved.get(position, position)
    return picks


def _random_draw(sampler: DemoSampler, rng, query_index: int, count: int, also_excluded=None):
    """``count`` distinct random pool indices, never the query (nor ``also_excluded``)."""
    excluded = sampler.excluded_pool_indices(query_index)
    if also_excluded is not None and len(also_excluded):
        excluded = np.union1d(excluded, also_excluded)
    available = sampler.pool_size - len(excluded)
    if count > available:
        raise ConfigError(
            f"{sampler.name}: query {query_index} leaves {available} demo candidates after "
            f"excluding the query, fewer than demonstrations.num = {sampler.num}"
        )
    return _skip_excluded(_nested_choice(rng, available, count), excluded)


class SameSourceDemoSampler(DemoSampler):
    """K other annotations of the same clip/image (key: the record's ``video`` or ``image``).

    When the clip has fewer than K other annotations, all of them are returned (K varies per
    sample, handled downstream by ``demo_mask``), unless ``fallback: random`` fills the missing
    slots with random pool records. Queries without any sibling are reported once, as a warning;
    in an evaluation split, more than half of the queries short of K demos is a ConfigError.
    """

    def __init__(self, config, queries, pool, pool_is_query_split, name="dataset", **kwargs):
        super().__init__(config, queries, pool, pool_is_query_split, name, **kwargs)
        source_field = _source_field(queries, name)
        self._query_sources = [record[source_field] for record in queries]
        # Group index built once: source -> sorted array of pool indices.
        self._pool_index_by_source = _group_indices(record.get(source_field) for record in pool)
        if config.fallback == "random":
            _check_pool_size(self, pool_is_query_split)
        if self.num == 0:
            return
        counts = np.array([len(self.siblings(i)) for i in range(len(queries))], dtype=np.int64)
        short = int((counts < self.num).sum())
        if self.evaluation and config.fallback == "none" and 2 * short > len(queries):
            raise ConfigError(
                f"{name}: {short} of {len(queries)} evaluation queries would get fewer than "
                f"demonstrations.num = {self.num} demonstrations with strategy `same_source` and "
                f"pool `{config.pool}` (too few other annotations of their {source_field} in the "
                f"pool); set demonstrations.fallback: random, another strategy or pool, or a lower num"
            )
        lonely = int((counts == 0).sum())
        if lonely:
            logging.warning(
                "%s: %d of %d queries have no other annotation of their %s in the demo pool "
                "(same_source); they get %s.", name, lonely, len(queries), source_field,
                "random demonstrations (fallback: random)" if config.fallback == "random"
                else "no demonstrations (set demonstrations.fallback: random to fill them)",
            )

    def siblings(self, query_index: int) -> np.ndarray:
        """All pool indices about the query's clip/image, the query itself excluded."""
        group = self._pool_index_by_source.get(self._query_sources[query_index])
        if group is None:
            return np.empty(0, dtype=np.int64)
        excluded = self.excluded_pool_indices(query_index)
        return group[~np.isin(group, excluded)] if len(excluded) else group

    def _draw(self, rng, query_index):
        siblings = self.siblings(query_index)  # sorted
        picks = siblings[_nested_choice(rng, len(siblings), min(self.num, len(siblings)))]
        if self.config.fallback == "random" and len(picks) < self.num:
            filler = _random_draw(self, rng, query_index, self.num - len(picks), siblings)
            picks = np.concatenate([picks, filler])
        return picks


def _similar_sampler(*args, **kwargs) -> DemoSampler:
    """SimilarDemoSampler (similar_sampler.py), imported on use: it subclasses DemoSampler."""
    from lavis_mmict.datasets.similar_sampler import SimilarDemoSampler

    return SimilarDemoSampler(*args, **kwargs)


SAMPLER_CLASSES: Dict[str, Callable[..., DemoSampler]] = {
    "random": RandomDemoSampler,
    "same_source": SameSourceDemoSampler,
    "similar": _similar_sampler,
}


def build_demo_sampler(
    config: DemonstrationConfig,
    queries: Sequence[dict],
    pool: Sequence[dict],
    pool_is_query_split: bool,
    name: str = "dataset",
    **extra,
) -> DemoSampler:
    """Sampler for ``config.strategy`` (see ``DemoSampler``; ``extra``: SimilarDemoSampler's features)."""
    if not isinstance(config, DemonstrationConfig):
        config = DemonstrationConfig.from_config(config)
    return SAMPLER_CLASSES[config.strategy](config, queries, pool, pool_is_query_split, name, **extra)


def _group_indices(keys) -> Dict[object, np.ndarray]:
    """{key: sorted int64 array of the positions holding it}; one pass, done once per sampler."""
    positions: Dict[object, list] = {}
    for position, key in enumerate(keys):
        positions.setdefault(key, []).append(position)
    return {key: np.asarray(found, dtype=np.int64) for key, found in positions.items()}


def _skip_excluded(picks: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Map draws from range(P - len(excluded)) onto range(P) minus the sorted ``excluded``."""
    if len(excluded) == 0:
        return picks.astype(np.int64)
    shifted_excluded = excluded - np.arange(len(excluded))
    return (picks + np.searchsorted(shifted_excluded, picks, side="right")).astype(np.int64)


def _source_field(records: Sequence[dict], name: str) -> str:
    for field in SOURCE_FIELDS:
        if records and all(field in record for record in records):
            return field
    raise ConfigError(
        f"{name}: same_source demonstrations need every record to have one of {list(SOURCE_FIELDS)}"
    )
