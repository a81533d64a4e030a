"""Client pods: the tests act from inside the cluster's network namespaces through
`kubectl exec`, never by sending traffic from the host to a pod address.

A client pod runs the cluster's app image (it has python3; no other image is
built for this) with a sleeping command, under the restricted Pod Security
profile so it may run in any of the repo's namespaces.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.clusterlib import Cluster, Obj, is_ready

SLEEP = "import time\nwhile True: time.sleep(3600)\n"


def client_pod_manifest(name: str, namespace: str, image: str, command: str = SLEEP) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "test-client"},
        },
        "spec": {
            "automountServiceAccountToken": False,
            # Gone at once when deleted: nothing to drain.
            "terminationGracePeriodSeconds": 0,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", command],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def ensure_namespace(cluster: Cluster, name: str) -> None:
    """The namespace, created if missing (the API server labels it with its name,
    kubernetes.io/metadata.name, which NetworkPolicies select namespaces by)."""
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(doc))


def start_pod(
    cluster: Cluster, name: str, namespace: str, command: str = SLEEP, timeout: float = 120
) -> None:
    """Create the client pod and wait until it is Ready."""
    doc = client_pod_manifest(name, namespace, cluster.image(), command)
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(doc))
    deadline = time.monotonic() + timeout
    while True:
        pod = cluster.get("-n", namespace, "pod", name)
        if is_ready(pod):
            return
        assert time.monotonic() < deadline, f"client pod {namespace}/{name}: {pod['status']}"
        time.sleep(1)


def delete_pod(cluster: Cluster, name: str, namespace: str) -> None:
    cluster.kubectl(
        "-n",
        namespace,
        "delete",
        "pod",
        name,
        "--ignore-not-found",
        "--wait=true",
        "--timeout=60s",
        timeout=90,
    )


@contextmanager
def client_pod(cluster: Cluster, name: str, namespace: str) -> Iterator[str]:
    start_pod(cluster, name, namespace)
    try:
        yield name
    finally:
        delete_pod(cluster, name, namespace)


def run_py(
    cluster: Cluster, pod: str, namespace: str, code: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """python3 -c `code` inside the pod's container; the result as it came."""
    return cluster.kubectl(
        "exec", "-n", namespace, pod, "--", "python3", "-c", code, check=False, timeout=timeout
    )


# Prints one JSON line: {name: [addresses] or "error: ..."} for each name in argv.
RESOLVE = """
import json, socket, sys
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = sorted({a[4][0] for a in socket.getaddrinfo(name, None, socket.AF_INET)})
    except OSError as e:
        out[name] = f"error: {e}"
print(json.dumps(out))
"""


def resolve(cluster: Cluster, pod: str, ns: str, *names: str) -> dict[str, list[str] | str]:
    """What the pod's resolver (its /etc/resolv.conf, the kubelet's) answers."""
    proc = cluster.kubectl(
        "exec", "-n", ns, pod, "--", "python3", "-c", RESOLVE, *names, timeout=60
    )
    out: dict[str, list[str] | str] = json.loads(proc.stdout)
    return out


# Prints one JSON line: {target: HTTP status or "error: ..."} for each target
# "address:port/path" in argv, one new connection each (3 s to connect and answer).
GET = """
import http.client, json, sys
out = {}
for target in sys.argv[1:]:
    hostport, _, path = target.partition("/")
    host, _, port = hostport.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=3)
    try:
        conn.request("GET", "/" + path)
        out[target] = conn.getresponse().status
    except OSError as e:
        out[target] = f"error: {e!r}"
    finally:
        conn.close()
print(json.dumps(out))
"""


def http_get(cluster: Cluster, pod: str, ns: str, *targets: str) -> dict[str, int | str]:
    """From inside the pod: GET each "address:port/path"; status or error text."""
    proc = cluster.kubectl("exec", "-n", ns, pod, "--", "python3", "-c", GET, *targets,
                           timeout=30 + 4 * len(targets))  # fmt: skip
    out: dict[str, int | str] = json.loads(proc.stdout)
    return out
