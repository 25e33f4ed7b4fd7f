"""Benchmarks: measured speed on the machine they run on, written to docs/benchmarks.md."""
