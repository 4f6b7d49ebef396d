# syntax=docker/dockerfile:1
# The pipeserve server with the example pipelines. Serve your own pipelines with an image
# built FROM this one: COPY your package into /app and set PIPESERVE_PIPELINE.
#
#   docker build -t pipeserve .
#   docker run -p 8000:8000 -e PIPESERVE_PIPELINE=pipelines.training:training_pipeline pipeserve

ARG PYTHON_IMAGE=python:3.11-slim-trixie

# -- build: a virtual environment with pipeserve and its runtime dependencies -----------
FROM ${PYTHON_IMAGE} AS build
# The extras that go in the image: the example pipelines' libraries and PostgreSQL.
ARG PIPESERVE_EXTRAS=examples,postgres
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN /opt/venv/bin/pip install --no-cache-dir ".[${PIPESERVE_EXTRAS}]"

# -- runtime: the environment and the pipelines, no build tools, not root ---------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 pipeserve \
    && useradd --system --uid 10001 --gid pipeserve --no-create-home \
        --home-dir /var/lib/pipeserve --shell /usr/sbin/nologin pipeserve \
    && install -d -o pipeserve -g pipeserve -m 0700 /var/lib/pipeserve
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY pipelines ./pipelines
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIPESERVE_HOST=0.0.0.0 \
    PIPESERVE_PORT=8000 \
    PIPESERVE_HOME=/var/lib/pipeserve \
    PIPESERVE_PIPELINE=pipelines.training:training_pipeline
USER 10001:10001
EXPOSE 8000
# No curl in a slim image: Python asks /health (200 while the process can serve).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PIPESERVE_PORT', '8000'), timeout=4)"]
# SIGTERM reaches the server itself (exec form, no shell): it drains, then exits 0.
ENTRYPOINT ["pipeserve"]
CMD ["serve"]
