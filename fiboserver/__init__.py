"""fiboserver: Fibonacci numbers over HTTP, run the way a Kubernetes service should be."""

from fiboserver.app import create_app

__all__ = ["create_app"]
