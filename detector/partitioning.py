"""Kafka's default partitioner on the team key, so replay mirrors the streaming layout."""

from __future__ import annotations

from kafka.partitioner.default import murmur2


def partition_for(team_id: str, partitions: int) -> int:
    """Partition Kafka's default partitioner picks for key ``team_id``.

    >>> partition_for("t-00001", 4) == partition_for("t-00001", 4)
    True
    >>> all(0 <= partition_for(f"t-{i}", 3) < 3 for i in range(50))
    True
    """
    return partition_for_key(team_id.encode(), partitions)


def partition_for_key(key: bytes, partitions: int) -> int:
    """Partition Kafka's default partitioner picks for a message key (any bytes).

    >>> partition_for_key(b"t-00001", 4) == partition_for("t-00001", 4)
    True
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions
