"""`make demo`: the example shop with the stack the README recommends, in one command.

Everything runs on this machine: SQLite, the Graph API emulator standing in for
graph.facebook.com (unless CAPI_PIXEL_ID, CAPI_ACCESS_TOKEN and CAPI_TEST_EVENT_CODE are all
set: then Meta's Test Events), a Celery worker and beat on kombu's filesystem broker (Redis
or any broker when CELERY_BROKER_URL is set) and the web server. Each runs in a process
group of its own; Ctrl-C (or SIGTERM) stops every one of them, children included.

    python example_project/demo.py [--shop-port 8000] [--graph-port 8111] [--graph-args "..."]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
#: Demo only: the admin user `make demo` creates (or resets) on every start.
ADMIN_USER, ADMIN_PASSWORD = "admin", "admin"
REAL_META_VARIABLES = ("CAPI_PIXEL_ID", "CAPI_ACCESS_TOKEN", "CAPI_TEST_EVENT_CODE")


def manage(*args: str) -> list[str]:
    return [sys.executable, str(HERE / "manage.py"), *args]


def celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "example_project", *args]


def real_meta() -> bool:
    return all(os.environ.get(name) for name in REAL_META_VARIABLES)


def var_dir() -> Path:
    return Path(os.environ.get("SHOP_VAR_DIR") or HERE / "var").resolve()


def prepare(env: dict[str, str]) -> None:
    """Migrate the database and seed the catalogue and the demo admin."""
    subprocess.run(manage("migrate", "--no-input", "-v", "0"), check=True, env=env, cwd=HERE)
    subprocess.run(
        manage("seed_shop", "-v", "0", "--admin", ADMIN_USER, ADMIN_PASSWORD),
        check=True,
        env=env,
        cwd=HERE,
    )


def graph_command(port: int) -> list[str]:
    """The Graph API emulator; port 0 picks a free one (its first line says which)."""
    return manage("capi_fakegraph", "--port", str(port))


def worker_command() -> list[str]:
    # One process: the demo's outbox is on SQLite, which serializes writers anyway.
    return celery(
        "worker", "--loglevel", "INFO", "--concurrency", "1", "--without-mingle",
        "--without-gossip", "--hostname", "shop-demo@%h",
    )  # fmt: skip


def beat_command(var: Path) -> list[str]:
    return celery("beat", "--loglevel", "INFO", "--schedule", str(var / "celerybeat-schedule"))


def web_command(port: int) -> list[str]:
    return manage("runserver", f"127.0.0.1:{port}", "--noreload")


class Stack:
    """Processes started in their own process groups, stopped together."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, command: list[str], log: Path | None = None) -> None:
        out: IO[bytes] | None = None
        if log is not None:
            out = log.open("ab")
            self._logs.append(out)
        self.processes[name] = subprocess.Popen(
            command,
            env=self.env,
            cwd=HERE,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            # Its own group: the terminal's Ctrl-C reaches only this script, which stops each
            # group in order, and a group takes a process's children (Celery's pool) along.
            start_new_session=True,
        )

    def exited(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def stop(self, timeout: float = 15) -> None:
        for process in reversed(self.processes.values()):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for process in self.processes.values():
            # Whatever is left in a group (a stuck pool child too) is killed.
            _signal_group(process, signal.SIGKILL)
            process.wait()
        for log in self._logs:
            log.close()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone
        os.killpg(process.pid, signum)


def wait_for_port(port: int, stack: Stack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.exited():
            raise RuntimeError(f"{', '.join(stack.exited())} exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shop-port", type=int, default=8000)
    parser.add_argument("--graph-port", type=int, default=8111)
    parser.add_argument(
        "--graph-args", default="", help="extra options for `manage.py capi_fakegraph`, quoted"
    )
    args = parser.parse_args(argv)
    # Both, explicitly: a shell starts a background job with SIGINT ignored, and Python keeps
    # an inherited SIG_IGN, so without this Ctrl-C (or a kill -INT) would never stop the demo.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    var = var_dir()
    var.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SHOP_VAR_DIR": str(var), "PYTHONUNBUFFERED": "1"}
    meta = real_meta()
    if not meta:
        env["CAPI_GRAPH_API_URL"] = f"http://127.0.0.1:{args.graph_port}"
    prepare(env)
    stack = Stack(env)
    logs = {
        name: var / f"{name}.log" for name in ("graph-emulator", "celery-worker", "celery-beat")
    }
    try:
        if not meta:
            graph = graph_command(args.graph_port)
            stack.start(
                "graph-emulator", graph + shlex.split(args.graph_args), logs["graph-emulator"]
            )
            wait_for_port(args.graph_port, stack)
        stack.start("celery-worker", worker_command(), logs["celery-worker"])
        stack.start("celery-beat", beat_command(var), logs["celery-beat"])
        stack.start("web", web_command(args.shop_port))
        wait_for_port(args.shop_port, stack)
        print(banner(args, meta, logs, env), flush=True)
        while not stack.exited():
            time.sleep(0.5)
        print(f"\n{', '.join(stack.exited())} stopped: stopping the demo.", flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nStopping the demo…", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"\nThe demo could not start: {exc}. Logs are in {_shown(var)}/.", flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan anyone
        stack.stop()


def banner(args: argparse.Namespace, meta: bool, logs: dict[str, Path], env: dict[str, str]) -> str:
    shop = f"http://127.0.0.1:{args.shop_port}"
    if meta:
        target = (
            f"Meta's Graph API, pixel {os.environ['CAPI_PIXEL_ID']}, test event code "
            f"{os.environ['CAPI_TEST_EVENT_CODE']} (Events Manager › Test Events)"
        )
    else:
        target = (
            f"the local Graph API emulator on port {args.graph_port} (set "
            f"{', '.join(REAL_META_VARIABLES)} to use Meta's Test Events instead)"
        )
    broker = f"kombu's filesystem transport in {_shown(var_dir())}"
    if env.get("CELERY_BROKER_URL"):
        url = urlsplit(env["CELERY_BROKER_URL"])
        broker = f"{url.scheme}://{url.hostname}:{url.port or ''}"  # never its password
    lines = [
        "",
        "django-capi demo is running.",
        f"  Shop          {shop}/   (add ?fbclid=demo123 to land like a Meta ad click)",
        f"  Admin         {shop}/admin/   user {ADMIN_USER!r}, password {ADMIN_PASSWORD!r} (demo)",
        f"  Outbox        {shop}/admin/django_capi/outboxevent/",
        f"  Health page   {shop}/admin/django_capi/outboxevent/health/",
        f"  Events go to  {target}",
        f"  Celery        a worker and beat on {broker}",
    ]
    if not meta:
        lines.append(f"  Emulator log  tail -f {_shown(logs['graph-emulator'])}")
    manage_py = f"{_shown(Path(sys.executable))} {_shown(HERE / 'manage.py')}"
    lines += [
        f"  Celery logs   {_shown(logs['celery-worker'])}, {_shown(logs['celery-beat'])}",
        f"  Another admin {manage_py} createsuperuser",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
