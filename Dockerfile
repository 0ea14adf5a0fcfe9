# One image for every role; the command chooses it:
#   orchestrator api --host 0.0.0.0 | worker | beat | simulator | migrate | keys … | backup …
#   celery -A workers.celery_app flower
# compose.yaml runs each of them; docs/operations.md ("Containers") describes it.
#
#   docker build -t orchestrator:local .
#   docker build --build-arg BASE_IMAGE=… …              # another Python 3.11+ base
#   docker build --secret id=pip_ca,src=$SSL_CERT_FILE …  # behind a TLS-intercepting proxy
#
# The pip_ca secret (a CA bundle for pip) is mounted for the wheel builds only: it is in no
# layer of either stage. Nothing is fetched at run time: the runtime stage installs the wheels
# built here, offline.
ARG BASE_IMAGE=python:3.11-slim

# -- build: wheels of every dependency in pyproject.toml, then of the project ----------------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# pip from the interpreter's own ensurepip, in a virtual environment: whether or not the base
# image has pip installed system-wide
RUN python -m venv /opt/pip
WORKDIR /src
COPY pyproject.toml ./
# The dependencies first (a layer that survives code changes), read from pyproject.toml.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    /opt/pip/bin/pip wheel --wheel-dir /wheels -r requirements.txt
COPY README.md ./
COPY orchestrator ./orchestrator
COPY workers ./workers
COPY migrations ./migrations
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    /opt/pip/bin/pip wheel --wheel-dir /wheels --no-deps .

# -- runtime: the wheels in a virtual environment, a non-root user ---------------------------
FROM ${BASE_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    ORCH_DATA_DIR=/var/lib/orchestrator \
    ORCH_BACKENDS_FILE=/app/config/backends.yaml
RUN useradd --uid 10001 --user-group --no-create-home \
        --home-dir /var/lib/orchestrator --shell /usr/sbin/nologin orchestrator \
    && install -d -o orchestrator -g orchestrator -m 0700 /var/lib/orchestrator /backups
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels orchestrator \
    && orchestrator --help > /dev/null
WORKDIR /app
COPY config ./config
USER orchestrator
EXPOSE 8000
# The API's readiness (PostgreSQL and Redis answer). compose.yaml gives the other roles theirs.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["orchestrator", "api", "--host", "0.0.0.0", "--port", "8000"]
