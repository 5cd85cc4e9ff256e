"""The store layer: everything that reads or writes a store, and nothing else.

A store's place is one :class:`~pipeline.store.location.Location` (URL and fsspec options). Modules:
``location`` (where a store is; atomic writes), ``http`` (reading over plain HTTP), ``io``
(tables, JSON, markers, key lists), ``layout`` (the arrays: shapes, chunks, codecs, digests),
``shards`` (muzarr's shard bytes, identical to zarr-python's), ``reader`` (:class:`Store`, the one
public reader), ``arrays`` (:class:`ArrayReader`: whole rows and crops), ``verify``, ``copy`` and
``lock`` (the writer's lock). Other code imports public names only.
"""

from pipeline.store.arrays import ArrayReader
from pipeline.store.location import Location, location
from pipeline.store.reader import Store, open_store

__all__ = ["ArrayReader", "Location", "Store", "location", "open_store"]
