"""`make demo` (example_project/demo.py): what it starts, what it prints, and that Ctrl-C
leaves no process behind."""

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processes() -> dict[int, tuple[int, int]]:
    """pid: (parent pid, process group) of every process on the machine."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        found[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
    return found


def demo_env(tmp_path: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CAPI_", "CELERY_")) and key not in ("DATABASE_URL",)
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env | {"SHOP_VAR_DIR": str(tmp_path)}


@pytest.mark.slow
@pytest.mark.once
def test_the_demo_serves_the_shop_with_celery_and_ctrl_c_stops_every_process(tmp_path):
    shop_port, graph_port = free_port(), free_port()
    demo_py = f"example_project/demo.py --shop-port {shop_port} --graph-port {graph_port}"
    demo = subprocess.Popen(
        # Started as a shell starts a background job (`make demo &`, some CI runners): with
        # SIGINT ignored, which Python keeps; Ctrl-C must stop the demo all the same.
        ["/bin/bash", "-c", f"trap '' INT; exec {shlex.quote(sys.executable)} {demo_py}"],
        cwd=ROOT,
        env=demo_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # Ctrl-C goes to the terminal's foreground group: this one
    )
    banner = []
    groups: set[int] = set()
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            banner.append(line)
            if line.startswith("Ctrl-C stops everything.") or demo.poll() is not None:
                break
        text = "".join(banner)
        assert f"http://127.0.0.1:{shop_port}/" in text, text
        assert "user 'admin', password 'admin'" in text
        assert "/admin/django_capi/outboxevent/health/" in text
        assert f"the local Graph API emulator on port {graph_port}" in text
        # The hint names this interpreter (relative to the folder `make demo` runs in, when
        # the venv is inside it), so it works pasted there, outside any activated venv.
        (hint,) = [line for line in text.splitlines() if "createsuperuser" in line]
        python, manage_py, command = hint.split()[-3:]
        assert (ROOT / python).absolute() == Path(sys.executable).absolute()
        assert ((ROOT / manage_py).is_file(), command) == (True, "createsuperuser")
        assert "tail -f " in text and "graph-emulator.log" in text

        groups = {group for parent, group in processes().values() if parent == demo.pid}
        assert len(groups) == 4, groups  # emulator, worker, beat, web: a group each
        catalogue = requests.get(f"http://127.0.0.1:{shop_port}/", timeout=10)
        assert "Organic T-shirt" in catalogue.text
        admin = requests.Session()
        login = admin.get(f"http://127.0.0.1:{shop_port}/admin/login/", timeout=10)
        assert login.status_code == 200
        # The beat's sweep reaches the worker through the filesystem broker.
        worker_log = tmp_path / "celery-worker.log"
        deadline = time.monotonic() + 60
        while "django_capi.drain_outbox" not in worker_log.read_text().split("ready.", 1)[-1]:
            assert time.monotonic() < deadline, worker_log.read_text()[-3000:]
            time.sleep(0.5)

        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
        left = [pid for pid, (_, group) in processes().items() if group in groups]
        assert left == [], f"processes left behind: {left}"
    finally:
        if demo.poll() is None:
            for group in {demo.pid, *groups}:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
            demo.wait()
