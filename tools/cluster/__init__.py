"""The local single-node Kubernetes cluster: a command-line tool,
`python -m tools.cluster up|down|check` (the Makefile's cluster-up and cluster-down;
README "Run it on a real cluster", docs/cluster.md). tests/cluster holds the tests
that run on it.

  __main__  the command line
  up        start etcd, the control plane, containerd, the kubelet, kube-proxy
  down      stop it all and remove what it made; leftovers() for `check`
  binaries  the Go-built components (pinned modules in build/<component>/) and the
            cache /var/cache/fiboserver/cluster they are built into
  layout    where the cluster keeps things, its addresses, its config files
  pki       the certificates and kubeconfigs
  procs     starting, finding and stopping the component processes
  images    the pause and app images, handed to containerd without a registry

It builds the app image as tests/e2e does (tests.support.podmanlib).
"""
