"""Benchmark harness for fiboserver: `make bench` (README "Performance")."""
