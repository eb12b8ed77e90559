"""Configuration of the replay tables."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplayConfig:
    url: str = ""
    """Redis URL (redis://, rediss://, unix://); empty = embedded redis-server in the run directory."""
    expert_max_size: int = 2000
    """Capacity of the expert table (FIFO eviction)."""
    online_max_size: int = 5000
    """Capacity of the online table (FIFO eviction)."""
    alpha: float = 0.6
    """Priority exponent α of proportional prioritized sampling."""
    min_size_to_sample: int = 64
    """Items a table must hold before the learner may sample (Reverb's MinSize)."""
    samples_per_insert: float = 0.0
    """Target sampled/inserted ratio (0 = no ratio limit, only min_size_to_sample)."""
    error_buffer: float = 0.0
    """Allowed deviation from samples_per_insert, in samples (Reverb's SampleToInsertRatio)."""
    namespace: str = "relaxrl"
    """Prefix of every Redis key, so several runs can share one server."""
    appendfsync: str = "everysec"
    """Embedded Redis AOF fsync policy: 'everysec' or 'always'."""
    metrics_port: int = 0
    """Port of the replay service's Prometheus endpoint (0 = off)."""
    connect_timeout: float = 10.0
    """Seconds a client keeps retrying (exponential backoff) an unreachable Redis before it fails."""
    expert_rate_limited: bool = False
    """Apply min_size_to_sample / samples_per_insert to the expert table too (default: only `online`; the expert table then supplies min(round(B·f), size) items and never blocks)."""
    insert_chunk: int = 512
    """Most transitions reserved, stored and published in one step of an insert (larger inserts are split)."""
