"""The support matrix: Django 5.2 LTS and 6.0 on Python 3.11-3.13, on SQLite, PostgreSQL and
MariaDB (``make test-matrix``; docs/development.md).

One session per Python and Django, each with its own virtualenv, reused between runs; a
session runs the suite once per database, so three databases cost one install. Choose
databases with ``CAPI_MATRIX_DATABASES=sqlite,mariadb`` and sessions with nox's own options
(``nox -s "tests(python='3.11', django='5.2')"``). The servers are the ones ``make test``
uses; MariaDB at ``CAPI_MARIADB_URL`` (default ``mysql://root@127.0.0.1:3306/capi_matrix``)
needs 10.6 or later (``SELECT … FOR UPDATE SKIP LOCKED``) and its time zone tables loaded
(``make mariadb-deps``).
"""

from __future__ import annotations

import os

import nox

nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

#: (Python, Django): Django 6.0 needs Python 3.12 or later.
COMBINATIONS = [
    ("3.11", "5.2"),
    ("3.12", "5.2"),
    ("3.13", "5.2"),
    ("3.12", "6.0"),
    ("3.13", "6.0"),
]
DATABASES = {
    "sqlite": "sqlite:///:memory:",
    # tests.services (make test-matrix) names the PostgreSQL it found or started.
    "postgres": os.environ["DATABASE_URL"]
    if os.environ.get("DATABASE_URL", "").startswith("postgres")
    else "postgres://postgres@127.0.0.1:5432/capi_matrix",
    "mariadb": os.environ.get("CAPI_MARIADB_URL", "mysql://root@127.0.0.1:3306/capi_matrix"),
}
#: Chromium's tests exercise the browser, not Django or the database: `make test` runs them.
#: The chaos suite is PostgreSQL's alone and runs in `make test` too.
EVERYWHERE = "not browser and not chaos"
#: Tests marked `once` prove nothing that depends on the database (a 100,000-row import, the
#: demo's own SQLite): the SQLite pass runs them, as in `make test`.
MARKERS = {
    "sqlite": f"{EVERYWHERE} and not postgres and not rowlocks",
    "postgres": f"{EVERYWHERE} and not once",
    # Tests marked postgres use PostgreSQL's own features (EXPLAIN plans, transactional DDL).
    "mariadb": f"{EVERYWHERE} and not postgres and not once",
}


@nox.session
@nox.parametrize(("python", "django"), COMBINATIONS)
def tests(session: nox.Session, django: str) -> None:
    session.install(".[test,mysql]", f"django~={django}.0")
    selected = os.environ.get("CAPI_MATRIX_DATABASES", ",".join(DATABASES)).split(",")
    unknown = set(selected) - set(DATABASES)
    if unknown:
        session.error(f"unknown database(s) {', '.join(sorted(unknown))}: {', '.join(DATABASES)}")
    for database in selected:
        session.log(f"Django {django}, Python {session.python}, {database}")
        session.run(
            "pytest",
            "-p",
            "no:cacheprovider",
            "-m",
            MARKERS[database],
            *session.posargs,
            env={
                "DATABASE_URL": DATABASES[database],
                # The checkout is what is tested (pytest puts it first on sys.path); the
                # installed copy brings the dependencies and the plugin's entry point.
                "PYTHONPATH": os.getcwd(),
                "CAPI_TEST_REDIS_URL": os.environ.get(
                    "CAPI_TEST_REDIS_URL", "redis://127.0.0.1:6379/14"
                ),
            },
        )
