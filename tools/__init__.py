"""Command-line tools of the project that are not the service: tools/cluster."""
