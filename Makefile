# make run  : the app on embedded defaults (SQLite, file-based Celery broker): web + worker + beat
# make test : the whole suite (PostgreSQL and Redis when DATABASE_URL and REDIS_URL are set)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run demo test lint bench venv clean

$(STAMP): requirements.txt requirements-dev.txt
	@set -e; python=$$(scripts/find-python); \
	if [ ! -x $(PY) ]; then echo "creating $(VENV) with $$python"; "$$python" -m venv $(VENV); fi
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	DEBUG=$${DEBUG:-1} $(PY) manage.py migrate --noinput
	DEBUG=$${DEBUG:-1} $(PY) manage.py bootstrap
	@echo "rolloutadmin: http://127.0.0.1:8000 (log in as admin; Django admin at /admin/). Ctrl-C stops web, worker and beat."
	DEBUG=$${DEBUG:-1} $(VENV)/bin/honcho start -f Procfile

# make run plus a traffic simulator: a living dashboard in one command. The first time, it turns Patch
# Mode on at 20% in the local database so that both modes have traffic.
demo: $(STAMP)
	DEBUG=$${DEBUG:-1} $(PY) manage.py migrate --noinput
	DEBUG=$${DEBUG:-1} $(PY) manage.py bootstrap
	-@DEBUG=$${DEBUG:-1} $(PY) manage.py set_rollout patch_mode_enabled 20 --enable --expected-version 1 \
		--reason "make demo: start at 20%" 2>/dev/null
	@echo "rolloutadmin demo: http://127.0.0.1:8000  (Ctrl-C stops web, worker, beat and the simulator)"
	DEBUG=$${DEBUG:-1} $(VENV)/bin/honcho start -f Procfile.demo

# The published OpenFeature clients the interop tests run (tests/interop, pinned by its lock file).
INTEROP := tests/interop/node_modules/.package-lock.json
$(INTEROP): tests/interop/package.json tests/interop/package-lock.json
	@if command -v npm >/dev/null; then cd tests/interop && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm is not installed: the OpenFeature interop tests (tests/interop) will be skipped"; fi

test: $(STAMP) $(INTEROP)
	DEBUG=$${DEBUG:-1} $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	DEBUG=$${DEBUG:-1} $(VENV)/bin/mypy

bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null 2>&1; } || \
		echo "wrk is not installed (apt-get install wrk): the HTTP benchmarks will be skipped"
	DEBUG=$${DEBUG:-1} $(PY) -m bench $(BENCH)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache tests/interop/node_modules
