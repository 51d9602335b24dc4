"""seqio tasks to batches, and the data iterator in checkpoints."""
