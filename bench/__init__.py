"""Benchmarks (PERFORMANCE.md): `make bench`, `make bench-quick`."""
