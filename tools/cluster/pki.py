"""The cluster's certificates and kubeconfigs, made with openssl.

One self-made CA signs everything: the API server's serving certificate, the
kubelet's, and a client certificate per identity (the user name is the CN, groups
are O, as the API server's x509 authenticator reads them). Service accounts get
their own RSA signing key.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import yaml

# name -> (CN, groups): the identities of the cluster's parts and of its admin.
CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("fiboserver-admin", ("system:masters",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    "kube-proxy": ("system:kube-proxy", ()),
    # The API server calling the kubelet (exec, logs): bound to
    # system:kubelet-api-admin by `up`.
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ()),
    # The add-ons (tools/cluster/addons.py), bound to their roles by `up`.
    "coredns": ("fiboserver-coredns", ()),
    "metrics-server": ("fiboserver-metrics-server", ()),
    # The NetworkPolicy engine (tools/cluster/netpol.py), bound to its role by `up`.
    "kube-router": ("fiboserver-kube-router", ()),
}
# The aggregator's client identity towards metrics-server: signed by a CA of its own
# (requestheader CA), so no other client certificate can pass as the front proxy.
FRONT_PROXY_CLIENT = "front-proxy-client"
METRICS_SERVER_DNS = "metrics-server.kube-system.svc"
DAYS = "30"  # a test cluster lives for minutes; a month is plenty


def _openssl(*args: str, stdin: str | None = None) -> None:
    subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True, check=True)


def _sign(pki: Path, name: str, subject: str, extensions: str, ca: str = "ca") -> None:
    key, csr, crt = (pki / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext = pki / f"{name}.ext"
    _openssl("genrsa", "-out", str(key), "2048")
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    ext.write_text(extensions)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki / f"{ca}.crt"), "-CAkey",
        str(pki / f"{ca}.key"), "-CAcreateserial", "-days", DAYS, "-sha256",
        "-extfile", str(ext), "-out", str(crt),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()


def _serving_ext(dns: list[str], ips: list[str]) -> str:
    alt = ",".join([*(f"DNS:{d}" for d in dns), *(f"IP:{i}" for i in ips)])
    return (
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={alt}\n"
    )


CLIENT_EXT = (
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=clientAuth\n"
)


def _make_ca(pki: Path, name: str, cn: str) -> None:
    _openssl("genrsa", "-out", str(pki / f"{name}.key"), "2048")
    _openssl(
        "req", "-x509", "-new", "-key", str(pki / f"{name}.key"), "-subj", f"/CN={cn}",
        "-days", DAYS, "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(pki / f"{name}.crt"),
    )  # fmt: skip


def make_pki(pki: Path, node_name: str, node_ip: str, service_ip: str) -> None:
    """CA, serving and client certificates and the service-account key in `pki`."""
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    _make_ca(pki, "ca", "fiboserver-cluster-ca")
    _make_ca(pki, "front-proxy-ca", "fiboserver-front-proxy-ca")
    _sign(pki, FRONT_PROXY_CLIENT, f"/CN={FRONT_PROXY_CLIENT}", CLIENT_EXT, ca="front-proxy-ca")
    # The aggregator checks it against the APIService's caBundle (the cluster CA).
    _sign(pki, "metrics-server-serving", "/CN=metrics-server", _serving_ext([METRICS_SERVER_DNS],
          [node_ip]))  # fmt: skip
    _sign(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        _serving_ext(
            ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "localhost"],
            ["127.0.0.1", node_ip, service_ip],
        ),
    )
    _sign(pki, "kubelet-serving", f"/CN=system:node:{node_name}", _serving_ext([node_name],
          [node_ip]))  # fmt: skip
    # The kubelet's client identity: the Node authorizer and NodeRestriction know it.
    _sign(pki, "kubelet", f"/O=system:nodes/CN=system:node:{node_name}", CLIENT_EXT)
    for name, (cn, groups) in CLIENTS.items():
        subject = "".join(f"/O={g}" for g in groups) + f"/CN={cn}"
        _sign(pki, name, subject, CLIENT_EXT)
    _openssl("genrsa", "-out", str(pki / "service-account.key"), "2048")
    _openssl(
        "rsa", "-in", str(pki / "service-account.key"), "-pubout",
        "-out", str(pki / "service-account.pub"),
    )  # fmt: skip


def kubeconfig(pki: Path, name: str, server: str, cluster: str = "fiboserver-local") -> str:
    """A kubeconfig for client `name` with its certificate and key embedded."""

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": b64(pki / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": name,
                "user": {
                    "client-certificate-data": b64(pki / f"{name}.crt"),
                    "client-key-data": b64(pki / f"{name}.key"),
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": name}}],
        "current-context": cluster,
    }
    return yaml.safe_dump(doc, sort_keys=False)
