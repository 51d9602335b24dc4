"""Evaluators: loss and deletion metrics, per-task reports, speed, seqio metrics, deletion analysis."""
