"""Hard deletion at inference: buckets, the encode path, scoring and decoding."""
