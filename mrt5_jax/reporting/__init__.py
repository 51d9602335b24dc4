"""Rendering of reports (terminal and HTML)."""
