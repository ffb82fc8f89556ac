# `make test` is the whole check on a fresh machine: it builds .venv, installs the package with
# its test dependencies, lints, type-checks, checks migrations, then runs the suite on SQLite
# and again on PostgreSQL.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/test
REDIS_URL ?= redis://127.0.0.1:6379/15
# Uses the servers at these URLs when they answer, else starts throwaway ones (tests/services.py).
WITH_SERVICES := $(BIN)/python -m tests.services
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install install-demo browser-deps mariadb-deps lint typecheck migrations test test-sqlite test-postgres test-matrix demo demo-check clean bench bench-scale chaos

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# What `make demo` needs and no more (django-capi and Celery; no linters, no browser): its own
# stamp, so the demo never waits for the test extra.
install-demo: $(VENV)/.demo-installed

$(VENV)/.demo-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

# The browser tests (tests/browser) drive Debian's Chromium through the Python playwright
# package: `playwright install` would download a browser build of its own, which cannot work
# offline, so Debian's package is installed when missing.
browser-deps:
	command -v chromium >/dev/null || (apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)

# MariaDB for `make test-matrix`: the headers mysqlclient builds against, the server's time
# zone tables (Django's time zone functions need them), and the server started when it is
# installed but down.
MARIADB_URL ?= mysql://root@127.0.0.1:3306/capi_matrix
mariadb-deps:
	command -v mariadb_config >/dev/null && command -v pkg-config >/dev/null || (apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
	  libmariadb-dev pkg-config build-essential)
	mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1 || service mariadb start
	mysql -h 127.0.0.1 -u root -N -e "SELECT COUNT(*) FROM mysql.time_zone_name" | grep -qv '^0$$' || \
	  mysql_tzinfo_to_sql /usr/share/zoneinfo 2>/dev/null | mysql -h 127.0.0.1 -u root mysql

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

migrations: install
	$(BIN)/django-admin makemigrations --check --dry-run --settings=tests.settings --pythonpath=.

test-sqlite: install browser-deps
	DATABASE_URL=sqlite:///:memory: $(WITH_SERVICES) --redis $(REDIS_URL) -- \
	  $(BIN)/pytest -m "not postgres and not rowlocks" $(PYTEST_ARGS)

# Tests marked `once` prove nothing that depends on the database (the demo runs on its own
# SQLite; a 100,000-row import): the SQLite pass runs them.
test-postgres: install browser-deps
	$(WITH_SERVICES) --postgres $(POSTGRES_URL) --redis $(REDIS_URL) -- \
	  $(BIN)/pytest -m "not once" $(PYTEST_ARGS)

test: browser-deps lint typecheck migrations test-sqlite test-postgres

# Not part of `make test` (one Python, one Django): Django 5.2 and 6.0 on Python 3.11-3.13,
# each on SQLite, PostgreSQL and MariaDB, by nox (noxfile.py; docs/development.md). The
# interpreters come from pyenv when they are not on PATH. NOX_ARGS narrows it to sessions
# (`.venv/bin/nox -l` lists them); CAPI_MATRIX_DATABASES=mariadb (or sqlite,postgres) to databases.
# The whole matrix takes about 70 minutes on the 2-core development machine, one pass after
# another (a pass: SQLite 3 min, PostgreSQL 6-8, MariaDB 5, each session's install 1-2;
# docs/development.md has each combination's result).
NOX_ARGS ?=
PYENV_BINS := $(wildcard $(HOME)/.pyenv/versions/3.11.*/bin $(HOME)/.pyenv/versions/3.12.*/bin \
  $(HOME)/.pyenv/versions/3.13.*/bin)
empty :=
space := $(empty) $(empty)
test-matrix: install mariadb-deps
	$(BIN)/python -m pip install --quiet -e '.[matrix]'
	PATH="$(subst $(space),:,$(PYENV_BINS)):$$PATH" CAPI_MARIADB_URL=$(MARIADB_URL) \
	  $(WITH_SERVICES) --postgres $(POSTGRES_URL) \
	  --redis $(REDIS_URL) -- $(BIN)/nox $(NOX_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .nox example_project/var

# The example shop at http://127.0.0.1:8000/ with the Graph API emulator, a Celery worker and
# beat (README "Try it"). GRAPH_ARGS="..." passes options to `manage.py capi_fakegraph`.
GRAPH_ARGS ?=
demo: install-demo
	$(BIN)/python example_project/demo.py --graph-args "$(GRAPH_ARGS)"

# The same stack, non-interactive, driven by Chromium through a fault window; exits 0 only
# when every conversion reached the emulator exactly once (tests/test_demo_check.py runs it).
demo-check: install browser-deps
	$(BIN)/python example_project/demo_check.py

# Not part of `make test` (its smoke is): django-capi against Meta's SDK, side by side, written
# to docs/benchmarks.md in a few minutes (bench/README.md). BENCH_ARGS="--help" lists options.
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Fills the database capi_bench with a million outbox rows and times the admin, the health
# page, claims and alerts (bench/README.md).
bench-scale: install
	$(BIN)/python bench/outbox_at_scale.py --rows 1000000

# Not part of `make test` (which runs a small configuration of the same test): 50,000 events,
# four drainers killed at random and a Celery worker against a failing emulator, on
# PostgreSQL (docs/reliability.md). CAPI_CHAOS_SEED=n replays a run.
chaos: install
	CAPI_CHAOS=full $(WITH_SERVICES) --postgres $(POSTGRES_URL) --redis $(REDIS_URL) -- \
	  $(BIN)/pytest -m chaos -s tests/test_chaos.py $(PYTEST_ARGS)
