"""The gin-configurable entry points: train, evaluate, inspect."""
