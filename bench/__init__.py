"""Benchmark of the exporter against the simulator (see bench/README.md); not a test."""
