# The two commands of the README: `make serve` (gunicorn, as in production) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
# gunicorn.conf.py would start 2 x cores workers; a few are enough for one SQLite file on a laptop.
WORKERS ?= 2

.PHONY: serve test install browsers

install: $(VENV)/.installed

# The pinned set, then this checkout as the package (editable: its `creditapp` command and its
# pytest plugin, running the code here).
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("creditapp needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

serve: install
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/gunicorn -c gunicorn.conf.py --bind $(HOST):$(PORT) --workers $(WORKERS) wsgi:app

# Three pytest-xdist workers: most tests wait on servers, brokers and clocks rather than the CPU,
# so even two cores finish in half the time. TEST_WORKERS=0 runs them in this one process.
TEST_WORKERS ?= 3

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# Headless Chromium and its driver for tests/test_browser.py, from Debian's packages (as root).
# Without them those tests are skipped; .ci/run installs them and requires them.
browsers:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "chromium and chromedriver are installed"; \
	else \
		apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; \
	fi
