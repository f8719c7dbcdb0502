"""Demonstration samplers: which pool records serve as in-context demos for each query.

A sampler is built once per dataset split from the ``demonstrations`` config block, the query
records and the pool records; ``sample(query_index, epoch)`` then returns indices into the pool.

Guarantees (every strategy):
- deterministic: the same (seed, epoch, query index) always gives the same demos, with a fresh
  ``numpy.random.Generator`` per call (no global RNG state, safe in DataLoader workers);
- ``epoch=None`` means evaluation: demos are fixed per query; training epochs redraw them;
- the query itself is never returned: when the pool is the query's own split its own index is
  excluded; when the pool is another split, pool records with the query's ``question_id`` are
  excluded too (defensive; ``instance_id`` is not used because LAVIS numbers instances per split,
  so equal instance ids across splits are expected and mean nothing).

Config block (exactly these keys)::

    demonstrations:
      num: 3                  # K demos per query (0 disables demos)
      strategy: same_source   # random | same_source
      pool: self              # train | val | test, or `self`: the query's own split
      seed: 42
      template: "Question: {question} Short answer: {answer}"
"""
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

DEFAULT_TEMPLATE = "Question: {question} Short answer: {answer}"
VALID_POOLS = ("self", "train", "val", "test")
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
    strategy: str = "random"
    pool: str = "self"
    seed: int = 42
    template: str = DEFAULT_TEMPLATE

    @classmethod
    def from_config(cls, cfg) -> "DemonstrationConfig":
        """Build from a dict / OmegaConf node (``None`` -> no demos); unknown keys or values raise."""
        if cfg is None:
            return cls()
        values = dict(cfg.items())
        valid_keys = tuple(cls.__dataclass_fields__)
        unknown = sorted(set(values) - set(valid_keys))
        if unknown:
            raise ValueError(
                f"Unknown key(s) {unknown} under `demonstrations:`; valid keys are {list(valid_keys)}"
            )
        config = cls(**values)
        config.validate()
        return config

    def validate(self):
        if self.strategy not in SAMPLER_CLASSES:
            raise ValueError(
                f"Unknown demonstrations.strategy {self.strategy!r}; "
                f"valid strategies are {sorted(SAMPLER_CLASSES)}"
            )
        if self.pool not in VALID_POOLS:
            raise ValueError(
                f"Unknown demonstrations.pool {self.pool!r}; valid pools are {list(VALID_POOLS)}"
            )
        if not isinstance(self.num, int) or self.num < 0:
            raise ValueError(f"demonstrations.num must be an integer >= 0, got {self.num!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"demonstrations.seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.template, str):
            raise ValueError(f"demonstrations.template must be a string, got {self.template!r}")

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
        raise KeyError(
            f"Demonstration template {template!r} uses field {missing} which the record lacks; "
            f"record fields: {sorted(record)}"
        ) from None


class DemoSampler:
    """Base sampler. Subclasses implement ``_draw(rng, query_index) -> np.ndarray`` of pool indices.

    Args:
        config: DemonstrationConfig (``num`` = K, ``seed``).
        queries: the query split's records (list of dicts).
        pool: the pool split's records (the same list object when the pool is the query split).
        pool_is_query_split: True when pool indices and query indices refer to the same records.
        name: "<dataset>/<split>" used in error messages.
    """

    def __init__(
        self,
        config: DemonstrationConfig,
        queries: Sequence[dict],
        pool: Sequence[dict],
        pool_is_query_split: bool,
        name: str = "dataset",
    ):
        self.config = config
        self.num = config.num
        self.seed = config.seed
        self.name = name
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
        return self._draw(rng, int(query_index)).tolist()

    def _draw(self, rng: np.random.Generator, query_index: int) -> np.ndarray:
        raise NotImplementedError


class RandomDemoSampler(DemoSampler):
    """K distinct pool records, uniformly at random, never the query."""

    def __init__(self, config, queries, pool, pool_is_query_split, name="dataset"):
        super().__init__(config, queries, pool, pool_is_query_split, name)
        available = self.pool_size - (1 if pool_is_query_split else 0)
        if self.num > available:
            raise ValueError(
                f"{name}: demonstrations.num = {self.num} but the demo pool has only {available} "
                f"candidate records (pool size {self.pool_size}"
                f"{', minus the query itself' if pool_is_query_split else ''}); lower `num` "
                f"or use a larger pool"
            )

    def _draw(self, rng, query_index):
        excluded = self.excluded_pool_indices(query_index)
        available = self.pool_size - len(excluded)
        if self.num > available:
            raise ValueError(
                f"{self.name}: query {query_index} leaves {available} demo candidates after "
                f"excluding the query, fewer than demonstrations.num = {self.num}"
            )
        picks = rng.choice(available, size=self.num, replace=False)
        return _skip_excluded(picks, excluded)


class SameSourceDemoSampler(DemoSampler):
    """K other annotations of the same clip/image (key: the record's ``video`` or ``image``).

    When the clip has fewer than K other annotations, all of them are returned (K varies per
    sample, handled downstream by ``demo_mask``); no random filler is added.
    """

    def __init__(self, config, queries, pool, pool_is_query_split, name="dataset"):
        super().__init__(config, queries, pool, pool_is_query_split, name)
        source_field = _source_field(queries, name)
        self._query_sources = [record[source_field] for record in queries]
        # Group index built once: source -> sorted array of pool indices.
        self._pool_index_by_source = _group_indices(record.get(source_field) for record in pool)

    def siblings(self, query_index: int) -> np.ndarray:
        """All pool indices about the query's clip/image, the query itself excluded."""
        group = self._pool_index_by_source.get(self._query_sources[query_index])
        if group is None:
            return np.empty(0, dtype=np.int64)
        excluded = self.excluded_pool_indices(query_index)
        return group[~np.isin(group, excluded)] if len(excluded) else group

    def _draw(self, rng, query_index):
        siblings = self.siblings(query_index)
        if len(siblings) <= self.num:
            return rng.permutation(siblings)  # all of them, in a seeded order
        return rng.choice(siblings, size=self.num, replace=False)


SAMPLER_CLASSES: Dict[str, Callable[..., DemoSampler]] = {
    "random": RandomDemoSampler,
    "same_source": SameSourceDemoSampler,
}


def build_demo_sampler(
    config: DemonstrationConfig,
    queries: Sequence[dict],
    pool: Sequence[dict],
    pool_is_query_split: bool,
    name: str = "dataset",
) -> DemoSampler:
    """Sampler for ``config.strategy`` (see ``DemoSampler`` for the arguments)."""
    if not isinstance(config, DemonstrationConfig):
        config = DemonstrationConfig.from_config(config)
    return SAMPLER_CLASSES[config.strategy](config, queries, pool, pool_is_query_split, name)


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
    raise ValueError(
        f"{name}: same_source demonstrations need every record to have one of {list(SOURCE_FIELDS)}"
    )
