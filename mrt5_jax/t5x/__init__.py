"""MrT5 as a t5x model (the only package that imports t5x)."""
