# syntax=docker/dockerfile:1
# fiboserver image: gunicorn + the installed package, nothing else.
#   make image                      (podman or docker; IMAGE=... TAG=...)
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
# Only what the build needs (see .dockerignore): metadata, the README it names,
# and the package. Non-editable install: the venv holds a real copy.
COPY pyproject.toml README.md ./
COPY fiboserver ./fiboserver
# --no-cache-dir: no wheel cache left in the layer. pip and setuptools are removed
# from the venv afterwards: the running service never installs anything.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check /src \
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
