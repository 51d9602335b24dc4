"""Command-line front ends (console scripts mrt5-train, mrt5-eval, mrt5-convert, mrt5-bench)."""
