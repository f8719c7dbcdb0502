"""Visual features for the ``similar`` demonstration strategy (RICES), computed once and cached.

Every distinct clip/image of a split (its "source") gets one feature: its frames (read as the
demonstrations are, with the eval processor) go through a frozen vision encoder built by
``backbones.build_vision_encoder`` (the same presets as the models: ``eva_clip_g``, ``tiny``);
the layer-normalised output tokens are averaged over tokens and frames and L2-normalised, so a dot
product is a cosine similarity.

Cache: ``<feature_cache>/<split name>-<fingerprint>.npz`` (``demonstrations.feature_cache``,
default ``output/cache/demo_features``, relative to the current directory like the run's
``output_dir``). The fingerprint covers the encoder (config, weights file size and mtime, init
seed), the frame reading (frames, sampling, processor) and the data (every source's path, size and
mtime), so changing any of them computes new features; an unchanged setup reuses the file across
runs and processes. The file is written under a temporary name and renamed (never half-written).
Distributed runs: every rank encodes its share of the sources (datasets/sharded_media.py: batches
of ``encoder.batch_size`` read by ``encoder.num_workers`` DataLoader processes, a progress bar) and
writes it beside the cache file; rank 0 gathers the shares into the one file, which every rank
reads. ``run_scripts/data/precompute_similar_features.py`` does this before a job.
"""
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lavis_mmict.atomic import atomic_output
from lavis_mmict.datasets.sharded_media import barrier, rank_and_world, shard_batches

FEATURE_VERSION = 1


@dataclass(frozen=True)
class EncoderConfig:
    """``demonstrations.encoder``: the frozen encoder of the ``similar`` strategy."""

    vit_model: str = "eva_clip_g"   # a backbones.VISION_PRESETS name
    image_size: int = 224           # frames are resized to this before encoding
    vit_weights: Optional[str] = None  # local weights (default: the preset's file, as the models)
    vit_precision: str = "fp16"     # fp16 on CUDA only; CPU always uses fp32
    seed: int = 0                   # initialisation of an encoder without weights (tiny)
    batch_size: int = 32            # sources per encoder call
    num_workers: int = 2            # DataLoader processes reading the sources, per rank
    device: str = "auto"            # auto (cuda if available) | cuda | cpu

    @classmethod
    def from_config(cls, cfg) -> "EncoderConfig":
        values = dict(cfg or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"Unknown key(s) {unknown} under `demonstrations.encoder:`; valid keys are "
                f"{list(cls.__dataclass_fields__)}"
            )
        return cls(**values)


def _file_stamp(path: str) -> list:
    try:
        stat = os.stat(path)
        return [stat.st_size, stat.st_mtime_ns]
    except OSError:
        return [None, None]


def _build_encoder(config: EncoderConfig, device: torch.device):
    from lavis_mmict.backbones import VISION_PRESETS, build_vision_encoder

    if config.vit_model not in VISION_PRESETS:
        raise ValueError(f"Unknown demonstrations.encoder.vit_model {config.vit_model!r}; "
                         f"valid: {sorted(VISION_PRESETS)}")
    precision = config.vit_precision if device.type == "cuda" else "fp32"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # an encoder without weights is a function of its seed
        encoder, _ = build_vision_encoder({
            "vit_model": config.vit_model, "image_size": config.image_size, "vit_weights": config.vit_weights,
            "vit_precision": precision, "freeze_vit": True, "drop_path_rate": 0.0,
        })
    return encoder.to(device)  # already in eval mode (frozen by build_vision_encoder)


def encoder_fingerprint(config: EncoderConfig) -> dict:
    from lavis_mmict.backbones import VISION_PRESETS

    weights = config.vit_weights or (VISION_PRESETS.get(config.vit_model) or {}).get("weights_url")
    stamp = _file_stamp(weights) if weights and os.path.isfile(weights) else None
    fields = {k: v for k, v in asdict(config).items() if k not in ("batch_size", "num_workers", "device")}
    return dict(fields, weights=weights, weights_stamp=stamp)


class SourceFeatures:
    """Features of the distinct media of one dataset split.

    Attributes: ``features`` (S, D) float32 (rows L2-normalised; zeros where unreadable),
    ``valid`` (S,) bool, ``record_sources`` (N,) int64: the row of each record.
    """

    def __init__(self, features: np.ndarray, valid: np.ndarray, record_sources: np.ndarray):
        self.features, self.valid, self.record_sources = features, valid, record_sources


