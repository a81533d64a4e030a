# syntax=docker/dockerfile:1
# fiboserver image: gunicorn + the installed package, nothing else.
#   make image                      (podman or docker; tag <version>-<commit>)
#   podman build --build-arg BASE_IMAGE=localhost/bookworm-python ...
# BASE_IMAGE must be a Debian-like image with python3 and its venv module; CI
# passes a debootstrap Debian bookworm (python3 + python3-venv, no pip outside
# the venv), so every step below uses only `python3 -m venv` and the venv's pip.
# Default: the official slim Python 3.11 on bookworm, pinned by full version tag
# and by the digest of its multi-architecture index (rebuilt upstream = new digest,
# so a rebuild of this image never silently changes its base).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${BASE_IMAGE} AS builder
WORKDIR /src
# Dependencies first, from the lock alone (`make lock`, docs/dependencies.md): every
# distribution pinned and checked against its sha256 (--require-hashes), wheels
# only (nothing is compiled), so two builds install the same bytes. Its own layer:
# a code change does not reinstall them. --no-cache-dir: no wheel cache in a layer.
COPY requirements.lock ./
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
       --require-hashes --only-binary=:all: -r requirements.lock
# Then the project: only what its build needs (see .dockerignore): metadata, the
# README it names, the package. --no-deps: nothing beyond the lock can come in;
# --no-build-isolation: built with the locked setuptools, not one fetched unhashed.
# Non-editable: the venv holds a real copy. `pip check` fails the build if the lock
# misses a requirement. pip and setuptools are removed afterwards: the running
# service never installs anything.
COPY pyproject.toml README.md ./
COPY fiboserver ./fiboserver
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
       --no-deps --no-build-isolation /src \
    && /opt/venv/bin/pip check --disable-pip-version-check \
    && /opt/venv/bin/pip uninstall --yes --disable-pip-version-check pip setuptools

FROM ${BASE_IMAGE}
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the pod; modules
# were byte-compiled at install time. PYTHONUNBUFFERED: every JSON log line leaves
# at once, none is lost in a buffer when the process stops.
# FIBOSERVER_CONFIG: where the Deployment mounts the ConfigMap (key config.yaml).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FIBOSERVER_CONFIG=/etc/fiboserver/config.yaml
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY gunicorn.conf.py ./
# 10001: numeric, so Kubernetes' runAsNonRoot can verify it; outside the range
# of users that exist on hosts, so a container escape maps to nobody.
USER 10001:10001
# 8080: unprivileged; the config file's `port` must match (it does by default).
EXPOSE 8080
# Exec form: gunicorn is PID 1 and receives SIGTERM itself (graceful drain).
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
