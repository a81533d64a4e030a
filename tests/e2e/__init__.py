"""End-to-end tests with real containers and nginx (`make e2e`; docs/e2e.md)."""
