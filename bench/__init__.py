"""Benchmarks (``make bench-api``)."""
