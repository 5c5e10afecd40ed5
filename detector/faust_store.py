"""A RocksDB table store that keeps no partition it no longer owns.

Faust writes a table's local RocksDB before the Kafka transaction that carries the same
change commits. When a partition is revoked, Faust stops that transaction (it is aborted),
but the local database keeps its writes; if the partition comes back later, recovery
replays the changelog only from the last committed offset, on top of those aborted writes.
Forgetting the partition on revocation makes every assignment recover from the committed
changelog alone. (Registered as the ``churnrocks://`` store.)
"""

from __future__ import annotations

import gc
import shutil
from typing import Any

from faust.stores import STORES
from faust.stores.rocksdb import Store as RocksDBStore


class ChangelogRocksStore(RocksDBStore):
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
