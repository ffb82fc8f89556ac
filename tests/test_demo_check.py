"""`make demo-check` in the suite: the example shop's whole stack (web server, Celery worker and
beat, Graph API emulator) driven by Chromium through a fault window."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EMULATOR_LINE = re.compile(
    r"Graph API emulator: capi_fakegraph on http://127\.0\.0\.1:\d+ \(pid (\d+)\)"
)


def demo_env() -> dict[str, str]:
    # The script makes its own SQLite database and broker; the suite's must not leak in.
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CAPI_", "CELERY_")) and key != "DATABASE_URL"
    }


def group_is_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.once
@pytest.mark.browser
def test_every_conversion_of_the_demo_arrives_exactly_once_with_its_pixel_twin():
    result = subprocess.run(
        [sys.executable, "example_project/demo_check.py", "--shoppers", "3"],
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "OK: every conversion arrived exactly once, with its Pixel twin." in result.stdout
    assert "3 orders, 2 leads" in result.stdout
    assert "0 received more than once, 0 missing, 0 not from the outbox" in result.stdout
    assert "Fault window" in result.stdout and " 0 request(s) refused" not in result.stdout
    # The emulator ran as `make demo` runs it, a capi_fakegraph process, and was broken and
    # healed through its control endpoint; its process group is gone afterwards.
    assert "POST /_faults: 100% HTTP 500" in result.stdout
    assert "DELETE /_faults: no faults" in result.stdout
    started = EMULATOR_LINE.search(result.stdout)
    assert started, result.stdout
    assert group_is_gone(int(started[1]))


@pytest.mark.slow
@pytest.mark.once
@pytest.mark.browser
def test_sigterm_stops_the_stack_it_started():
    process = subprocess.Popen(
        [sys.executable, "example_project/demo_check.py", "--shoppers", "1"],
        cwd=ROOT,
        env={**demo_env(), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        started = None
        while started is None:
            assert time.monotonic() < deadline, "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                assert process.poll() is None, "".join(seen)
                continue
            started = EMULATOR_LINE.search(seen[-1])
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    time.sleep(0.5)  # the reader thread drains what is left
    while not lines.empty():
        seen.append(lines.get())
    assert "demo-check interrupted: the stack is stopped." in "".join(seen)
    assert group_is_gone(int(started[1]))


def test_the_demo_check_and_the_browser_tests_launch_chromium_with_one_list_of_flags():
    from example_project.chromium import CHROMIUM_ARGS
    from tests.browser import conftest

    assert conftest.CHROMIUM_ARGS is CHROMIUM_ARGS
    # The script runs with example_project/ as its first import path, as `make demo-check` does.
    script = (
        "import chromium, demo_check; print(demo_check.CHROMIUM_ARGS is chromium.CHROMIUM_ARGS)"
    )
    same = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT / "example_project",
        env={**demo_env(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert same.stdout.strip() == "True", same.stderr
    assert "--no-sandbox" in CHROMIUM_ARGS