def source_rows(media_keys: Sequence[str]):
    """(distinct keys in first-seen order, row of each record)."""
    rows, keys = {}, []
    record_rows = np.empty(len(media_keys), dtype=np.int64)
    for index, key in enumerate(media_keys):
        if key not in rows:
            rows[key] = len(keys)
            keys.append(key)
        record_rows[index] = rows[key]
    return keys, record_rows


def compute_source_features(
    media_keys: Sequence[str],
    load_frames: Callable[[int], torch.Tensor],
    encoder_cfg,
    cache_dir: str,
    name: str,
    frame_reading: dict,
    skip_bad_media: bool = False,
) -> SourceFeatures:
    """Features for the sources of one split, read from / written to the cache (see module doc).

    Args:
        media_keys: per record, the path of its clip/image (records sharing it share a feature).
        load_frames: record index -> processed frames (F, 3, H, W); may raise MediaError.
        encoder_cfg: ``demonstrations.encoder`` mapping (or EncoderConfig).
        cache_dir: folder of the cache files; name: "<dataset>/<split>" (file name and messages).
        frame_reading: what else decides the frames (num_frames, sampling, processor), fingerprinted.
        skip_bad_media: unreadable media get an invalid (never chosen) row instead of an error.
    """
    from lavis.common.dist_utils import get_rank

    config = encoder_cfg if isinstance(encoder_cfg, EncoderConfig) else EncoderConfig.from_config(encoder_cfg)
    keys, record_rows = source_rows(media_keys)
    first_record = np.full(len(keys), -1, dtype=np.int64)
    for index in range(len(record_rows) - 1, -1, -1):
        first_record[record_rows[index]] = index
    fingerprint = hashlib.sha256(json.dumps({
        "version": FEATURE_VERSION,
        "encoder": encoder_fingerprint(config),
        "frames": frame_reading,
        "skip_bad_media": bool(skip_bad_media),
        "sources": [[key] + _file_stamp(key) for key in keys],
    }, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = os.path.join(os.path.abspath(cache_dir), f"{name.replace('/', '-')}-{fingerprint}.npz")

    if not _decided_by_rank0(os.path.isfile(path)):
        _encode_shard(path, keys, first_record, load_frames, config, name, skip_bad_media)
        barrier()
        if get_rank() == 0:
            _gather_shards(path, len(keys))
            logging.info("%s: visual features of %d sources written to %s", name, len(keys), path)
        barrier()
    with np.load(path, allow_pickle=False) as stored:
        features, valid = stored["features"], stored["valid"]
    if len(features) != len(keys):
        raise ValueError(f"{name}: feature cache {path} holds {len(features)} rows for {len(keys)} sources")
    return SourceFeatures(features, valid, record_rows)


def _decided_by_rank0(value: bool) -> bool:
    """Rank 0's ``value`` on every rank (ranks must agree on whether to encode)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    decision = [value]
    dist.broadcast_object_list(decision, src=0)
    return decision[0]


def _shard_path(path: str, rank: int, world: int) -> str:
    return f"{path[:-len('.npz')]}.rank{rank}-of-{world}.npz"


@torch.no_grad()
def _encode_shard(path, keys, first_record, load_frames, config: EncoderConfig, name, skip_bad_media):
    """Encode this rank's share of the sources; write (rows, features, valid) beside ``path``."""
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    encoder = _build_encoder(config, device)
    dtype = next(encoder.parameters()).dtype
    rows, features, failed = [], [], []
    for positions, frames, bad in shard_batches(len(keys), lambda row: load_frames(int(first_record[row])),
                                                config.batch_size, config.num_workers,
                                                f"{name}: similar features", skip_bad_media):
        failed += bad
        if frames is None:
            continue
        num_sources, num_frames = frames.shape[:2]  # (S, F, 3, H, W)
        flat = frames.flatten(0, 1).to(device=device, dtype=dtype)
        if flat.shape[-1] != config.image_size or flat.shape[-2] != config.image_size:
            flat = F.interpolate(flat, size=(config.image_size, config.image_size), mode="bicubic",
                                 align_corners=False)
        tokens = encoder(flat).float()  # (S*F, 1 + patches, D)
        tokens = F.layer_norm(tokens, tokens.shape[-1:])
        pooled = tokens.mean(dim=1).view(num_sources, num_frames, -1).mean(dim=1)
        rows += positions
        features.append(F.normalize(pooled, dim=-1).cpu().numpy())
    rank, world = rank_and_world()
    with atomic_output(_shard_path(path, rank, world), keep_extension=True) as temporary:
        np.savez(temporary, rows=np.asarray(rows + failed, dtype=np.int64),
                 features=np.concatenate(features) if features else np.zeros((0, encoder.num_features), np.float32),
                 valid=np.asarray([True] * len(rows) + [False] * len(failed)))


def _gather_shards(path: str, num_sources: int):
    """Rank 0: the ranks' shares -> the one cache file (rows of unreadable sources stay zero, invalid)."""
    _, world = rank_and_world()
    features, valid = None, np.zeros(num_sources, dtype=bool)
    for rank in range(world):
        shard = _shard_path(path, rank, world)
        with np.load(shard, allow_pickle=False) as part:
            rows, part_valid = part["rows"], part["valid"]
            if features is None:
                features = np.zeros((num_sources, part["features"].shape[1]), dtype=np.float32)
            features[rows[part_valid]] = part["features"]
            valid[rows] = part_valid
        os.remove(shard)
    _save_atomic(path, features, valid)


def _save_atomic(path: str, features: np.ndarray, valid: np.ndarray):
    with atomic_output(path, keep_extension=True) as temporary:  # np.savez appends .npz otherwise
        np.savez(temporary, features=features, valid=valid)



# --- ranking: the nearest pool sources of every query source ------------------------------------

def nearest_sources(query_features: np.ndarray, pool_features: np.ndarray, top: int,
                    excluded: Optional[np.ndarray] = None, pool_valid: Optional[np.ndarray] = None,
                    chunk_elements: int = 1 << 24):
    """The ``top`` pool sources most similar to each query source, most similar first.

    Batched over queries (one matrix product per chunk of about ``chunk_elements`` similarities)
    with ``np.argpartition``: no full sort per query. Ties go to the lower pool row, exactly as a
    stable sort would (a row whose cut falls inside a tie is sorted in full).

    Args:
        query_features: (Q, D) float32, L2-normalised rows (a dot product is a cosine similarity).
        pool_features: (S, D) float32, L2-normalised rows.
        top: how many sources to rank per query (at most S).
        excluded: (Q,) int64, for each query a pool row never returned (its own source), -1 = none.
        pool_valid: (S,) bool, False for pool sources never returned (unreadable media).

    Returns:
        ranked (Q, top) int64 pool rows, most similar first; count (Q,) int64: how many leading
        entries of each row are candidates (valid and not excluded); the rest are filler.
    """
    query_features = np.asarray(query_features, dtype=np.float32)
    pool_features = np.asarray(pool_features, dtype=np.float32)
    num_queries, num_pool = len(query_features), len(pool_features)
    top = min(int(top), num_pool)
    ranked = np.zeros((num_queries, top), dtype=np.int64)
    count = np.zeros(num_queries, dtype=np.int64)
    if top == 0:
        return ranked, count
    chunk = max(1, chunk_elements // max(num_pool, 1))
    for start in range(0, num_queries, chunk):
        rows = np.arange(start, min(start + chunk, num_queries))
        negated = -(query_features[rows] @ pool_features.T)  # (c, S): ascending = most similar first
        if pool_valid is not None:
            negated[:, ~np.asarray(pool_valid, dtype=bool)] = np.inf
        if excluded is not None:
            own = np.asarray(excluded, dtype=np.int64)[rows]
            has_own = own >= 0
            negated[np.flatnonzero(has_own), own[has_own]] = np.inf
        if top < num_pool:
            cut = np.argpartition(negated, top, axis=1)  # [:, :top] the top ones, [:, top] the next
            candidates = cut[:, :top]
            kept = np.take_along_axis(negated, candidates, axis=1)
            next_value = np.take_along_axis(negated, cut[:, top:top + 1], axis=1)[:, 0]
            order = np.lexsort((candidates, kept), axis=1)  # by similarity, then lower row
            chosen = np.take_along_axis(candidates, order, axis=1)
            # A tie across the cut may have left a lower row out: sort those rows in full.
            for row in np.flatnonzero(kept.max(axis=1) == next_value):
                chosen[row] = np.argsort(negated[row], kind="stable")[:top]
        else:
            chosen = np.argsort(negated, axis=1, kind="stable")
        ranked[rows] = chosen
        count[rows] = np.isfinite(np.take_along_axis(negated, chosen, axis=1)).sum(axis=1)
    return ranked, count
