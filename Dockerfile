# Container image for realtimekit-exporter.
#
#   docker build -t realtimekit-exporter .
#   docker run --rm -p 10241:10241 realtimekit-exporter --demo     # no token needed
#   docker run --rm -p 10241:10241 -e CLOUDFLARE_API_TOKEN \
#       -v "$PWD/config.yaml:/etc/realtimekit-exporter/config.yaml:ro" realtimekit-exporter
#
# The default command reads /etc/realtimekit-exporter/config.yaml (see config.example.yaml);
# arguments given to `docker run` replace it, e.g. `--demo` or `--config.file=... --config.check`.
# The exporter writes nothing to disk, so the image runs with a read-only root filesystem
# (docker run --read-only, Kubernetes readOnlyRootFilesystem: true) as UID/GID 10241.
#
# PYTHON_IMAGE picks the base of both stages. It needs python3 with the venv module and CA
# certificates, e.g. python:3.12-slim or a Debian image with python3, python3-venv and
# ca-certificates (scripts/container-smoke.sh builds such a base without a registry).
ARG PYTHON_IMAGE=python:3.12-slim
# checkov:skip=CKV_DOCKER_7:the base is the build argument above, pinned to python:3.12-slim by default; checkov cannot resolve ARGs

FROM ${PYTHON_IMAGE} AS build

# Optional, for pip in this stage only (the runtime stage never sees them): a CA bundle for
# a TLS-intercepting proxy and a private index, e.g. with buildah
#   -v /etc/ssl/certs:/etc/ssl/certs:ro --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# (see scripts/container-smoke.sh). Unset, pip uses PyPI and its own CA bundle.
ARG PIP_CERT
ARG PIP_INDEX_URL

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

# `python3`, not `python`: Debian's python3 package has no `python` command.
RUN python3 -m venv /opt/venv

WORKDIR /src

# The dependencies and the build backend (setuptools) at the versions locked in
# requirements/runtime.txt (scripts/lock writes it), every file checked against its hash;
# pip fails if a dependency is missing from the lock. A layer of its own: a change to the
# code alone does not download them again.
COPY requirements/runtime.txt ./requirements/
RUN /opt/venv/bin/python -m pip install --no-cache-dir --require-hashes -r requirements/runtime.txt

COPY pyproject.toml README.md LICENSE ./
COPY exporter ./exporter

# Install the project into the venv, built with the locked setuptools and without fetching
# anything; pip check fails if pyproject.toml asks for what the lock lacks. Then take pip
# and setuptools out of the venv: the runtime needs neither, and they would only add size
# and scanner findings. Last, run the installed command: it imports every module from the
# venv (not from /src, which `python -c` would put first on sys.path), so a module missing
# from the wheel fails the build here instead of at runtime.
RUN /opt/venv/bin/python -m pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/venv/bin/python -m pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools \
    && /opt/venv/bin/realtimekit-exporter --version


FROM ${PYTHON_IMAGE}

ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE_URL=""

LABEL org.opencontainers.image.title="realtimekit-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Cloudflare RealtimeKit livestreams" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

# A named, fixed, unprivileged user. Written straight into /etc/passwd and /etc/group so
# that any Debian-like base works, with or without useradd.
# The base's own pip (python:*-slim ships one under /usr/local) is removed too: the
# runtime installs nothing, and an unused pip only draws scanner findings.
RUN echo "exporter:x:10241:" >> /etc/group \
    && echo "exporter:x:10241:10241:realtimekit-exporter:/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
    && rm -rf /usr/local/lib/python3*/site-packages/pip /usr/local/lib/python3*/site-packages/pip-* \
        /usr/local/bin/pip /usr/local/bin/pip3*

COPY --from=build /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric, so that Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10241:10241

# 10243: the webhook receiver, when the configuration has a webhooks section.
EXPOSE 10241 10243

# Exec form with the venv's python: the image has no curl or wget. Only valid while the
# exporter listens on its default port 10241 inside the container.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10241/-/healthy', timeout=4)"]

ENTRYPOINT ["realtimekit-exporter"]
CMD ["--config.file=/etc/realtimekit-exporter/config.yaml"]
