"""The one list of stores: ``{store: adapter class}``, imported lazily.

Adding a store is one folder (``dbops/stores/<store>/`` with an ``adapter.py`` implementing
:class:`dbops.backup.adapter.StoreAdapter`) and one line here. DAG files read the names at
parse time; the adapter modules (and the store's client libraries) load only when a task
builds an adapter.
"""

from __future__ import annotations

import importlib
from typing import Any

# No dbops import here: config (the core) reads the store names from this module.

ADAPTERS: dict[str, str] = {
    "postgres": "dbops.stores.postgres.adapter:PostgresAdapter",
    "mongo": "dbops.stores.mongo.adapter:MongoAdapter",
    "redis": "dbops.stores.redis.adapter:RedisAdapter",
    "weaviate": "dbops.stores.weaviate.adapter:WeaviateAdapter",
    "kafka": "dbops.stores.kafka.adapter:KafkaAdapter",
}
STORES: tuple[str, ...] = tuple(ADAPTERS)
# Stores a drill can restore into a scratch target (Weaviate restores classes only under
# their own names, into a server that lacks them).
DRILLED_STORES: tuple[str, ...] = ("postgres", "mongo", "redis", "kafka")
# Stores backed up as several series (one per database): their backup and drill tasks are
# mapped over the series; the others' are one task for the whole store.
MULTI_SERIES_STORES: tuple[str, ...] = ("postgres",)


def adapter_class(store: str) -> type:
    """The adapter class of ``store`` (a :class:`dbops.backup.adapter.StoreAdapter`)."""
    try:
        module, _, name = ADAPTERS[store].partition(":")
    except KeyError:
        raise ValueError(f"store {store!r} is not one of {', '.join(STORES)}") from None
    return getattr(importlib.import_module(module), name)


def adapter(store: str, config: Any, links: Any) -> Any:
    """The adapter of ``store``, configured and able to reach its connections."""
    return adapter_class(store)(config, links)
