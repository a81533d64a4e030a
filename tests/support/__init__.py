"""The testing package: what tests/, bench/ and tools/cluster share. Nothing here is
a test; import a module as `from tests.support.serverproc import ServerProcess`.

Real servers and their processes:
  serverproc   THE helper that starts a real server (gunicorn -c gunicorn.conf.py)
  serverlog    a started server's output, line by line, parsed into records
  procinfo     loopback ports, a process's children, state and signals; wait_until
  clients      one request per connection, counted by outcome; latency figures
  metrictools  a private metrics registry, the server with N workers, scrapes
  flood        2,000 connections of costly requests, probes during them (overload)
  attackers    idle and slowloris connections beside wrk and readyz probes

Kubernetes manifests and logs:
  kube         kubectl kustomize, strict schema validation, quantities
  appk8s       k8s/ rendered once per directory, looked up by kind and name
  logmanifests k8s/logging and its Fluent Bit configuration
  logpipeline  what k8s/logging does to a line, and Elasticsearch's type rules
  promlocal    a local Prometheus from k8s/monitoring (`make monitor`)

Containers, edges, the cluster (tests/e2e, tests/cluster, tools/cluster):
  podmanlib    podman with the project's containers.conf; base and service images
  nginxconf    the Ingress as an nginx.conf
  edge         nginx at the edge, a child process on loopback ports
  edgeclients  HTTPS clients of the edge: curl, and a counting load
  drill        the rolling-update drill behind the edge
  clusterlib   kubectl and the API against the local cluster; the app's deploy
  edges        the edge in front of the cluster (Traefik or nginx)
  podclient    client pods: acting from inside the cluster via kubectl exec

Plumbing:
  repo         REPO_ROOT
  hosttools    require_tool: skip without a host program, fail in CI
  logcapture   the service's log records captured in-process (JsonCapture)
  testlog      say: a line in the test log past pytest's capture
"""
