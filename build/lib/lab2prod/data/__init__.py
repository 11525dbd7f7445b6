"""Images in: decoding, sources (folders, buckets, digits), the ingest cache, splits, the shard format, and
the feedback inbox."""
