"""How Debian's Chromium is launched headless here, by the browser tests
(``tests/browser/conftest.py``) and by ``make demo-check`` alike: one list, so the two never
drift apart. No imports: ``demo_check.py`` loads it as a sibling, the tests as
``example_project.chromium``."""

#: No sandbox (root in CI) and no background traffic on a machine without internet.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
