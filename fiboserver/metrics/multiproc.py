"""PROMETHEUS_MULTIPROC_DIR: where every process of one server keeps its metrics.

In prometheus_client's multiprocess mode each process writes its values to
memory-mapped files named `<type>_<pid>.db` in that directory, and a scrape
reads and adds them all up. The gunicorn master looks after the directory:

- At server start it empties it (`prepare`): files left by an earlier server,
  such as a restarted container's in the same emptyDir, would be added in. The
  master holds a lock on the directory while it runs, so a second server given
  the same directory refuses to start instead of wiping a live server's counts.
  A master started by USR2 beside the old one shares the old one's directory
  and live workers: it neither empties nor locks it.
- When a worker exits (`worker_died`), its live gauges go (prometheus_client's
  `mark_process_dead`) and its counters and histograms are added into one
  archive file per type and deleted. Counters still never go backwards, and the
  number of files (what a scrape reads, and what the tmpfs holds) follows the
  number of live processes, not of every worker the server ever had.
- Scrapes (`collect`) read under a shared lock and archiving writes under an
  exclusive one, so no scrape sees a worker's counts twice or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

ENV = "PROMETHEUS_MULTIPROC_DIR"
# Types whose values of a dead process stay in the sum.
ARCHIVED_TYPES = ("counter", "histogram", "summary")
# The files prometheus_client and `archive` write; emptying removes only these.
_DB_FILE = re.compile(r"(?:counter|gauge_[a-z]+|histogram|summary)_(?:\d+|archive)\.db(?:\.tmp)?")
# Scrapes and archiving take this lock; a file of its own, since the master's
# lock on the directory is held for as long as it runs.
_MERGE_LOCK = ".merge.lock"


class MultiprocDirError(Exception):
    """The directory cannot be used; the message says why."""


@dataclass
class Directory:
    """A prepared PROMETHEUS_MULTIPROC_DIR. `private`: made by this master (the
    variable was not set) and removed when it exits."""

    path: str
    private: bool
    lock_fd: int | None


def prepare(environ: MutableMapping[str, str], upgrading: bool) -> Directory:
    """The directory named by $PROMETHEUS_MULTIPROC_DIR, created if missing, locked
    and emptied; or, when the variable is unset or empty, a new private one under
    /dev/shm, which `environ` then names.

    `upgrading`: this master was started by USR2 beside the old one, whose workers
    write to the same directory: it is used as it is. Raises MultiprocDirError.
    """
    path = environ.get(ENV, "")
    private = not path
    if private:
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        path = tempfile.mkdtemp(prefix="fiboserver-metrics-", dir=shm)
        environ[ENV] = path
    else:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise MultiprocDirError(f"{ENV}={path}: cannot create it: {exc.strerror}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise MultiprocDirError(f"{ENV}={path}: not a writable directory")
    if upgrading and not private:
        return Directory(path, private, None)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MultiprocDirError(
            f"{ENV}={path} is in use by another running server; give each server "
            "a directory of its own"
        ) from None
    for name in os.listdir(path):
        if _DB_FILE.fullmatch(name):
            os.unlink(os.path.join(path, name))
    return Directory(path, private, fd)


def _locked(path: str, exclusive: bool) -> Iterator[None]:
    fd = os.open(os.path.join(path, _MERGE_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


# Wrapped here, not decorated: mutmut does not mutate decorated functions (docs/mutation.md).
_merge_lock = contextlib.contextmanager(_locked)


# This process's id, as prometheus_client's multiprocess values name their files.
# They ask for it on every update, to notice a fork (a getpid() system call, five
# per request on the cached path: the most frequent call in a worker's profile,
# docs/performance.md); here the fork itself refreshes it.
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def process_id() -> int:
    """os.getpid(), without the system call."""
    return _pid


def use_cached_process_id() -> None:
    """Make the multiprocess values created from now on identify this process by
    `process_id` (prometheus_client's `process_identifier`), not by a getpid()
    per update. Before the first metric is created: each value keeps the class
    it was made with."""
    from prometheus_client import values

    if in_multiprocess_mode():
        values.ValueClass = values.MultiProcessValue(process_identifier=process_id)  # type: ignore[no-untyped-call]


def in_multiprocess_mode() -> bool:
    """Whether prometheus_client keeps values in the directory's files; it decides
    when it is first imported, so that must follow `prepare`."""
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


def collect(path: str) -> Iterable[Metric]:
    """Every metric of every process, summed as prometheus_client's
    MultiProcessCollector sums them, read under the shared lock."""
    from prometheus_client.multiprocess import MultiProcessCollector

    with _merge_lock(path, exclusive=False):
        files = glob.glob(os.path.join(path, "*.db"))
        return list(MultiProcessCollector.merge(files))  # type: ignore[no-untyped-call]


class Collector:
    """A prometheus_client collector over `collect(path)`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        return collect(self.path)


def worker_died(path: str, pid: int) -> None:
    """Drop the live gauges of the dead process `pid`, and archive its counters
    and histograms (`archive`)."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    archive(path, pid)


def archive(path: str, pid: int) -> None:
    """Add the counter, histogram and summary values of the dead process `pid` into
    `<type>_archive.db`, then delete its files.

    Each value is stored under a key naming its metric, sample and labels, and
    histogram buckets are stored per bucket (not cumulative), so archiving is an
    addition per key. The new archive is written beside the old one and renamed
    over it; scrapes wait meanwhile (exclusive lock), so none reads the dead
    process's counts twice or misses them.
    """
    from prometheus_client.mmap_dict import MmapedDict

    with _merge_lock(path, exclusive=True):
        for kind in ARCHIVED_TYPES:
            dead = os.path.join(path, f"{kind}_{pid}.db")
            if not os.path.exists(dead):
                continue
            target = os.path.join(path, f"{kind}_archive.db")
            totals: dict[str, float] = {}
            for source in (target, dead):
                if os.path.exists(source):
                    values = MmapedDict.read_all_values_from_file(source)  # type: ignore[no-untyped-call]
                    for key, value, _timestamp, _pos in values:
                        totals[key] = totals.get(key, 0.0) + value
            staging = target + ".tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)  # left by a master that died here
            out = MmapedDict(staging)  # type: ignore[no-untyped-call]
            try:
                for key, value in totals.items():
                    out.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
            finally:
                out.close()  # type: ignore[no-untyped-call]
            os.replace(staging, target)
            os.unlink(dead)


def close(directory: Directory) -> None:
    """At the master's exit: drop its live gauges; remove a private directory."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(os.getpid(), directory.path)  # type: ignore[no-untyped-call]
    if directory.lock_fd is not None:
        os.close(directory.lock_fd)
        directory.lock_fd = None
    if directory.private:
        shutil.rmtree(directory.path, ignore_errors=True)
