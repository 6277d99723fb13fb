"""Data access for large-scale valuation (row sources, the prefetching loader) and the bundled demo data set
(pol_4000.csv.gz, see README.md in this folder)."""
from .loader import CHUNK_BYTES, BatchPrefetcher, RowSource, open_rows

__all__ = ["BatchPrefetcher", "CHUNK_BYTES", "RowSource", "open_rows"]
