"""Benchmark scoring: metrics and `fila-train eval`."""
