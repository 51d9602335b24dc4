"""Integration tests: real training runs, CLIs in subprocesses, several processes, packaging and launchers."""
