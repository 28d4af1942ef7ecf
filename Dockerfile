# The studio-gateway image: the `gateway` sidecar and the `gateway-operator`, from one
# virtualenv at /opt/gateway. How to build it, and what was verified: docs/image.md.

# Any Debian 12 (bookworm) based image with python3 >= 3.11 (with its venv module) and
# /etc/ssl/certs/ca-certificates.crt. Both stages use it, so the venv's interpreter link
# resolves in the final image. Where no registry is reachable, scripts/build-image makes
# one with debootstrap and passes it here.
# Pinned by tag only: no container registry is reachable where this file is maintained,
# so no digest could be read. A release build passes the digest it resolved, as
# --build-arg BASE_IMAGE=python:3.11-slim-bookworm@sha256:<digest>, or sets it here
# (docs/image.md, "Pinning the base image").
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder

# pip reads these from the environment. A mirror or proxy goes in PIP_INDEX_URL; a
# TLS-intercepting network needs its CA in the base image's bundle, which PIP_CERT names.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Every dependency and the build backend from requirements.lock (scripts/lock), each file
# checked against its pinned SHA-256 and only as a wheel (no build script of a dependency
# runs). Before the source is copied, so that this layer is rebuilt only when the lock
# changes.
COPY requirements.lock ./
RUN python3 -m venv /opt/gateway \
    && /opt/gateway/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
      -r requirements.lock

# Only what the wheel is built from (.dockerignore keeps everything else out as well).
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY operator/ operator/

# The project alone (--no-deps), built with the locked setuptools (--no-build-isolation
# fetches nothing unpinned): a regular (non-editable) install without the dev extras,
# compiled to bytecode here because the root filesystem is read-only at run time.
# `pip check` fails the build if the lock misses a requirement. pip and setuptools then
# leave the venv: nothing installs packages at run time.
RUN /opt/gateway/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/gateway/bin/pip check \
    && /opt/gateway/bin/pip uninstall --yes pip setuptools


FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="studio-gateway" \
      org.opencontainers.image.description="gRPC sidecar that gets live-casino round results from camera-based detectors over MQTT, and the GameTable operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="LicenseRef-Proprietary"

# A name for UID/GID 65532 (the Helm chart's runAsUser): kopf asks getpass.getuser() for
# its peering identity, which fails for a UID without a passwd entry.
RUN getent group 65532 >/dev/null || echo 'nonroot:x:65532:' >>/etc/group; \
    getent passwd 65532 >/dev/null \
      || echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin' >>/etc/passwd

COPY --from=builder /opt/gateway /opt/gateway

# Bytecode was compiled at build time; nothing may write beside the code at run time.
ENV PATH=/opt/gateway/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 65532:65532

# No entry point of our own (and none inherited from the base): the same image runs
# `gateway serve ...` (the sidecar) and the operator; the Helm chart sets the command.
ENTRYPOINT []
CMD ["gateway", "--help"]
