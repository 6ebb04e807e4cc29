"""Benchmarks: run by hand, results recorded in docs/benchmarks.md. Not part of the test suite."""
