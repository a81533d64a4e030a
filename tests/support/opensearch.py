"""A real OpenSearch 2.19.6 node for the log tests (issue 19): the engine that judges
the index template, Fluent Bit's bulk requests and the saved searches' queries.

It is OpenSearch's own Maven artifacts (``org.opensearch:opensearch`` and the netty4
HTTP transport) started in one JVM by tests/opensearch's launcher, not a
distribution: Maven Central is reachable here through ``mvn``, nothing else is.

- ``build()`` compiles the launcher and copies its jars once per version of
  tests/opensearch (``pom.xml`` and the Java source, hashed) into
  ``/var/cache/fiboserver/opensearch-2.19.6/<hash>`` (``FIBOSERVER_OPENSEARCH_CACHE``
  overrides the parent), outside the clone; Maven keeps its downloads in ~/.m2.
  ``python -m tests.support.opensearch --build`` (``make opensearch``, run by
  ``.ci/run``) does it ahead of ``make test``.
- ``OpenSearch(home)`` starts the node on 127.0.0.1 (a port the kernel picks) and
  ``stop()`` ends it. The node also ends when its stdin closes, so a killed pytest
  leaves no JVM behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.repo import REPO_ROOT

VERSION = "2.19.6"
PROJECT = REPO_ROOT / "tests" / "opensearch"
CACHE = Path(os.environ.get("FIBOSERVER_OPENSEARCH_CACHE", "/var/cache/fiboserver"))
MAIN_CLASS = "fiboserver.opensearch.Launcher"
# Enough for a few small indices; the JVM's default (a quarter of RAM) is not
# something a shared 2-core CI machine should hand out.
HEAP = "-Xmx512m"
START_TIMEOUT = 120.0
PORT_LINE = "OPENSEARCH_HTTP_PORT="
INDEX_TEMPLATE = REPO_ROOT / "k8s" / "logging" / "elasticsearch" / "index-template.json"
# The template's Elasticsearch-only parts: ILM is X-Pack's; OpenSearch has none and
# refuses the setting as unknown ("unknown setting [index.lifecycle.name] please check
# that any required plugins are installed"). tests/test_elasticsearch_setup.py proves
# these are all it refuses; the file itself keeps them for Elasticsearch users.
ELASTICSEARCH_ONLY_SETTINGS = ("index.lifecycle.name",)


def template_for_opensearch() -> dict[str, Any]:
    """The index template of `make elasticsearch-setup` without those settings."""
    template: dict[str, Any] = json.loads(INDEX_TEMPLATE.read_text())
    settings = template["template"]["settings"]
    for name in ELASTICSEARCH_ONLY_SETTINGS:
        del settings[name]  # KeyError if the template no longer has it: update the list
    return template


def sources() -> list[Path]:
    """What the build depends on: the pom and every Java source."""
    return [PROJECT / "pom.xml", *sorted((PROJECT / "src").rglob("*.java"))]


def build_dir() -> Path:
    digest = hashlib.sha256()
    for path in sources():
        digest.update(path.relative_to(PROJECT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return CACHE / f"opensearch-{VERSION}" / digest.hexdigest()[:16]


def classpath(built: Path) -> str:
    return f"{built / 'classes'}{os.pathsep}{built / 'lib' / '*'}"


def build(mvn: str = "mvn") -> Path:
    """The launcher's build directory, built first if this version is not cached.
    Built beside it and renamed into place: an interrupted build is never used."""
    final = build_dir()
    if (final / "classes").is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        subprocess.run(
            [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(PROJECT / "pom.xml"), "compile",
             "dependency:copy-dependencies", f"-Dlauncher.build.dir={work}",
             f"-DoutputDirectory={work / 'lib'}", "-DincludeScope=runtime"],
            check=True, timeout=1800,
        )  # fmt: skip
        try:
            work.rename(final)
        except OSError:  # another build won the race: use its result
            if not (final / "classes").is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


class OpenSearch:
    """One node, started on construction; ``url`` is its HTTP address."""

    def __init__(self, home: Path, built: Path, java: str = "java") -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = home / "launcher.log"
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [java, HEAP, "-cp", classpath(built), MAIN_CLASS, str(home)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            )  # fmt: skip
        try:
            port = self._read_port()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        self.url = f"http://127.0.0.1:{port}"

    def _read_port(self) -> int:
        # readline() blocks: read on a thread so a hung start times out.
        found: list[str] = []
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        reader = threading.Thread(target=lambda: found.append(stdout.readline().decode()))
        reader.daemon = True
        reader.start()
        reader.join(START_TIMEOUT)
        line = found[0].strip() if found else ""
        if not line.startswith(PORT_LINE):
            raise RuntimeError(
                f"OpenSearch did not start within {START_TIMEOUT:.0f} s (got {line!r}): "
                + self.log_path.read_text(errors="replace")[-4000:]
            )
        return int(line.removeprefix(PORT_LINE))

    def stop(self, timeout: float = 30) -> int:
        """Close the node (stdin EOF: the launcher closes it and exits), or kill it."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def request(
        self, method: str, path: str, body: bytes | None = None, ndjson: bool = False
    ) -> tuple[int, Any]:
        """(status, parsed JSON) of one request; error statuses are answers too."""
        headers = {"Content-Type": "application/x-ndjson" if ndjson else "application/json"}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """The answer of a request that must succeed (2xx); JSON bodies as objects."""
        data = None if body is None else json.dumps(body).encode()
        status, answer = self.request(method, path, data)
        assert 200 <= status < 300, f"{method} {path}: {status} {answer}"
        return answer


def main(argv: list[str]) -> int:
    if argv != ["--build"]:
        print("usage: python -m tests.support.opensearch --build", file=sys.stderr)
        return 2
    started = time.monotonic()
    built = build()
    print(f"opensearch {VERSION}: {built} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
