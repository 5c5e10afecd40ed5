"""Where the worker reaches into Faust: the table store and transactional sends.

``ChangelogRocksStore`` is a RocksDB table store that keeps no partition it no longer owns
and reads one partition at a time.

Faust writes a table's local RocksDB before the Kafka transaction that carries the same
change commits. When a partition is revoked, Faust stops that transaction (it is aborted),
but the local database keeps its writes; if the partition comes back later, recovery
replays the changelog only from the last committed offset, on top of those aborted writes.
Forgetting the partition on revocation makes every assignment recover from the committed
changelog alone. (Registered as the ``churnrocks://`` store.)

``send_in_transaction`` writes all records that one input causes into the open transaction
of its partition in one go, so a commit never falls between them.
"""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from typing import Any

from faust.exceptions import ProducerSendError
from faust.stores import STORES
from faust.stores.rocksdb import Store as RocksDBStore


class ChangelogRocksStore(RocksDBStore):
    def partition_items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """The records of one changelog partition (as recovered), without scanning the others."""
        yield from self._visible_items(self._db_for_partition(partition))

    def revoke_partitions(self, table: Any, tps: Any) -> None:
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                db = self._dbs.pop(tp.partition, None)
                close = getattr(db, "close", None)
                if close is not None:
                    close()
                shutil.rmtree(self.partition_path(tp.partition), ignore_errors=True)
                for key in [k for k, p in self._key_index.items() if p == tp.partition]:
                    del self._key_index[key]
        gc.collect()


STORES.aliases["churnrocks"] = f"{__name__}:ChangelogRocksStore"


#: (topic, key, value, partition or None)
Record = tuple[str, bytes | None, bytes, int | None]


async def send_in_transaction(producer: Any, transactional_id: str, records: list[Record]) -> None:
    """Queue ``records`` in the open transaction ``transactional_id``, with no commit between them.

    Faust's own ``producer.send(..., transactional_id=...)`` takes the transaction lock per
    record, so its periodic commit can fall in the middle of one input's output (half of a
    bundle's state committed, the rest in a transaction a crash aborts). Holding the lock for
    the whole group keeps each input's alerts, dead letters and state changes atomic.
    """
    async with producer._trn_locks[transactional_id]:
        transaction = producer._transaction_producers.get(transactional_id)
        if transaction is None:
            raise ProducerSendError(f"no transaction producer for {transactional_id}")
        for topic, key, value, partition in records:
            await transaction.send(topic, value, key=key, partition=partition)
