# creditapp's image: the API (gunicorn, gunicorn.conf.py) by default; the same image runs the job
# worker and the migrations (compose.yaml). Build: `docker build -t creditapp .`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GUNICORN_BIND=0.0.0.0:8000

WORKDIR /app

# The package with its runtime dependencies at requirements.txt's pins (extras stripped: pip takes
# none in a constraints file), and none of the test tools.
COPY requirements.txt pyproject.toml README.md LICENSE /src/
COPY creditapp /src/creditapp
RUN sed -E 's/\[[^]]*\]//' /src/requirements.txt > /tmp/constraints.txt \
    && pip install /src -c /tmp/constraints.txt \
    && rm -rf /src /tmp/constraints.txt

# This deployment's settings and server: what `make serve` runs from a checkout.
COPY config.py wsgi.py gunicorn.conf.py docker/serve /app/

# Never root: the API writes nothing but its metrics directory (a temporary one).
RUN useradd --system --uid 10001 creditapp
USER creditapp

EXPOSE 8000
# /readyz on GUNICORN_BIND's port: the database answers and is migrated (compose.yaml runs `migrate` first).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD python -c "import os, urllib.request; port = os.environ.get('GUNICORN_BIND', ':8000').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=2)" || exit 1
CMD ["./serve"]
