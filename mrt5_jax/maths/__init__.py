"""Pure functions: relative positions, attention kernels, compaction, pooling, the controller, trees."""
