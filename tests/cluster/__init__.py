"""Tests on a real local Kubernetes cluster (`make cluster-up && make cluster-e2e`;
docs/cluster.md). The cluster itself is the tool tools/cluster."""
