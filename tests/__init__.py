"""fiboserver's tests (`make test`). The helpers they share, and bench/ and
tools/cluster with them, are the package tests.support."""
