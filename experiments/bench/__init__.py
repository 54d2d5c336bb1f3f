"""Benchmarks: each prints its headline figure as the last line."""
