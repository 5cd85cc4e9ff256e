"""muzarr's pipeline: audio datasets to chunked Zarr feature stores (no torch here).

The public reader is :func:`open_store`; everything else reads stores through it.
"""

from pipeline.errors import MuzarrError
from pipeline.store.reader import Store, open_store

__all__ = ["MuzarrError", "Store", "open_store"]
