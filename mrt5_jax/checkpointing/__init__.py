"""Model directories, the checkpoint manager with recovery, readers of every layout, integrity."""
