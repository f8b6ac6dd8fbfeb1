# Job-session service image. Build:  docker build -t job-session-service:1.0.0 .
# Run and deploy: see deploy/README.md.

# --- builder: resolve and install the package and its dependencies into a self-contained venv.
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src
# README.md is the package's long description (pyproject `readme`): the build needs it.
COPY pyproject.toml README.md ./
COPY app ./app
# A regular (not editable) install: the app lives in the venv's site-packages, compiled to .pyc
# here because nothing can write bytecode at run time on a read-only root file system.
RUN pip install --no-cache-dir . \
    && python -m compileall -q /opt/venv/lib

# --- runtime: the interpreter from the same base image, the venv, and nothing else.
FROM python:3.11-slim

LABEL org.opencontainers.image.title="job-session-service" \
      org.opencontainers.image.description="Serves job-session JSON documents from a folder, from memory." \
      org.opencontainers.image.version="1.0.0"

# A fixed numeric UID/GID so that Kubernetes' runAsNonRoot can verify it and so that file
# permissions on the shared sessions volume can be granted to it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv

# PYTHONSAFEPATH: `python -m app` must import the installed package, never a folder named `app`
# that happens to be in the working directory.
# SESSIONS_DIR is deliberately not created in the image: a forgotten volume mount then stops the
# service with exit status 2 ("SESSIONS_DIR: folder '/data/sessions' does not exist") instead of
# serving an empty folder as if it were ready.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    SESSIONS_DIR=/data/sessions

WORKDIR /srv
USER 10001:10001
EXPOSE 8000
# The service handles SIGTERM itself: readiness 503 for SESSIONS_SHUTDOWN_DELAY_S, then drain,
# then exit 0. The exec-form CMD makes Python PID 1, so it receives the signal directly.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
