"""The ``similar`` demonstration strategy (RICES): one record of each of the K pool clips/images
nearest to the query's, never the query's own clip/image.

The features come from similarity.py (one L2-normalised row per distinct clip/image, "source");
the ranking (:func:`~lavis_mmict.datasets.similarity.nearest_sources`) is batched over the query
sources once, when the sampler is built, so a query's draw only walks its short ranked list.
"""
import numpy as np

from lavis_mmict.datasets.demonstrations import SOURCE_FIELDS, DemoSampler
from lavis_mmict.datasets.similarity import nearest_sources
from lavis_mmict.errors import ConfigError


class SimilarDemoSampler(DemoSampler):
    """One record of each of the K pool sources nearest to the query's (RICES), most similar last.

    Extra arguments (see similarity.py): ``query_features`` / ``pool_features`` (S, D) float32,
    L2-normalised, one row per distinct clip/image; ``query_sources`` / ``pool_sources`` (N,) the
    row of each record; ``pool_valid`` (S_pool,) bool, False for unreadable media (never picked).
    The query's own source is never used: with ``pool: self`` its row; with another pool split the
    pool source whose records name the same ``video``/``image``. Ties go to the lower pool row.
    """

    def __init__(self, config, queries, pool, pool_is_query_split, name="dataset", query_features=None,
                 pool_features=None, query_sources=None, pool_sources=None, pool_valid=None, **kwargs):
        super().__init__(config, queries, pool, pool_is_query_split, name, **kwargs)
        if self.num == 0:
            return  # no demos (a sweep's K = 0): no features were computed
        if query_features is None or pool_features is None:
            raise ValueError(f"{name}: the `similar` strategy needs visual features (see similarity.py)")
        self.query_features = np.asarray(query_features, dtype=np.float32)
        self.pool_features = np.asarray(pool_features, dtype=np.float32)
        self.query_sources = np.asarray(query_sources, dtype=np.int64)
        pool_sources = np.asarray(pool_sources, dtype=np.int64)
        self.pool_valid = (np.ones(len(self.pool_features), dtype=bool) if pool_valid is None
                           else np.asarray(pool_valid, dtype=bool))
        # Pool records of each pool source, in pool order (source rows are 0..S-1).
        order = np.argsort(pool_sources, kind="stable")
        bounds = np.searchsorted(pool_sources[order], np.arange(len(self.pool_features) + 1))
        self._records_of_source = [order[bounds[s]:bounds[s + 1]] for s in range(len(self.pool_features))]
        self._own_source = self._own_pool_sources(queries, pool, pool_sources)
        # Ranked sources of every query source, batched; two spare ones for the rare source whose
        # every record is excluded (a cross-split duplicate of the query); the rest on demand.
        self._ranked, self._count = nearest_sources(self.query_features, self.pool_features, self.num + 2,
                                                    self._own_source, self.pool_valid)
        short = np.flatnonzero(self._count[self.query_sources] < self.num)  # per record
        if len(short):
            query = int(short[0])
            raise ConfigError(
                f"{name}: demonstrations.num = {self.num} but query {query} has only "
                f"{int(self._count[self.query_sources[query]])} candidate clips/images in the demo pool "
                f"({len(self.pool_features)} distinct sources; its own and unreadable ones excluded); "
                f"`similar` takes one demo per source: lower `num` or use a larger pool"
            )

    def _own_pool_sources(self, queries, pool, pool_sources) -> np.ndarray:
        """(S_query,) the pool row of each query source's own clip/image, -1 when the pool lacks it."""
        if self.pool_is_query_split:
            return np.arange(len(self.query_features), dtype=np.int64)
        own = np.full(len(self.query_features), -1, dtype=np.int64)
        field = next((f for f in SOURCE_FIELDS if all(f in r for r in queries) and all(f in r for r in pool)), None)
        if field is not None:
            row_of_key = {}
            for index, record in enumerate(pool):
                row_of_key.setdefault(record[field], int(pool_sources[index]))
            for index, record in enumerate(queries):
                own[self.query_sources[index]] = row_of_key.get(record[field], -1)
        return own

    def _ranking(self, row: int):
        """Pool sources for query source ``row``, nearest first: the precomputed short list, then
        (rarely needed) the rest of a full ranking, whose prefix is the short list."""
        yield from self._ranked[row][: self._count[row]].tolist()
        top = self._ranked.shape[1]
        if self._count[row] == top < len(self.pool_features):
            full, count = nearest_sources(self.query_features[[row]], self.pool_features, len(self.pool_features),
                                          self._own_source[[row]], self.pool_valid)
            yield from full[0][top: count[0]].tolist()

    def _draw(self, rng, query_index):
        excluded = self.excluded_pool_indices(query_index)
        picks = []
        for source in self._ranking(int(self.query_sources[query_index])):
            records = self._records_of_source[source]
            if len(excluded):
                records = records[~np.isin(records, excluded)]
            if len(records):  # one seeded record per source
                picks.append(records[int(rng.integers(len(records)))] if len(records) > 1 else records[0])
            if len(picks) == self.num:
                return np.asarray(picks, dtype=np.int64)
        raise ConfigError(f"{self.name}: query {query_index} has fewer than {self.num} valid demo candidates")
